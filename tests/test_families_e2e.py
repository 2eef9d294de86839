"""End to end through the CLI, for every supported family stored in fp32 and in fp16:
``erase (--save-encoder) -> info -> apply -> from_pretrained -> generate``.

Tiny random pipelines built from the real diffusers/transformers classes (tests/tiny.py): SD 1.x, SD 2.x
(tokenizer padding with ``!``, v-prediction), SDXL and SD3 (two CLIP encoders), SD3 without its T5,
Flux. What is checked besides "it runs": the patch changes exactly the CLIP encoders; the applied
copy keeps every tensor's stored dtype and copies untouched components byte for byte; the edited
encoders written by ``--save-encoder`` load with ``from_pretrained`` and equal the applied copy's.
"""

from __future__ import annotations

import filecmp
import json

import pytest
import tiny
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from hirm.adapters.loading import stored_dtypes
from hirm.cli.main import app
from hirm.core.encoder import canonical_name
from hirm.core.patch import Patch

BUILDERS = {
    "sd1": lambda path, dtype: tiny.sd_pipeline_dir(path, dtype=dtype),
    "sd2": lambda path, dtype: tiny.sd_pipeline_dir(path, dtype=dtype, version=2),
    "sdxl": lambda path, dtype: tiny.sdxl_pipeline_dir(path, dtype=dtype),
    "sd3": lambda path, dtype: tiny.sd3_pipeline_dir(path, dtype=dtype),
    "sd3-no-t5": lambda path, dtype: tiny.sd3_pipeline_dir(path, dtype=dtype, t5=False),
    "flux": lambda path, dtype: tiny.flux_pipeline_dir(path, dtype=dtype),
}
ENCODERS = {
    "sd1": ["text_encoder"],
    "sd2": ["text_encoder"],
    "sdxl": ["text_encoder", "text_encoder_2"],
    "sd3": ["text_encoder", "text_encoder_2"],
    "sd3-no-t5": ["text_encoder", "text_encoder_2"],
    "flux": ["text_encoder"],
}
runner = CliRunner()


def _run(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _dtypes(folder) -> dict[str, torch.dtype]:
    return {canonical_name(k): v for k, v in stored_dtypes(folder).items()}


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            out.update({canonical_name(k): handle.get_tensor(k) for k in handle.keys()})
    return out


@pytest.mark.parametrize("stored", ["fp32", "fp16"])
@pytest.mark.parametrize("family", list(BUILDERS))
def test_cli_round_trip(family, stored, tmp_path):
    dtype = torch.float16 if stored == "fp16" else None
    model = BUILDERS[family](tmp_path / family, dtype)
    patch_file, encoders_dir, applied = tmp_path / "p.safetensors", tmp_path / "enc", tmp_path / "applied"

    _run("erase", "-m", model, "-c", "a cat", "--steps", "1", "--quiet", "-o", patch_file,
         "--save-encoder", encoders_dir)  # fmt: skip
    meta = json.loads(_run("info", patch_file, "--json"))
    assert sorted(meta["base"]["fingerprints"]) == ENCODERS[family]
    patch = Patch.load(patch_file)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in patch.tensors.values())

    _run("apply", "-m", model, "-p", patch_file, "-o", applied)
    index = json.loads((model / "model_index.json").read_text())
    for name in index:
        if name.startswith("_") or not (model / name).is_dir():
            continue
        if name in ENCODERS[family]:  # re-saved: same dtype per tensor, patched values in it
            assert _dtypes(applied / name) == _dtypes(model / name), name
            saved = _tensors(applied / name)
            for key, value in patch.state_dict(name).items():
                assert torch.equal(saved[key], value.to(saved[key].dtype)), key
        else:  # copied byte for byte
            compare = filecmp.dircmp(model / name, applied / name)
            assert not (compare.diff_files or compare.left_only or compare.right_only), name
    if family == "sd2":
        scheduler = json.loads((applied / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["prediction_type"] == "v_prediction"

    from diffusers import DiffusionPipeline

    absent = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3-no-t5" else {}
    pipe = DiffusionPipeline.from_pretrained(str(applied), torch_dtype=torch.float32, **absent)
    kwargs = {"max_sequence_length": 16} if family.startswith("sd3") or family == "flux" else {}
    images = pipe("a cat", num_inference_steps=1, height=16, width=16, output_type="np",
                  generator=torch.Generator().manual_seed(0), **kwargs).images  # fmt: skip
    assert images.shape == (1, 16, 16, 3) and torch.isfinite(torch.as_tensor(images)).all()

    for name in ENCODERS[family]:  # --save-encoder: drop-in folders equal to the applied copy
        cls = type(getattr(pipe, name))
        encoder = cls.from_pretrained(str(encoders_dir / name), torch_dtype=torch.float32)
        assert all(
            torch.equal(a, b)
            for a, b in zip(encoder.state_dict().values(), getattr(pipe, name).state_dict().values())
        )
        assert _tensors(encoders_dir / name).keys() == _tensors(model / name).keys()
        assert {t.dtype for t in _tensors(encoders_dir / name).values()} == {
            t.dtype for t in _tensors(model / name).values()
        }

    if stored == "fp16":  # the generate command itself, on the original model
        out = tmp_path / "images"
        _run("generate", "-m", model, "-p", patch_file, "--prompt", "a cat", "--seeds", "0", "--sampler-steps", "1",
             "--height", "16", "--width", "16", "-o", out)  # fmt: skip
        assert (out / "grid.png").is_file() and len(list((out / "erased").glob("*.png"))) == 1
