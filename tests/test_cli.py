"""Smoke-run every core CLI command on a tiny pipeline, two optimizer steps at most."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hirm.cli.main import app
from hirm.core.patch import Patch

runner = CliRunner()


def _run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result.output


def test_erase_info_apply_generate(sd_dir, tmp_path):
    patch = tmp_path / "vg.safetensors"
    out = _run("erase", "--model", sd_dir, "-c", "Van Gogh", "--kind", "style", "-t", "super:painting",
               "--steps", "2", "--quiet", "-o", patch, "--save-encoder", tmp_path / "enc")  # fmt: skip
    assert (
        "final loss" in out
        and patch.is_file()
        and (tmp_path / "enc" / "text_encoder" / "config.json").is_file()
    )
    meta = json.loads(_run("info", patch, "--json"))
    assert meta["concepts"][0]["target"] == {"kind": "prompt", "prompt": "painting", "coeff": 1.0}
    assert meta["config"]["steps"] == 2
    assert "fingerprint text_encoder" in _run("info", patch)
    # how big the edit is, per tensor, recomputed here from the base model's weights
    from safetensors.torch import load_file

    from hirm.adapters.loading import load_model

    base = {f"text_encoder/{k}": v for k, v in load_model(sd_dir).text_encoder().state_dict().items()}
    edited = load_file(patch)
    for key, size in meta["relative_change"].items():
        norm = base[key].double().norm()
        if norm == 0:  # a zero original (the tiny model's biases): no ratio
            assert size is None, key
            continue
        expected = (edited[key].double() - base[key].double()).norm() / norm
        assert size == pytest.approx(float(expected), rel=1e-6), key
    sizes = [v for v in meta["relative_change"].values() if v is not None]
    assert set(meta["relative_change"]) == set(edited) and sizes and max(sizes) > 0
    assert "changed by" in _run("info", patch)
    assert "diffquickfix" in _run("info", "--methods")

    _run("apply", "--model", sd_dir, "-p", patch, "-o", tmp_path / "patched")
    assert (tmp_path / "patched" / "model_index.json").is_file()

    _run("generate", "--model", sd_dir, "-p", patch, "--prompt", "Van Gogh", "--prompt", "a dog",
         "--seeds", "0,1", "--sampler-steps", "2", "--height", "16", "--width", "16", "-o", tmp_path / "images")  # fmt: skip
    images = tmp_path / "images"
    assert (images / "grid.png").is_file() and len(list((images / "original").glob("*.png"))) == 4
    assert json.loads((images / "manifest.json").read_text())["seeds"] == [0, 1]


def test_erase_other_methods_and_settings(sd_dir, tmp_path):
    _run(
        "erase",
        "--model",
        sd_dir,
        "-c",
        "cat",
        "--method",
        "uce",
        "--set",
        'guide="dog"',
        "-o",
        tmp_path / "u.safetensors",
    )
    # UCE has no misdirection target: its patch records none and `hirm info` shows none
    assert "target" not in Patch.load(tmp_path / "u.safetensors").metadata["concepts"][0]
    assert "cat (object)" in _run("info", tmp_path / "u.safetensors")
    _run(
        "erase",
        "--model",
        sd_dir,
        "-c",
        "cat",
        "--method",
        "esd-x",
        "--steps",
        "1",
        "--quiet",
        "-o",
        tmp_path / "e.safetensors",
    )
    out = _run(
        "erase",
        "--model",
        sd_dir,
        "-c",
        "cat",
        "--method",
        "uce",
        "--set",
        "nope=1",
        "-o",
        tmp_path / "x.safetensors",
        code=2,
    )
    assert "no field" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/dir", "-c", "cat"], "No model"),
        (["-c", ""], "non-empty"),
        (["-c", "cat " * 80], "77"),
        (["-c", "a", "-c", "b", "-t", "random", "-t", "random", "-t", "random"], "one per concept"),
        (["-c", "cat", "-t", "bogus"], "Cannot read target"),
        (["-c", "cat", "--method", "nope"], "Unknown method"),
        (["-c", "cat", "--method", "uce", "-t", "random:3"], "uce has none"),
    ],
)
def test_erase_bad_input_is_a_clear_error_and_writes_nothing(sd_dir, tmp_path, args, message):
    args = ["--model", str(sd_dir), *args] if "--model" not in args else args
    out = _run("erase", *args, "-o", tmp_path / "p.safetensors", code=2)
    assert message in " ".join(out.split())
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_are_never_overwritten_silently(sd_dir, tmp_path):
    patch = tmp_path / "p.safetensors"
    patch.write_bytes(b"keep me")
    out = _run("erase", "--model", sd_dir, "-c", "cat", "--steps", "1", "-o", patch, code=2)
    assert "already exists" in out and patch.read_bytes() == b"keep me"
    # --overwrite replaces only what hirm wrote: not this file ...
    out = _run("erase", "--model", sd_dir, "-c", "cat", "--steps", "1", "-o", patch, "--overwrite", code=2)
    assert "not written by hirm" in out and patch.read_bytes() == b"keep me"
    # ... but an earlier patch, yes
    patch.unlink()
    _run("erase", "--model", sd_dir, "-c", "cat", "--steps", "1", "--quiet", "-o", patch)
    stamp = patch.read_bytes()
    _run("erase", "--model", sd_dir, "-c", "dog", "--steps", "1", "--quiet", "-o", patch, "--overwrite")
    assert patch.read_bytes() != stamp


def test_env_prints_versions():
    assert "diffusers" in _run("env")


def test_target_empty_is_the_empty_prompt_and_other_texts_are_refused():
    """``-t empty``: misdirect toward the empty prompt's read-out (``PromptTarget("")``); ``prompt:`` with
    no text and near-misses are one-line errors rather than a silent empty target."""
    from hirm.cli.erase import parse_target
    from hirm.core.config import PromptTarget

    assert parse_target("empty") == PromptTarget("")
    assert parse_target("prompt:animal") == PromptTarget("animal")
    for text in ("prompt:", "empty:x", "Empty"):
        with pytest.raises(ValueError, match="Cannot read target"):
            parse_target(text)
