"""Report (HTML + Markdown) from every result kind, and smoke runs of the CLI commands."""

from __future__ import annotations

import json
import re

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


def visible_text(page: str) -> str:
    """The page without scripts, styles and data URIs (what a reader sees, plus attributes)."""
    page = re.sub(r"<script>.*?</script>|<style>.*?</style>", "", page, flags=re.S)
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)


def test_report_from_all_kinds(results, tmp_path):
    out = build_report(list(results), tmp_path / "report")
    page = (out / "index.html").read_text()
    md = (out / "summary.md").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)=\"?(https?:|//)|url\(http|@import", page)  # nothing fetched
    assert page.count("<svg") >= 4 and "data:image/png;base64," in page
    assert "INCOMPLETE sweep" in page and "INCOMPLETE" in md
    assert "Erasing \u201cVan Gogh\u201d (style)" in page and "Van_Gogh · original" in page
    assert "Van_Gogh · erased" in page
    assert "threshold 0.45" in page and "FEMALE_BREAST_EXPOSED" in md
    assert "| metric | which is better | original % | erased % | change (points) |" in md
    with pytest.raises(OutputExistsError):
        build_report(list(results), tmp_path / "report")
    with pytest.raises(EvaluationInputError):
        build_report([tmp_path / "nothing.json"], tmp_path / "r2")


def test_canvas_report_says_how_and_how_sure(results, tmp_path):
    from hirm.evaluation.metrics import wilson_interval

    canvas_dir = results[0]
    saved = json.loads((canvas_dir / "result.json").read_text())
    out = build_report([canvas_dir], tmp_path / "report")
    page, md = (out / "index.html").read_text(), (out / "summary.md").read_text()
    text = visible_text(page)
    # how it was erased and how the images were made, in words: no Python reprs
    for fact in ("Method", "HiRM", "Cats (object)", "HiRM-R: random direction", "Read-out", "Optimizer steps",
                 "Learning rate", "0.01", "Precision", "Sampler", "DDIMScheduler", "Guidance scale", "Seeds"):  # fmt: skip
        assert fact in text and fact in md, fact
    assert "<dd>1, 2</dd>" in page and "- **Seeds:** 1, 2" in md
    assert not re.search(r"\[\d+, \d+|\['|\{'|: None|True|False", text + md)
    # definitions, which direction is better
    for name in ("UA", "IRA", "CRA", "AA"):
        assert f"<th>{name}</th>" in page and f"- **{name}**:" in md
    assert text.count("higher is better") >= 6
    # every share with n and its 95 % Wilson interval, one decimal
    grid = saved["metrics"]["erased"]["grid"]
    n = grid["n_cross"]
    lo, hi = wilson_interval(round(grid["CRA"] * n), n)
    assert f"{100 * grid['CRA']:.1f}<small> n={n} [{100 * lo:.1f}–{100 * hi:.1f}]</small>" in page
    assert f"{100 * grid['CRA']:.1f} (n={n}, {100 * lo:.1f}–{100 * hi:.1f})" in md
    # images: every seed behind a switch, grid + held-out + super rows, each marked with the verdict
    assert '<div data-seed="1">' in page and '<div data-seed="2" hidden>' in page
    assert 'data-seed="1" class="on">seed 1</button>' in page
    strips = 2 * (2 + 1 + 1) * 2  # runs x (grid rows + held-out + super) x seeds
    assert page.count("<img ") == strips and page.count("<i class=") == strips * 2  # 2 columns each
    assert "Held-out template \u201c{object}, {style}\u201d" in page and "Super-category template" in page
    assert re.search(
        r'<i class="(gone|leak)[^"]*" title="A Cats image in Van Gogh style\. · seed 1 · erased', page
    )
    # charts per style and per object, the loss curve, a sortable per-concept table
    assert "style judge accuracy per style" in page and "object judge accuracy per object" in page
    assert "<polyline" in page and "erase loss per optimizer step" in page
    assert '<table class="sortable">' in page and '<tr class="target"><td class="l">Van_Gogh</td>' in page


def test_verdict_marks():
    from hirm.evaluation.report import Verdicts

    def row(style, obj, pred_style, pred_obj):
        return dict(split="grid", template="t", style=style, object=obj, seed=0, prompt="p",
                    pred_style=pred_style, p_style=0.9, pred_object=pred_obj, p_object=0.8)  # fmt: skip

    original = [row("A", "x", "A", "x"), row("B", "x", "B", "x"), row("B", "y", "A", "x")]
    erased = [row("A", "x", "A", "y"), row("B", "x", "A", "x"), row("B", "y", "A", "x")]
    v = Verdicts({"target": "A", "domain": "style", "rows": {"original": original, "erased": erased}})

    def key(style, obj):
        return ("grid", "t", style, obj, 0)

    assert v.mark("erased", key("A", "x"))[0] == "leak xdamage"  # still the style, lost its object
    assert v.mark("original", key("A", "x"))[0] == ""
    assert v.mark("erased", key("B", "x"))[0] == "damage"  # B was recognised before, not after
    assert v.mark("erased", key("B", "y"))[0] == "miss xmiss"  # wrong before too: the judge's miss
    erased[0] = row("A", "x", "B", "x")
    v = Verdicts({"target": "A", "domain": "style", "rows": {"original": original, "erased": erased}})
    cls, title = v.mark("erased", key("A", "x"))
    assert (
        cls == "gone" and "style judge: B (0.90) wrong" in title and "object judge: x (0.80) right" in title
    )


def test_compare_directory_report(results, tmp_path):
    import shutil

    sweep_dir = results[1]
    compare = tmp_path / "compare"
    for name in ("m1", "m2"):
        shutil.copytree(sweep_dir, compare / name)
    out = build_report([compare], tmp_path / "report")
    page, md = (out / "index.html").read_text(), (out / "summary.md").read_text()
    assert "Comparison: 2 methods" in page and page.count('<table class="sortable">') == 2
    assert page.count('<td class="l">m2</td>') == 1 + 2 and "n=" in page  # mean row + both concepts
    assert "| method | concept | domain |" in md
    # the machine behind each method's erase seconds, from its sweep's own record
    from hirm.evaluation.sweep import read_sweep

    machine = read_sweep(sweep_dir)[0]["meta"]["machine"]
    assert f"Erase seconds were measured on: m1: {machine}; m2: {machine}." in md


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
        "--sampler-steps",
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
                "--sampler-steps",
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
        cli_app, ["eval", "canvas", "--model", str(sd_dir), "-c", "Cats", "--device", "cpu"]
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
    """Real browser: every image loads, the console stays empty, a screenshot is written."""
    import shutil
    import subprocess
    from pathlib import Path

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    report = build_report(list(results), tmp_path / "report")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "check_report_browser.sh"
    png = tmp_path / "report.png"
    done = subprocess.run(
        ["bash", str(script), str(report), str(png)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    images = (report / "index.html").read_text().count("<img ")
    assert images > 0 and f"images: {images} loaded, 0 broken; console messages: 0" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # a broken image is caught
    page = report / "index.html"
    page.write_text(page.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    done = subprocess.run(
        ["bash", str(script), str(report), str(png)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 1 and "1 broken" in done.stdout
