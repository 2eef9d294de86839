"""A tiny end-to-end build: every stage trains a few steps, resumes, and the pipeline loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hirm.world.build import STAGES, build_world


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=3, preset="tiny", progress=False)
    return out


def test_all_stages_done(tiny_build: Path) -> None:
    for stage in STAGES:
        assert (tiny_build / stage / "DONE.json").exists(), stage
    assets = tiny_build / "assets"
    files = json.loads((assets / "checksums.json").read_text())
    assert "pipeline/model_index.json" in files and "pipeline/tokenizer/merges.txt" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]


def test_tiny_pipeline_loads_and_generates(tiny_build: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(  # the weights ship in fp16, like most SD checkpoints
        str(tiny_build / "assets" / "pipeline"), safety_checker=None, dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        ["A Cats image in Rust style."],
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 32, 32, 3)


def test_rebuild_skips_done_stages(tiny_build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_world(tiny_build, seed=3, preset="tiny", progress=False, stages=("clip", "unet"))
    assert capsys.readouterr().out.count("done, skipping") == 2


def test_a_done_stage_built_with_other_settings_is_refused(tiny_build: Path) -> None:
    from dataclasses import replace

    from hirm.world.build import PRESETS

    tiny = PRESETS["tiny"]
    changed = replace(tiny, clip=replace(tiny.clip, steps=tiny.clip.steps + 1))
    before = (tiny_build / "unet" / "DONE.json").read_text()
    with pytest.raises(ValueError, match="other settings"):
        build_world(tiny_build, seed=3, config=changed, progress=False, stages=("clip",))
    with pytest.raises(ValueError, match="other settings"):  # the U-Net depends on the CLIP
        build_world(tiny_build, seed=3, config=changed, progress=False, stages=("unet",))
    assert (tiny_build / "unet" / "DONE.json").read_text() == before  # nothing touched


def test_stale_checkpoints_of_other_settings_are_discarded(tmp_path: Path) -> None:
    from hirm.world.build import _discard_stale_checkpoints

    ckpt = tmp_path / "ckpt" / "vae"
    ckpt.mkdir(parents=True)
    (ckpt / "ckpt.json").write_text("{}")
    _discard_stale_checkpoints(tmp_path, "vae", "aaaa")  # unknown origin: discarded
    assert not ckpt.exists()
    ckpt.mkdir()
    _discard_stale_checkpoints(tmp_path, "vae", "aaaa")  # same settings: kept
    assert ckpt.exists()
    _discard_stale_checkpoints(tmp_path, "vae", "bbbb")
    assert not ckpt.exists()


def _toy_run(ckpt: Path, *, interrupt_at: int | None) -> torch.nn.Module:
    from hirm.world._train import run_steps, step_rng

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)

    def step_fn(step: int) -> float:
        if step == interrupt_at:
            raise KeyboardInterrupt
        _, gen = step_rng(0, step)
        loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    run_steps(
        name="toy",
        steps=6,
        step_fn=step_fn,
        ckpt_dir=ckpt,
        modules={"m": model},
        opt=opt,
        ckpt_every=2,
        progress=False,
    )
    return model


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    straight = _toy_run(tmp_path / "a", interrupt_at=None)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "b", interrupt_at=3)
    assert json.loads((tmp_path / "b" / "ckpt.json").read_text())["step"] == 2
    resumed = _toy_run(tmp_path / "b", interrupt_at=None)
    for x, y in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(x, y)


def test_same_seed_same_weights(tmp_path: Path) -> None:
    from hirm.world.judges import JudgeConfig, train_judge
    from hirm.world.rendering import render_grid

    imgs, s, _ = render_grid(1, seed0=0)
    cfg = JudgeConfig(widths=(8, 16), batch_size=8, steps=3)
    a = train_judge(
        "style", images=imgs, labels=s, cfg=cfg, seed=1, device=torch.device("cpu"), progress=False
    )
    b = train_judge(
        "style", images=imgs, labels=s, cfg=cfg, seed=1, device=torch.device("cpu"), progress=False
    )
    for x, y in zip(a.net.parameters(), b.net.parameters(), strict=True):
        assert torch.equal(x, y)
    assert np.isfinite(sum(float(p.sum()) for p in a.net.parameters()))


def test_digest_follows_the_recipe_and_the_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage whose code (recipe version) or training texts changed is not taken as done, and neither are
    the stages that read it; the others are."""
    from hirm.world import build

    cfg, seed = build.PRESETS["tiny"], 0
    before = {s: build.stage_digest(s, cfg, seed) for s in build.STAGES}
    monkeypatch.setitem(build.STAGE_RECIPE, "tokenizer", build.STAGE_RECIPE["tokenizer"] + 1)
    bumped = {s: build.stage_digest(s, cfg, seed) for s in build.STAGES}
    changed = {s for s in build.STAGES if bumped[s] != before[s]}
    assert changed == {"tokenizer", "clip", "unet", "assemble"}
    monkeypatch.undo()
    monkeypatch.setattr(build, "_text_digest", lambda: "other texts")
    changed = {s for s in build.STAGES if build.stage_digest(s, cfg, seed) != before[s]}
    assert changed == {"tokenizer", "clip", "unet", "assemble"}
