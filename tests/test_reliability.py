"""Bad input, as a new user gives it: every case is a one-line error that says what to do (no traceback,
no riddle), refused before anything is written; outputs are never clobbered, keep the umask, and are
cleaned up on SIGTERM or a full disk. The table in docs/reliability.md points at these tests by id."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from typer.testing import CliRunner

import hirm
from hirm.cli.main import app
from hirm.core.config import HiRMConfig
from hirm.core.patch import FORMAT, Patch

runner = CliRunner()
FAST = HiRMConfig(steps=2, lr=1e-3, precision="fp32")


def _run(*args, code: int = 2) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


def _error(output: str) -> str:
    """The one error line (CliRunner mixes stderr, progress bars included, into the output)."""
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def bad(sd_dir, sdxl_dir, tmp_path_factory) -> dict[str, Path]:
    """Broken models, patches and files, built once."""
    root = tmp_path_factory.mktemp("bad")
    paths = {"root": root, "sd": sd_dir}
    model = hirm.load_model(sd_dir)
    patch = hirm.erase(model, ["Cats"], config=FAST, progress=False)
    paths["patch"] = patch.save(root / "cats.safetensors")
    paths["dogs"] = hirm.erase(model, ["Dogs"], config=FAST, progress=False).save(root / "dogs.safetensors")
    other = hirm.erase(sdxl_dir, ["Cats"], config=FAST, components=["text_encoder"], progress=False)
    paths["other"] = other.save(root / "sdxl-te1.safetensors")  # same shapes, other weights
    nan = {k: v.clone() for k, v in patch.tensors.items()}
    next(iter(nan.values()))[0] = float("nan")
    paths["nan"] = Patch(tensors=nan, metadata=patch.metadata).save(root / "nan.safetensors")
    paths["pickle"] = root / "vector.pt"
    torch.save({"target": torch.zeros(32)}, paths["pickle"])
    paths["plain"] = root / "plain.safetensors"
    save_file({"target": torch.zeros(32)}, str(paths["plain"]))
    save_file({"target": torch.zeros(5)}, str(root / "short.safetensors"))
    save_file({"target": torch.full((32,), float("nan"))}, str(root / "nanvec.safetensors"))
    save_file(
        dict(patch.tensors),
        str(root / "nofp.safetensors"),
        metadata={"format": FORMAT, "hirm": '{"method": "hirm"}'},
    )
    paths["file"] = root / "notes.txt"
    paths["file"].write_text("a user's file")
    (root / "empty").mkdir()
    for name, damage in {
        "badindex": lambda d: (d / "model_index.json").write_text("{oops"),
        "noencoder": lambda d: shutil.rmtree(d / "text_encoder"),
        "pickles": lambda d: _to_pickles(d / "text_encoder"),
    }.items():
        shutil.copytree(sd_dir, root / name)
        damage(root / name)
    shutil.copytree(sd_dir / "text_encoder", root / "badconfig")
    (root / "badconfig" / "config.json").write_text('{"architectures": ["CLIPTextModel"],')
    (root / "result.json").write_text("[1, 2")
    (root / "notresult.json").write_text('{"a": 1}')
    return paths


def _to_pickles(folder: Path) -> None:
    from safetensors.torch import load_file

    for file in folder.glob("*.safetensors"):
        torch.save(load_file(str(file)), folder / "pytorch_model.bin")
        file.unlink()


# id, arguments (formatted with the `bad` paths and {out}), expected words of the one error line
CLI_CASES = [
    ("model-missing", "erase -m {root}/nope -c cat -o {out}", "No model at"),
    ("model-is-file", "erase -m {file} -c cat -o {out}", "is a file; --model takes"),
    ("model-empty-dir", "erase -m {root}/empty -c cat -o {out}", "neither model_index.json nor config.json"),
    ("model-index-json", "erase -m {root}/badindex -c cat -o {out}", "model_index.json (the pipeline's"),
    (
        "model-config-json",
        "erase -m {root}/badconfig -c cat -o {out}",
        "config.json (a model config) is not valid JSON",
    ),
    ("model-component-missing", "erase -m {root}/noencoder -c cat -o {out}", "text_encoder is missing"),
    (
        "model-pickle-weights",
        "erase -m {root}/pickles -c cat -o {out}",
        "only pickle weights (pytorch_model.bin)",
    ),
    ("target-seed", "erase -m {sd} -c cat -t random:abc -o {out}", "takes an integer seed"),
    (
        "target-file-missing",
        "erase -m {sd} -c cat -t file:{root}/none.safetensors -o {out}",
        "does not exist",
    ),
    ("target-file-pickle", "erase -m {sd} -c cat -t file:{pickle} -o {out}", "never loads pickles"),
    ("target-file-key", "erase -m {sd} -c cat -t file:{plain}:nokey -o {out}", "has no tensor 'nokey'"),
    ("target-file-shape", "erase -m {sd} -c cat -t file:{root}/short.safetensors -o {out}", "has shape (5,)"),
    ("target-file-nan", "erase -m {sd} -c cat -t file:{root}/nanvec.safetensors -o {out}", "NaN or infinite"),
    (
        "kind",
        "erase -m {sd} -c cat --kind banana -o {out}",
        "Concept.kind must be one of 'style', 'object', 'nudity'; got 'banana'",
    ),
    ("component", "erase -m {sd} -c cat --component unet -o {out}", "not CLIP text encoders"),
    ("set-int", "erase -m {sd} -c cat --set steps=2.5 -o {out}", "--set steps takes an integer"),
    ("set-number", "erase -m {sd} -c cat --set lr=abc -o {out}", "--set lr takes a number"),
    ("set-pair", "erase -m {sd} -c cat --set betas=[0.9] -o {out}", "exactly 2 values"),
    ("set-choice", "erase -m {sd} -c cat --set trainable=banana -o {out}", "one of 'first-attn'"),
    ("set-nested", 'erase -m {sd} -c cat --set \'read={{"site":"x"}}\' -o {out}', "read.site takes one of"),
    ("set-unknown", "erase -m {sd} -c cat --set nope=1 -o {out}", "has no field 'nope'"),
    ("set-syntax", "erase -m {sd} -c cat --set steps -o {out}", "--set takes KEY=VALUE"),
    (
        "trainable",
        "erase -m {sd} -c cat --trainable banana -o {out}",
        "--trainable takes one of 'first-attn'",
    ),
    ("read-site", "erase -m {sd} -c cat --read-site banana -o {out}", "--read-site takes one of 'attn'"),
    (
        "precision",
        "erase -m {sd} -c cat --precision fp16 -o {out}",
        "--precision takes one of 'auto', 'fp32', 'bf16'",
    ),
    ("steps-zero", "erase -m {sd} -c cat --steps 0 -o {out}", "HiRMConfig.steps must be an int >= 1"),
    ("lr-negative", "erase -m {sd} -c cat --lr -1 -o {out}", "HiRMConfig.lr must be a finite number > 0"),
    ("template-positional", "erase -m {sd} -c cat --template {{0}} -o {out}", "has the field {0}"),
    (
        "template-field",
        "erase -m {sd} -c cat --template 'A {{concept}} in {{style}}' -o {out}",
        "has the field {style}",
    ),
    ("template-no-slot", "erase -m {sd} -c cat --template photo -o {out}", "must contain {concept}"),
    ("template-brace", "erase -m {sd} -c cat --template {{concept -o {out}", "not a valid template"),
    (
        "option-of-other-method",
        "erase -m {sd} -c cat --method uce --trainable attn-only -o {out}",
        "UCEConfig has no field(s) ['trainable']",
    ),
    ("device-unknown", "erase -m {sd} -c cat --device banana -o {out}", "not a torch device"),
    ("device-xla", "erase -m {sd} -c cat --device xla -o {out}", "hirm runs on cpu, cuda"),
    ("out-is-directory", "erase -m {sd} -c cat -o {root}", "is a directory; give a file path"),
    ("out-parent-is-file", "erase -m {sd} -c cat -o {file}/p.safetensors", "is a file, not a directory"),
    ("out-equals-save-encoder", "erase -m {sd} -c cat -o {out} --save-encoder {out}", "overlap"),
    (
        "save-encoder-unet-patch",
        "erase -m {sd} -c cat --method uce -o {out} --save-encoder {out}.enc",
        "--save-encoder writes text encoders",
    ),
    ("overwrite-foreign-file", "erase -m {sd} -c cat -o {file} --overwrite", "was not written by hirm"),
    ("apply-out-is-file", "apply -m {sd} -p {patch} -o {file}", "is a file; this output is a directory"),
    ("apply-patch-missing", "apply -m {sd} -p {root}/none.safetensors -o {out}", "No patch file"),
    ("apply-patch-pickle", "apply -m {sd} -p {pickle} -o {out}", "not a readable safetensors patch"),
    ("apply-patch-not-hirm", "apply -m {sd} -p {plain} -o {out}", "is not a hirm patch"),
    (
        "apply-patch-no-fingerprints",
        "apply -m {sd} -p {root}/nofp.safetensors -o {out}",
        "lacks the base fingerprints",
    ),
    ("apply-patch-other-model", "apply -m {sd} -p {other} -o {out}", "different base weights"),
    ("apply-patch-nan", "apply -m {sd} -p {nan} -o {out}", "NaN or infinite"),
    ("apply-same-patch-twice", "apply -m {sd} -p {patch} -p {patch} -o {out}", "same as patch 0"),
    ("apply-overlapping-patches", "apply -m {sd} -p {patch} -p {dogs} -o {out}", "hirm erase -c A -c B"),
    ("apply-scale-nan", "apply -m {sd} -p {patch} --scale nan -o {out}", "scale must be a finite number"),
    (
        "generate-seeds",
        "generate -m {sd} -p {patch} --prompt cat --seeds a,b -o {out}",
        "--seeds takes integers",
    ),
    (
        "generate-same-patch-twice",
        "generate -m {sd} -p {patch} -p {patch} --prompt cat -o {out}",
        "same as patch 0",
    ),
    ("info-not-a-patch", "info {pickle}", "not a readable safetensors patch"),
    ("info-nothing", "info", "Give a patch file"),
    ("sweep-target", "sweep --target bogus --out {out}", "--target must be 'random'"),
    (
        "sweep-precision",
        "sweep --precision fp16 --out {out}",
        "--precision takes one of 'auto', 'fp32', 'bf16'",
    ),
    ("sweep-device", "sweep --device banana --out {out}", "not a torch device"),
    (
        "eval-template",
        "eval canvas -c Cats --template {{0}}x --out {out}",
        "Grid template '{0}x' has the field {0}",
    ),
    (
        "eval-precision",
        "eval canvas -c Cats --precision half --out {out}",
        "--precision takes one of 'auto', 'fp32', 'bf16'; got \"half\"",
    ),
    (
        "report-bad-json",
        "report {root}/result.json --out {out}",
        "result.json (a hirm result) is not valid JSON: ",
    ),
    ("report-not-a-result", "report {root}/notresult.json --out {out}", "is not a hirm result file"),
]


@pytest.mark.parametrize(("case", "command", "expected"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(bad, tmp_path, case, command, expected):
    out = tmp_path / "out.safetensors"
    args = shlex.split(command.format(**bad, out=out))
    before = sorted(os.listdir(bad["root"]))
    line = _error(_run(*args))
    assert expected in line, line
    assert list(tmp_path.iterdir()) == [] and sorted(os.listdir(bad["root"])) == before
    assert bad["file"].read_text() == "a user's file"


@pytest.mark.parametrize(
    ("command", "expected"),
    [("generate -m {sd} -p {patch} --prompt cat --sampler-steps 0 -o {out}", "--sampler-steps"),
     ("generate -m {sd} -p {patch} --prompt cat --height 0 -o {out}", "--height")],
)  # fmt: skip
def test_out_of_range_options_are_usage_errors(bad, tmp_path, command, expected):
    result = runner.invoke(app, [a.format(**bad, out=tmp_path / "o") for a in command.split()])
    assert result.exit_code == 2 and "Invalid value" in result.output and expected in result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(bad, tmp_path):
    line = _error(_run("erase", "-m", bad["sd"], "-c", "cat", "--device", "cuda", "-o", tmp_path / "p"))
    assert "torch sees no CUDA GPU" in line and list(tmp_path.iterdir()) == []


def test_text_values_of_set_are_taken_as_text(bad, tmp_path):
    """``--set guide=5`` is the guide prompt "5" (not a crash, not the number 5)."""
    out = tmp_path / "u.safetensors"
    _run("erase", "-m", bad["sd"], "-c", "cat", "--method", "uce", "--set", "guide=5", "-o", out, code=0)
    assert Patch.load(out).metadata["config"]["guide"] == "5"


def test_overlapping_patches_compose_only_when_asked(bad, tmp_path):
    out = tmp_path / "both"
    _run(
        "apply", "-m", bad["sd"], "-p", bad["patch"], "-p", bad["dogs"], "--allow-overlap", "-o", out, code=0
    )
    assert (out / "model_index.json").is_file()


def test_overwrite_replaces_only_hirm_outputs(bad, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"precious")
    line = _error(_run("apply", "-m", bad["sd"], "-p", bad["patch"], "-o", mine, "--overwrite"))
    assert "photo.jpg" in line and (mine / "photo.jpg").read_bytes() == b"precious"

    out = tmp_path / "patched"
    _run("apply", "-m", bad["sd"], "-p", bad["patch"], "-o", out, code=0)
    marker = json.loads((out / ".hirm-output").read_text())
    assert marker["kind"] == "apply" and "model_index.json" in marker["files"]
    _run("apply", "-m", bad["sd"], "-p", bad["dogs"], "-o", out, "--overwrite", code=0)  # hirm's: replaced
    (out / "text_encoder" / "my-notes.txt").write_text("mine")
    line = _error(_run("apply", "-m", bad["sd"], "-p", bad["patch"], "-o", out, "--overwrite"))
    assert "text_encoder/my-notes.txt" in line and (out / "text_encoder" / "my-notes.txt").exists()
    os.symlink(out, tmp_path / "link")
    assert "symbolic link" in _error(_run("apply", "-m", bad["sd"], "-p", bad["patch"], "-o",
                                          tmp_path / "link", "--overwrite"))  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_outputs_respect_the_umask(bad, tmp_path):
    previous = os.umask(0o027)
    try:
        patch = hirm.erase(bad["sd"], ["Cats"], config=FAST, progress=False).save(tmp_path / "p.safetensors")
        out = hirm.save_patched(bad["sd"], [patch], tmp_path / "patched")
    finally:
        os.umask(previous)
    assert patch.stat().st_mode & 0o777 == 0o640
    assert out.stat().st_mode & 0o777 == 0o750
    assert (out / "text_encoder").stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"),
     SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')],
    ids=["oserror", "safetensors"],
)  # fmt: skip
def test_a_full_disk_is_one_line_and_leaves_nothing(bad, tmp_path, monkeypatch, error):
    import hirm.core.patch as patch_module

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(patch_module, "save_file", full)
    out = tmp_path / "p.safetensors"
    line = _error(_run("erase", "-m", bad["sd"], "-c", "cat", "--steps", "1", "--quiet", "-o", out))
    assert "No space left on the device" in line and list(tmp_path.iterdir()) == []


def test_missing_entries_are_never_a_bare_key(bad, tmp_path, monkeypatch):
    """A KeyError that escapes anyway says what it is (not ``error: 'style'``)."""
    import hirm.api

    def broken(*args, **kwargs):
        raise KeyError("style")

    monkeypatch.setattr(hirm.api, "erase", broken)
    line = _error(_run("erase", "-m", bad["sd"], "-c", "cat", "-o", tmp_path / "p.safetensors"))
    assert "lacks the entry 'style'" in line


def test_apply_loads_everything_before_creating_its_temporary_directory(bad, tmp_path, monkeypatch):
    import tempfile

    from hirm.adapters.loading import ModelHandle

    events: list[str] = []
    load, mkdtemp = ModelHandle.component, tempfile.mkdtemp
    monkeypatch.setattr(ModelHandle, "component", lambda *a, **k: events.append("load") or load(*a, **k))
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: events.append("mkdtemp") or mkdtemp(*a, **k))
    hirm.save_patched(bad["sd"], [bad["patch"]], tmp_path / "patched")
    assert "load" in events and events.index("mkdtemp") > max(i for i, e in enumerate(events) if e == "load")


def test_sigterm_during_apply_removes_the_temporary_copy(bad, tmp_path):
    """SIGTERM is handled like Ctrl-C: the half-written hidden copy is removed, exit code 143."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        real = os.replace
        def slow(src, dst):  # the moment before the finished copy is moved into place
            if str(src).endswith(".tmp"):
                print("READY", flush=True)
                time.sleep(60)
            return real(src, dst)
        os.replace = slow
        from hirm.cli.main import app
        sys.argv = ["hirm", "apply", "-m", {str(bad["sd"])!r}, "-p", {str(bad["patch"])!r},
                    "-o", {str(tmp_path / "patched")!r}]
        app()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "READY"
        assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
    finally:
        process.kill()
    assert list(tmp_path.iterdir()) == []


def test_compare_and_world_build_refuse_directories_of_other_files(tmp_path):
    from hirm.evaluation.common import EvaluationInputError
    from hirm.evaluation.compare import prepare_compare_out

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.md").write_text("my own notes")
    with pytest.raises(EvaluationInputError, match="not a hirm comparison"):
        prepare_compare_out(mine)
    assert (mine / "compare.md").read_text() == "my own notes" and not (mine / ".hirm-output").exists()
    legacy = tmp_path / "legacy"  # a comparison written before markers existed is taken over
    legacy.mkdir()
    (legacy / "compare.md").write_text("# Method comparison on the miniature world (MiniCanvas)\n")
    prepare_compare_out(legacy)
    assert json.loads((legacy / ".hirm-output").read_text())["kind"] == "compare"

    line = _error(_run("world", "build", "--out", mine, "--preset", "tiny"))
    assert "not a world build" in line and sorted(os.listdir(mine)) == ["compare.md"]


@dataclass(frozen=True)
class Inner:
    site: Literal["a", "b"] = "a"
    layer: int = -1


@dataclass(frozen=True)
class Toy:
    """A config with one field of each kind of annotation ``--set`` handles."""

    steps: int | None = None
    lr: float = 1.0
    flag: bool = False
    words: tuple[str, ...] = ()
    pair: tuple[float, float] = (0.0, 1.0)
    inner: Inner = field(default_factory=Inner)
    name: str | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}.")


def test_set_values_are_checked_against_the_field_types():
    """The generic coercion behind ``--set``: any config dataclass, its annotations decide."""
    from hirm.cli.common import FieldValueError, make_config, parse_settings

    values = parse_settings(
        Toy, ["steps=3", "lr=2", "flag=true", "words=hello", "pair=[1, 2]", 'inner={"site": "b"}', "name=7"]
    )
    toy = make_config(Toy, values)
    assert toy == Toy(3, 2.0, True, ("hello",), (1.0, 2.0), Inner("b"), "7") and isinstance(toy.lr, float)
    assert parse_settings(Toy, ["steps=null"]) == {"steps": None}
    for text, words in [
        ("steps=true", "steps takes an integer"),
        ("steps=2.5", "steps takes an integer"),
        ("lr=abc", "lr takes a number"),
        ("flag=1", "flag takes true or false"),
        ("pair=[1]", "exactly 2 values"),
        ("pair=[1, 2, 3]", "exactly 2 values"),
        ("words=[1]", "words[0] takes a text"),
        ('inner={"site": "c"}', "inner.site takes one of 'a', 'b'"),
        ('inner={"nope": 1}', "Inner has no field(s) ['nope']"),
    ]:
        with pytest.raises(FieldValueError, match=re.escape(words)):
            make_config(Toy, parse_settings(Toy, [text]), label="--set ")
    with pytest.raises(FieldValueError, match=r"--set lr: lr must be > 0, got -1.0"):
        make_config(Toy, parse_settings(Toy, ["lr=-1"]), label="--set ")


def test_compare_merge_of_nothing_is_one_line_and_writes_nothing(tmp_path):
    """``hirm compare --merge`` refuses a missing part, and a directory that holds no comparison."""
    line = _error(_run("compare", "--merge", tmp_path / "nope", "--out", tmp_path / "m"))
    assert "No such comparison directory" in line and not (tmp_path / "m").exists()
    (tmp_path / "empty").mkdir()
    line = _error(_run("compare", "--merge", tmp_path / "empty", "--out", tmp_path / "m"))
    assert "hirm compare" in line and not (tmp_path / "m").exists()


def test_compare_negative_esd_batch_is_one_line_and_writes_nothing(tmp_path):
    line = _error(_run("compare", "--esd-batch", "-1", "--method", "esd-x", "--out", tmp_path / "c"))
    assert "--esd-batch" in line and not (tmp_path / "c").exists()
