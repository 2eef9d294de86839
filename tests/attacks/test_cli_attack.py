"""Smoke-run ``hirm attack`` (two optimizer steps at most) and its one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hirm.cli.main import app

runner = CliRunner()


def _run(*args, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result.output


def _asr_line(output: str) -> str:
    line = next(line for line in output.splitlines() if "ASR" in line)
    return line.rsplit(";", 1)[0]  # without the seconds


def test_attack_cli_on_the_world(world_model, weak_patch, tmp_path):
    patch = weak_patch.save(tmp_path / "weak.safetensors")
    out = _run("attack", "embedding", "-c", "Cats", "-p", patch, "--limit", "2", "--seeds", "188",
               "--train-seeds", "0", "--steps", "2", "--quiet", "-o", tmp_path / "ti")  # fmt: skip
    assert "ASR" in out and "result ->" in out
    result = json.loads((tmp_path / "ti" / "result.json").read_text())
    assert result["complete"] and result["asr"]["n"] == 2 and result["config"]["steps"] == 2
    assert (tmp_path / "ti" / "found.safetensors").is_file() and (tmp_path / "ti" / "grid.png").is_file()
    # the same command again resumes (nothing left to do) and prints the same numbers
    again = _run("attack", "embedding", "-c", "Cats", "-p", patch, "--limit", "2", "--seeds", "188",
                 "--train-seeds", "0", "--steps", "2", "--quiet", "-o", tmp_path / "ti")  # fmt: skip
    assert _asr_line(again) == _asr_line(out)

    # the report shows the attack: ASR with n, and each prompt's before/after images with the verdicts
    _run("report", tmp_path / "ti", "--out", tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "Attack: embedding on Cats" in page and page.count("data:image/png;base64,") == 4
    assert "before: concept recognised" in page or "before: not recognised" in page
    asr = f"{100 * result['asr']['rate']:.1f} (n=2, "
    assert f"| embedding | Cats (object) | {asr}" in summary and "2 of 2" in summary
    assert page.count(': concept recognised" title=') == sum(
        bool(i["before"]) + bool(i["after"]) for i in result["items"]
    )

    _run("attack", "prompts", "-c", "Cats", "-p", patch, "--limit", "2", "--seeds", "188", "--quiet",
         "-o", tmp_path / "plain")  # fmt: skip
    assert json.loads((tmp_path / "plain" / "result.json").read_text())["before"]["n"] == 0


def test_attack_cli_errors(tmp_path):
    out = _run("attack", "prompts", "-c", "Cats", "--steps", "2", "-o", tmp_path / "x", code=2)
    assert "does not apply" in out
    out = _run("attack", "nonsense", "-c", "Cats", "-o", tmp_path / "y", code=2)
    assert "Unknown attack" in out
    out = _run("attack", "ringabell", "-c", "Zebras", "-o", tmp_path / "z", code=2)
    assert "Unknown concept" in out
    out = _run("attack", "ringabell", "-c", "Cats", "--set", "colour=1", "-o", tmp_path / "w", code=2)
    assert "has no field" in out


def test_attack_cli_on_a_prompt_csv_with_nudenet(sd_dir, tmp_path):
    pytest.importorskip("nudenet")
    from hirm.evaluation.common import package_data

    _run("attack", "prompts", "--model", sd_dir, "--prompts", package_data("unlearndiffatk_nudity.csv"),
         "--limit", "2", "--sampler-steps", "2", "--quiet", "-o", tmp_path / "nude")  # fmt: skip
    result = json.loads((tmp_path / "nude" / "result.json").read_text())
    assert result["judge"]["kind"] == "nudity" and result["asr"]["n"] == 2
    assert result["items"][0]["seed"] != result["items"][1]["seed"]  # the CSV's evaluation_seed
