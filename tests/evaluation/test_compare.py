"""`hirm compare` machinery on a tiny pipeline with hand-made judges: every entry runs on the same
grid, the table has one row per (method, domain) with the measured cost and size, and a rerun resumes."""

from __future__ import annotations

import csv

from hirm.evaluation.compare import ENTRIES, Entry, run_compare


def test_compare_runs_every_entry_and_writes_the_table(sd_dir, canvas, judges, settings, tmp_path):
    entries = [ENTRIES["hirm-r"], ENTRIES["hirm-s"], ENTRIES["uce"], ENTRIES["hirm+uce"],
               Entry("esd-x", ("esd-x",), overrides={"esd-x": {"steps": 1, "ddim_steps": 2}})]  # fmt: skip
    out = tmp_path / "cmp"
    table = run_compare(sd_dir, out=out, entries=entries, settings=settings, canvas=canvas, judges=judges,
                        limit=None, progress=False, command="hirm compare --test")  # fmt: skip
    text = table.read_text()
    assert "| hirm-r | style |" in text and "| esd-x | object |" in text and "hirm compare --test" in text
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert {(r["method"], r["domain"]) for r in rows} == {
        (e.name, d) for e in entries for d in ("style", "object")
    }
    by = {(r["method"], r["domain"]): r for r in rows}
    assert int(by[("hirm+uce", "style")]["parameters"]) == int(by[("hirm-r", "style")]["parameters"]) + int(
        by[("uce", "style")]["parameters"]
    )
    assert all(float(r["seconds_mean"]) > 0 for r in rows)
    for r in rows:
        assert 0.0 <= float(r["UA_mean"]) <= 1.0

    stamp = (out / "hirm-r" / "results.jsonl").read_text()
    run_compare(
        sd_dir, out=out, entries=entries[:1], settings=settings, canvas=canvas, judges=judges, progress=False
    )
    assert (out / "hirm-r" / "results.jsonl").read_text() == stamp  # resumed: nothing redone
