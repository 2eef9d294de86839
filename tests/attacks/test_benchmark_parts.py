"""Each part of a merged attack cell judged alone: the rows read from the evaluation, the kept concepts
that fall most, and a one-line error for a cell that is not there."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "attacks_parts.py"
_SPEC = importlib.util.spec_from_file_location("benchmark_attacks_parts", _PATH)
parts = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(parts)


def _result(ira: float, dogs: float) -> dict:
    """An ``evaluate_canvas`` result with the fields the script reads (n as on the world's grid)."""
    grid = {"UA": 1.0, "IRA": ira, "CRA": 0.9975, "n_target": 20, "n_in_domain": 380, "n_cross": 400}
    per_concept = {
        "object": {"Horses": 0.0, "Dogs": dogs, "Cats": 0.95, "Birds": 0.8},
        "style": {"Rust": 1.0},
    }
    original = {"object": {"Horses": 1.0, "Dogs": 1.0, "Cats": 0.95, "Birds": 0.85}, "style": {"Rust": 1.0}}
    return {
        "metrics": {"original": {"grid": {**grid, "UA": 0.0, "IRA": 0.963}}, "erased": {"grid": grid}},
        "per_concept": {"original": original, "erased": per_concept},
    }


def test_rows_carry_n_and_intervals_and_the_worst_kept_concepts_come_first():
    result = _result(ira=0.876, dogs=0.35)
    rows = {"original": parts.judged(result, "original"), "all parts": parts.judged(result, "erased")}
    ira = rows["all parts"]["IRA"]
    assert (ira["k"], ira["n"]) == (333, 380)  # 87.6 % of 380 images
    lo, hi = ira["ci95"]
    assert lo < 333 / 380 < hi and ira["value"] == 333 / 380
    assert rows["original"]["UA"]["k"] == 0
    # Dogs falls 65 points, Birds 5, Cats none; the erased concept itself is not a kept one
    assert parts.worst_kept(rows, "Horses", "object", 2) == ["Dogs", "Birds"]
    report = {
        "command": "python benchmarks/attacks_parts.py ...", "seeds": [188], "machine": "test",
        "cells": [{"method": "m", "concept": "Horses", "rows": rows, "n_per_concept": 20,
                   "worst": {"Dogs": {"original": 1.0, "all parts": 0.35}}}],
    }  # fmt: skip
    text = parts.markdown(report)
    assert "| m | Horses | all parts | 100.0 [" in text and "87.6 [" in text
    assert "  - Dogs: original 100 %, all parts 35 %" in text


def test_a_missing_cell_is_one_line_naming_the_command_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="run benchmarks/attacks.py --methods m --concepts Horses first"):
        parts.main(["--work", str(tmp_path), "--methods", "m", "--concepts", "Horses", "--out", str(out)])
    assert not out.exists()
    with pytest.raises(SystemExit, match="error:"):
        parts.main(["--work", str(tmp_path), "--methods", "m", "--concepts", "Unicorns", "--out", str(out)])
