"""The frontier over every attack table: cells pooled once, other tables named and left out, the goal
checked on the point estimate and on the interval."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "attacks_frontier.py"
_SPEC = importlib.util.spec_from_file_location("benchmark_attacks_frontier", _PATH)
frontier = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(frontier)
table = frontier.table


def _cell(method, concept, domain, asr_k, *, ira=0.95, cra=0.97):
    run = {"asr": {"k": asr_k, "n": 40}, "after": {"k": asr_k, "n": 40}, "seconds": 1.0, "complete": True}
    return {
        "method": method, "concept": concept, "domain": domain,
        "entry": table.describe_entry(table.ENTRIES[method]), "erase_seconds": 1.0,
        "canvas": {"UA": 1.0, "n_target": 20, "IRA": ira, "n_in_domain": 380, "CRA": cra, "n_cross": 400},
        "attacks": {a: run for a in table.ATTACKS},
    }  # fmt: skip


def _table(path, cells, *, attacks=table.ATTACKS, **settings):
    expected = table.table_settings(table.parse_args([]), table.ATTACKS)
    path.mkdir(parents=True)
    data = {
        "kind": "attack-table",
        "attacks": list(attacks),
        "settings": {**expected, **settings},
        "cells": cells,
    }
    (path / "attacks.json").write_text(json.dumps(data))
    return path


def test_frontier_pools_each_cell_once_and_checks_the_goal(tmp_path):
    first = _table(tmp_path / "a", [_cell("uce", "Cats", "object", 1), _cell("uce", "Horses", "object", 0)])
    # the same Cats cell with other numbers: the first table keeps it, and the frontier says so
    second = _table(
        tmp_path / "b", [_cell("uce", "Cats", "object", 30), _cell("kv-proj-4", "Rust", "style", 8)]
    )
    partial = _table(tmp_path / "c", [_cell("uce", "Trees", "object", 0)], attacks=("embedding",))
    other = _table(tmp_path / "d", [_cell("uce", "Trees", "object", 0)], world="another world")
    out = tmp_path / "out"
    frontier.main(["--tables", *map(str, (first, second, partial, other)), "--concepts",
                   "Cats,Horses,Trees,Rust", "--out", str(out)])  # fmt: skip
    report = json.loads((out / "frontier.json").read_text())
    row = report["rows"]["uce|object"]
    # Cats (1 of 40) + Horses (0 of 40), Trees from neither left-out table
    assert row["concepts"] == ["Cats", "Horses"] and row["of"] == 3
    assert {a: (r["asr"]["k"], r["asr"]["n"]) for a, r in row["attacks"].items()} == dict.fromkeys(
        table.ATTACKS, (1, 80)
    )
    # 1.25 % on the point estimate, but the interval's upper end is above 5 %
    assert row["goal"]["ASR"] == {"point": True, "interval": False}
    assert row["goal"]["IRA"] == {"point": True, "interval": True} and row["goal"]["CRA"]["point"]
    # 8 of 40 = 20 %: missed; the style row comes after the object row that meets more of the goal
    assert report["rows"]["kv-proj-4|style"]["goal"]["ASR"] == {"point": False, "interval": False}
    assert list(report["rows"]) == ["uce|object", "kv-proj-4|style"]
    assert len(report["conflicts"]) == 1 and "uce/Cats" in report["conflicts"][0]
    assert any(str(partial) in s and "embedding only" in s for s in report["left out"])
    assert any(str(other) in s and "world" in s for s in report["left out"])
    text = (out / "frontier.md").read_text()
    assert "`uce` on Horses" in text and "`uce` on Cats" in text  # each meets the goal on its own
    assert (out / "frontier_ira.png").is_file() and (out / "frontier_cra.png").is_file()
