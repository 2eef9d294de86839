"""The harness on the shipped miniature world (skipped until its assets are installed)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def world():
    world = pytest.importorskip("hirm.world")
    try:
        world.pipeline_dir()
    except Exception as err:  # AssetError before the world is built
        pytest.skip(f"MiniCanvas assets not installed: {err}")
    return world


def test_world_judges_follow_the_protocol(world):
    import torch

    from hirm.evaluation.canvas_grid import Canvas
    from hirm.evaluation.judges import Judge, class_columns

    canvas = Canvas.from_world()
    judges = world.load_judges(device="cpu")
    for role in ("style", "object"):
        assert isinstance(judges[role], Judge)
        assert class_columns(judges[role], canvas.names(role)) == list(range(len(canvas.names(role))))
        probs = judges[role](torch.rand(2, 3, 32, 32))
        assert tuple(probs.shape) == (2, len(canvas.names(role)))


@pytest.mark.slow
def test_cli_canvas_on_minicanvas(world, tmp_path, cli_app):
    from typer.testing import CliRunner

    runner = CliRunner()
    out = tmp_path / "neon"
    result = runner.invoke(
        cli_app,
        [
            "eval",
            "canvas",
            "--concept",
            "neon lines",
            "--seeds",
            "188",
            "--sampler-steps",
            "10",
            "--no-heldout",
            "--no-super",
            "--precision",
            "bf16",
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "result.json").read_text())
    assert saved["target"] == "Neon_Lines" and saved["meta"]["model"] == "minicanvas"
    assert saved["meta"]["settings"]["precision"] == "bf16"
    # the unerased world's judges recognise its own images (measured: 100 % style, 97 % object at 25 steps)
    assert saved["summary"]["original"]["IRA"] > 0.8 and saved["summary"]["original"]["CRA"] > 0.8


def test_minicanvas_defaults_with_stand_in_world(monkeypatch, sd_dir, clip_dir, tmp_path, cli_app):
    """The 'minicanvas' code paths (world names, defaults, judges, MiniCLIP) with a tiny stand-in model."""
    from stand_ins import channel_judge
    from typer.testing import CliRunner

    import hirm.world as world
    from hirm.evaluation.utility import ClipScorer

    styles, objects = tuple(world.STYLES), tuple(world.OBJECTS)
    judges = {
        "style": channel_judge(
            tuple(s.replace("_", " ") for s in styles), [i % 3 for i in range(len(styles))]
        ),
        "object": channel_judge(objects, [(i + 1) % 3 for i in range(len(objects))]),
    }
    scorer = ClipScorer.load(clip_dir)
    monkeypatch.setattr(world, "pipeline_dir", lambda: sd_dir, raising=False)
    monkeypatch.setattr(world, "load_judges", lambda device="cpu": judges, raising=False)
    monkeypatch.setattr(
        world, "load_clip", lambda device="cpu": (scorer.model, scorer.tokenizer), raising=False
    )
    monkeypatch.setitem(world.GENERATION_DEFAULTS, "num_inference_steps", 2)
    monkeypatch.setitem(world.GENERATION_DEFAULTS, "height", 16)
    monkeypatch.setitem(world.GENERATION_DEFAULTS, "width", 16)
    runner = CliRunner()
    out = tmp_path / "canvas"
    common = ["--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    args = [
        "eval",
        "canvas",
        "-c",
        "neon lines",
        "--seeds",
        "1",
        "--no-heldout",
        "--no-super",
        "--out",
        str(out),
    ]
    result = runner.invoke(cli_app, args + common)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "result.json").read_text())
    assert saved["target"] == "Neon_Lines" and saved["meta"]["settings"]["num_inference_steps"] == 2
    assert len(saved["rows"]["original"]) == len(styles) * len(objects)
    assert saved["rows"]["original"][0]["prompt"] == world.make_prompt(
        world.CANVAS_TEMPLATE, style=styles[0], object=objects[0]
    )
    result = runner.invoke(
        cli_app, ["eval", "utility", "--limit", "3", "--out", str(tmp_path / "u.json"), *common]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "u.json").read_text())["clip_model"] == "MiniCLIP (hirm.world)"
