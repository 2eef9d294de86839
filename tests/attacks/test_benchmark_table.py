"""The attack benchmark's pooling: rates over the concepts of a domain are successes / images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "attacks.py"
_SPEC = importlib.util.spec_from_file_location("benchmark_attacks", _PATH)
attacks_benchmark = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(attacks_benchmark)


def _run(k, n, seconds=1.0):
    stats = {"k": k, "n": n}
    return {"asr": stats, "after": stats, "seconds": seconds, "complete": True}


def test_pooled_rates_and_intervals():
    cells = [
        {"concept": "Cats", "erase_seconds": 2.0, "attacks": {"embedding": _run(3, 10)},
         "canvas": {"UA": 0.5, "n_target": 10, "IRA": 0.9, "n_in_domain": 90, "CRA": 1.0, "n_cross": 100}},
        {"concept": "Trees", "erase_seconds": 4.0, "attacks": {"embedding": _run(1, 10, 3.0)},
         "canvas": {"UA": 1.0, "n_target": 10, "IRA": 0.8, "n_in_domain": 90, "CRA": 0.99, "n_cross": 100}},
    ]  # fmt: skip
    row = attacks_benchmark.pooled(cells, ["embedding", "ringabell"])
    assert row["UA"]["k"] == 15 and row["UA"]["n"] == 20 and row["UA"]["rate"] == 0.75
    assert row["IRA"]["rate"] == pytest.approx(0.85) and row["CRA"]["k"] == 199
    asr = row["attacks"]["embedding"]["asr"]
    assert (asr["k"], asr["n"], asr["rate"]) == (4, 20, 0.2) and asr["ci95"][0] < 0.2 < asr["ci95"][1]
    assert "ringabell" not in row["attacks"] and row["erase_seconds"] == 3.0
    assert row["attacks"]["embedding"]["seconds"] == 2.0
