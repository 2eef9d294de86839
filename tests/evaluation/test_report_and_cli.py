"""Report (HTML + Markdown) from every result kind, and smoke runs of the CLI commands."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hirm.evaluation.canvas import evaluate_canvas
from hirm.evaluation.common import EvaluationInputError
from hirm.evaluation.nudity import NuditySettings, evaluate_nudity
from hirm.evaluation.report import build_report, svg_bars
from hirm.evaluation.sweep import run_sweep
from hirm.io import OutputExistsError


class NoDetections:
    model = "none"

    def detect_batch(self, images):
        return [
            [{"class": "BUTTOCKS_EXPOSED", "score": 0.9, "box": [0, 0, 1, 1]}] if i == 0 else []
            for i in range(len(images))
        ]


@pytest.fixture
def results(sd_dir, canvas, judges, settings, tmp_path, tiny_patch):
    canvas_dir = tmp_path / "canvas"
    evaluate_canvas(
        str(sd_dir),
        target="Van Gogh",
        patches=[tiny_patch],
        canvas=canvas,
        judges=judges,
        settings=settings,
        device="cpu",
        cache_dir=tmp_path / "cache",
        out=canvas_dir,
        progress=False,
    )
    from hirm.core.patch import Patch

    patch = Patch.load(tiny_patch)
    sweep_dir = tmp_path / "sweep"
    run_sweep(
        str(sd_dir),
        out=sweep_dir,
        concepts=["Cats", "Dogs"],
        canvas=canvas,
        judges=judges,
        settings=settings,
        device="cpu",
        cache_dir=tmp_path / "cache",
        erase_fn=lambda h, n, d: patch,
        progress=False,
    )
    # make the sweep look interrupted: drop the last line and mark the manifest incomplete
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    manifest["complete"] = False
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\na\nb\n")
    nudity = tmp_path / "nudity.json"
    evaluate_nudity(
        str(sd_dir),
        prompts=csv,
        settings=NuditySettings(num_inference_steps=2),
        detector=NoDetections(),
        device="cpu",
        out=nudity,
        progress=False,
    )
    return canvas_dir, sweep_dir, nudity


def test_report_from_all_kinds(results, tmp_path):
    out = build_report(list(results), tmp_path / "report")
    page = (out / "index.html").read_text()
    md = (out / "summary.md").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert page.count("<svg") >= 3 and "data:image/png;base64," in page
    assert "INCOMPLETE sweep" in page and "INCOMPLETE" in md
    assert "Canvas: erase Van_Gogh" in page and "Van_Gogh · original" in page and "Van_Gogh · erased" in page
    assert "threshold 0.45" in page and "FEMALE_BREAST_EXPOSED" in md
    assert "| model | UA % |" in md
    with pytest.raises(OutputExistsError):
        build_report(list(results), tmp_path / "report")
    with pytest.raises(EvaluationInputError):
        build_report([tmp_path / "nothing.json"], tmp_path / "r2")


def test_svg_bars_skips_missing_values():
    svg = svg_bars([("a", {"x": 0.5, "y": None}), ("b", {"x": 1.0, "y": 0.25})], ("x", "y"), title="t")
    assert svg.startswith("<svg") and svg.count("<rect") == 3 + 2  # 3 bars + 2 legend swatches


def test_cli_help(cli_app):
    runner = CliRunner()
    for args in (
        ["eval", "--help"],
        ["eval", "canvas", "--help"],
        ["eval", "nudity", "--help"],
        ["eval", "utility", "--help"],
        ["sweep", "--help"],
        ["report", "--help"],
    ):
        result = runner.invoke(cli_app, args)
        assert result.exit_code == 0, result.output


def test_cli_utility_nudity_report(sd_dir, clip_dir, tmp_path, cli_app):
    runner = CliRunner()
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,evaluation_seed\na dog,1\na cat,2\na bus,3\n")
    u = tmp_path / "u.json"
    args = [
        "eval",
        "utility",
        "--model",
        str(sd_dir),
        "--clip",
        str(clip_dir),
        "--prompts",
        str(csv),
        "--limit",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(u),
        "--quiet",
    ]
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(u.read_text())["n_prompts"] == 2
    again = runner.invoke(cli_app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    report = runner.invoke(cli_app, ["report", str(u), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0 and (tmp_path / "rep" / "index.html").is_file()
    if pytest.importorskip("nudenet"):
        n = tmp_path / "n.json"
        result = runner.invoke(
            cli_app,
            [
                "eval",
                "nudity",
                "--model",
                str(sd_dir),
                "--prompts",
                str(csv),
                "--limit",
                "2",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--threshold",
                "0.6",
                "--out",
                str(n),
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(n.read_text())["threshold"] == 0.6


def test_cli_errors(sd_dir, tmp_path, cli_app):
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["eval", "canvas", "--model", str(sd_dir), "--target", "Cats", "--device", "cpu"]
    )
    assert result.exit_code == 2 and "judges" in result.output
    result = runner.invoke(
        cli_app, ["eval", "nudity", "--model", str(sd_dir), "--prompts", str(tmp_path / "x.csv")]
    )
    assert result.exit_code == 2 and "No prompt file" in result.output
    result = runner.invoke(
        cli_app, ["sweep", "--model", str(sd_dir), "--out", str(tmp_path / "s"), "--seeds", "1,x"]
    )
    assert result.exit_code == 2 and "--seeds" in result.output


@pytest.mark.slow
def test_report_renders_in_headless_chromium(results, tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    report = build_report(list(results), tmp_path / "report")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "check_report_browser.sh"
    png = tmp_path / "report.png"
    done = subprocess.run(
        ["bash", str(script), str(report), str(png)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
