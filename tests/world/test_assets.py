"""The shipped weights: checksums, loading, generation and the judges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import hirm.world as w
from hirm.world.assets import AssetError, verify_assets


def test_assets_size_and_checksums() -> None:
    root = w.assets_dir()
    sums = json.loads((root / "checksums.json").read_text())
    total = sum((root / f).stat().st_size for f in sums)
    assert total <= 40 * 2**20  # the MiniCanvas 2 budget
    assert max((root / f).stat().st_size for f in sums) <= 10 * 2**20  # sharded below 10 MB
    assert all(not f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in sums)


def _copy_assets(tmp_path: Path) -> Path:
    dst = tmp_path / "assets"
    shutil.copytree(w.assets_dir(), dst)
    return dst


def test_corrupted_asset_raises_clear_error(tmp_path: Path) -> None:
    root = _copy_assets(tmp_path)
    target = sorted((root / "pipeline" / "unet").glob("diffusion_pytorch_model*.safetensors"))[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(
        AssetError, match=r"corrupted.*diffusion_pytorch_model.*\.safetensors.*hirm world build"
    ):
        verify_assets(root)


def test_missing_asset_raises_clear_error(tmp_path: Path) -> None:
    root = _copy_assets(tmp_path)
    (root / "judges" / "style" / "model.safetensors").unlink()
    with pytest.raises(AssetError, match=r"missing.*model\.safetensors.*--install"):
        verify_assets(root)


def test_pipeline_loads_with_from_pretrained_and_generates() -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    # fp16 on disk, upcast at load (as for most published SD checkpoints)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(w.pipeline_dir()), safety_checker=None, dtype=torch.float32
    )
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.text_encoder.config.num_hidden_layers >= 4
    assert pipe.text_encoder.config.max_position_embeddings == 77
    pipe.set_progress_bar_config(disable=True)
    prompt = w.make_prompt(w.CANVAS_TEMPLATE, style="Pop_Art", object="Fishes")
    kw = dict(w.GENERATION_DEFAULTS, num_inference_steps=4)
    out = pipe([prompt, ""], generator=torch.Generator().manual_seed(0), output_type="np", **kw)
    assert out.images.shape == (2, 32, 32, 3) and np.isfinite(out.images).all()


def test_load_pipeline_generates_recognisable_image() -> None:
    pipe = w.load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    judges = w.load_judges()
    prompts = [
        w.make_prompt(w.CANVAS_TEMPLATE, style=s, object=o)
        for s, o in [
            ("Pop_Art", "Fishes"),
            ("Winter", "Towers"),
            ("Neon_Lines", "Butterfly"),
            ("Bricks", "Trees"),
        ]
    ]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    imgs = pipe(prompts, generator=gens, output_type="pt", **w.GENERATION_DEFAULTS).images
    s = judges["style"](imgs).argmax(1).tolist()
    o = judges["object"](imgs).argmax(1).tolist()
    assert (
        sum(judges["style"].classes[i] == p for i, p in zip(s, ["Pop_Art", "Winter", "Neon_Lines", "Bricks"]))
        >= 3
    )
    assert (
        sum(judges["object"].classes[i] == p for i, p in zip(o, ["Fishes", "Towers", "Butterfly", "Trees"]))
        >= 3
    )


def test_judges_on_fresh_renders() -> None:
    from hirm.world.judges import judge_accuracy

    judges = w.load_judges()
    assert judges["style"].classes == w.STYLES and judges["object"].classes == w.OBJECTS
    imgs, s, o = w.render_grid(2, seed0=1_234_567_890)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    p = judges["style"](x)
    assert p.shape == (len(x), len(w.STYLES)) and torch.allclose(p.sum(1), torch.ones(len(x)), atol=1e-4)
    assert judge_accuracy(judges["style"], x, s) >= 0.99
    assert judge_accuracy(judges["object"], x, o) >= 0.99


def test_load_clip_matches_pipeline_text_encoder() -> None:
    model, tok = w.load_clip()
    pipe_dir = w.pipeline_dir()
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(str(pipe_dir / "text_encoder"), dtype=torch.float32)  # ships in fp16
    ids = tok(
        ["A Cats image in Rust style."], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        a = model.text_model(input_ids=ids).last_hidden_state
        b = te(input_ids=ids).last_hidden_state
    torch.testing.assert_close(a, b)
