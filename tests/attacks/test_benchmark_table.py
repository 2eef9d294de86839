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
    assert "ringabell" not in row["attacks"]
    # seconds only per machine (both cells here: this machine), never a mean across machines
    assert "erase_seconds" not in row and "seconds" not in row["attacks"]["embedding"]
    assert [(t["cells"], t["erase_seconds"], t["attack_seconds"]) for t in row["timed"]] == [(2, 3.0, 2.0)]


def test_tradeoff_plot_puts_each_method_at_its_worst_case_asr(tmp_path):
    """A point per (method, domain) at (IRA, max ASR over the attacks), in the domain's colour; the goal
    region (IRA >= 90 %, ASR <= 5 %) shaded; a row without an IRA is left out (it must not fail)."""
    from PIL import Image

    def row(ira, *asrs):
        return {"IRA": {"rate": ira}, "attacks": {f"a{i}": {"asr": {"rate": a}} for i, a in enumerate(asrs)}}

    rows = {"uce|object": row(0.5, 0.1, 0.6), "hirm|style": row(0.25, 0.2), "none|style": row(None, 0.3)}
    path = tmp_path / "plots" / "tradeoff.png"
    attacks_benchmark.tradeoff_plot(rows, path)
    image = Image.open(path).convert("RGB")
    assert image.size == (640, 480)

    def at(ira, asr):  # the plot's axes: 60 px margins, IRA left to right, ASR bottom to top
        return round(60 + ira * 520), round(480 - 60 - asr * 360)

    assert image.getpixel(at(0.5, 0.6)) == (225, 87, 89)  # object: worst case 0.6, not 0.1
    assert image.getpixel(at(0.5, 0.1)) == (255, 255, 255)
    assert image.getpixel(at(0.25, 0.2)) == (78, 121, 167)  # style
    assert image.getpixel(at(0.95, 0.02)) == (220, 245, 220)  # goal region


def test_contact_sheet_shows_before_and_after_of_each_run(tmp_path):
    """Two rows per attack of a cell, images at native size; an item without an "after" image (the
    attack never ran on it) is a white cell, not a copy of its "before"."""
    import json

    import numpy as np
    from PIL import Image

    run = tmp_path / "embedding"
    (run / "images").mkdir(parents=True)
    items = []
    for i, (before, after) in enumerate([((255, 0, 0), (0, 0, 255)), ((0, 255, 0), None)]):
        Image.new("RGB", (32, 32), before).save(run / "images" / f"b{i}.png")
        files = {"before": f"images/b{i}.png"}
        if after is not None:
            Image.new("RGB", (32, 32), after).save(run / "images" / f"a{i}.png")
            files["after"] = f"images/a{i}.png"
        items.append({"index": i, "images": files})
    (run / "result.json").write_text(json.dumps({"items": items}))
    cell = {"method": "uce", "concept": "Cats", "attacks": {"embedding": {}}}
    sheet = attacks_benchmark.contact_sheet(cell, tmp_path)
    n = attacks_benchmark.SHEET_ITEMS
    assert sheet.size == (230 + 32 * n, 24 + 2 * 32)  # one run: a before row and an after row
    pixels = np.asarray(sheet)
    head, left = 24, 230
    assert tuple(pixels[head + 16, left + 16]) == (255, 0, 0)  # item 0 before
    assert tuple(pixels[head + 48, left + 16]) == (0, 0, 255)  # item 0 after
    assert tuple(pixels[head + 16, left + 48]) == (0, 255, 0)  # item 1 before
    assert tuple(pixels[head + 48, left + 48]) == (255, 255, 255)  # item 1: no after image


def _fake_cell(work, method, concept, attacks, k, precision="bf16", machine=None, seconds=2.0):
    """A finished cell in ``work`` as the benchmark leaves it: erase.json, canvas.json (its grid sampled
    in ``precision``), each attack's result.json (k of 4 prompts recovered) and its images."""
    import json

    from PIL import Image

    cell = work / method / concept
    cell.mkdir(parents=True)
    entry = attacks_benchmark.describe_entry(attacks_benchmark.ENTRIES[method])
    erase = {"seconds": seconds, "entry": entry, **({"machine": machine} if machine else {})}
    (cell / "erase.json").write_text(json.dumps(erase))
    canvas = {"UA": 0.9, "IRA": 0.95, "CRA": 0.98, "n_target": 20, "n_in_domain": 380, "n_cross": 400,
              "precision": precision}  # fmt: skip
    (cell / "canvas.json").write_text(json.dumps(canvas))
    for attack in attacks:
        run = cell / attack
        (run / "images").mkdir(parents=True)
        items = []
        for i in range(4):
            for stage in ("before", "after"):
                Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(run / "images" / f"{stage}{i}.png")
            items.append({"index": i, "images": {s: f"images/{s}{i}.png" for s in ("before", "after")}})
        stats = {"k": k, "n": 4, "rate": k / 4, "ci95": [0.0, 1.0]}
        result = {"asr": stats, "before": stats, "after": stats, "seconds": {"total": 3.0},
                  "complete": True, "items": items}  # fmt: skip
        (run / "result.json").write_text(json.dumps(result))


def test_table_from_finished_cells_and_its_report(tmp_path, monkeypatch):
    """``--table-only`` writes the table from the finished cells, lists the ones not run, and
    ``hirm report`` shows it: pooled rows, whether the goal is met, the trade-off plot, the sheets."""
    import hirm
    from hirm.evaluation.report import build_report

    work, out = tmp_path / "work", tmp_path / "table"
    attacks = ("embedding", "unlearndiffatk", "ringabell")
    _fake_cell(work, "uce", "Pastel", attacks, k=0)
    _fake_cell(work, "uce", "Cats", attacks, k=2)
    (work / "uce" / "Rust").mkdir()  # started, never finished: left out, named as not run
    attacks_benchmark.main(
        ["--work", str(work), "--out", str(out), "--table-only", "--methods", "uce,hirm-r-rms",
         "--concepts", "Pastel,Cats,Rust"]
    )  # fmt: skip
    import json

    # a resumed run (or another --table-only) replaces the table it wrote, keeping what it held and planned;
    # never a directory it did not write
    again = ["--work", str(work), "--table-only", "--methods", "uce", "--concepts", "Pastel"]
    attacks_benchmark.main([*again, "--out", str(out)])
    assert "Not run yet (4 cells)" in (out / "attacks.md").read_text()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="hirm did not write"):
        attacks_benchmark.main([*again, "--out", str(foreign)])

    def no_model(*args, **kwargs):
        raise AssertionError("an --out the table cannot be written to must stop the run before any cell")

    monkeypatch.setattr(hirm, "load_model", no_model)
    with pytest.raises(SystemExit, match="hirm did not write"):
        attacks_benchmark.main(["--work", str(tmp_path / "fresh"), "--methods", "uce", "--concepts", "Rust",
                                "--out", str(foreign)])  # fmt: skip
    monkeypatch.undo()
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    attacks_benchmark.main(
        ["--work", str(work), "--out", str(out), "--table-only", "--methods", "uce,hirm-r-rms",
         "--concepts", "Pastel,Cats,Rust"]
    )  # fmt: skip

    table = json.loads((out / "attacks.json").read_text())
    assert table["kind"] == "attack-table" and not table["complete"]
    assert set(table["rows"]) == {"uce|style", "uce|object"}
    assert table["rows"]["uce|object"]["attacks"]["embedding"]["asr"]["k"] == 2
    text = (out / "attacks.md").read_text()
    assert "Not run yet (4 cells): uce/Rust, hirm-r-rms/Pastel, hirm-r-rms/Cats, hirm-r-rms/Rust." in text
    assert (out / "tradeoff.png").is_file()
    assert sorted(p.relative_to(out).as_posix() for p in (out / "sheets").rglob("*.png")) == [
        "sheets/uce/Cats.png", "sheets/uce/Pastel.png"
    ]  # fmt: skip

    report = build_report([out], tmp_path / "report")
    summary = (report / "summary.md").read_text()
    assert "## Attacks on erased concepts" in summary and "uce/Rust" in summary
    style = next(line for line in summary.splitlines() if line.startswith("| uce | style"))
    object_ = next(line for line in summary.splitlines() if line.startswith("| uce | object"))
    assert "| yes |" in style and "| no |" in object_  # ASR 0 % vs 50 % with IRA 95 %, CRA 98 %
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64") == 3  # the plot and a sheet per cell
    assert "uce on Cats: before / after" in page


def test_a_table_keeps_its_cells_without_the_work_directory(tmp_path, monkeypatch, capsys):
    """The table in --out is a record: a later run with an empty --work (a fresh checkout) keeps its
    cells, their numbers and their sheets byte for byte, and runs none of them again; it adds cells
    from --work. Other settings are an error unless --replace; a cell whose method's configuration
    changed is dropped (and named); a work directory erased with another configuration is refused."""
    import json

    import hirm
    from hirm.evaluation.compare import Entry

    work, out = tmp_path / "work", tmp_path / "table"
    attacks = ("embedding", "unlearndiffatk", "ringabell")
    _fake_cell(work, "uce", "Pastel", attacks, k=0)
    _fake_cell(work, "uce", "Cats", attacks, k=2)
    base = ["--out", str(out), "--methods", "uce", "--concepts", "Pastel,Cats"]
    attacks_benchmark.main(["--work", str(work), "--table-only", *base])
    first = json.loads((out / "attacks.json").read_text())
    sheets = {p.name: p.read_bytes() for p in (out / "sheets" / "uce").iterdir()}

    def no_model(*args, **kwargs):
        raise AssertionError("a kept cell must not be run again")

    monkeypatch.setattr(hirm, "load_model", no_model)
    empty = tmp_path / "fresh-work"
    attacks_benchmark.main(["--work", str(empty), *base])  # a run: everything asked is in the table
    attacks_benchmark.main(["--work", str(empty), "--table-only", *base])
    again = json.loads((out / "attacks.json").read_text())
    assert again["rows"] == first["rows"] and again["cells"] == first["cells"]
    assert {p.name: p.read_bytes() for p in (out / "sheets" / "uce").iterdir()} == sheets

    # a cell finished in another work directory joins the kept ones; the plan grows
    _fake_cell(empty, "uce", "Rust", attacks, k=4)
    attacks_benchmark.main(
        ["--work", str(empty), "--table-only", "--out", str(out), "--concepts", "Rust", "--methods", "uce"]
    )
    grown = json.loads((out / "attacks.json").read_text())
    assert [c["concept"] for c in grown["cells"]] == ["Pastel", "Cats", "Rust"]
    assert grown["concepts"] == ["Pastel", "Cats", "Rust"] and grown["complete"]
    assert grown["rows"]["uce|style"]["attacks"]["embedding"]["asr"]["k"] == 4  # Pastel 0 + Rust 4

    with pytest.raises(SystemExit, match="other settings \\(attack seeds\\).*--replace"):
        attacks_benchmark.main(["--work", str(empty), "--table-only", *base, "--seeds", "1,2"])
    assert json.loads((out / "attacks.json").read_text()) == grown  # nothing lost

    changed = Entry("uce", ("uce",), overrides={"uce": {"lamb": 0.1}})
    monkeypatch.setitem(attacks_benchmark.ENTRIES, "uce", changed)
    attacks_benchmark.main(["--work", str(tmp_path / "none"), "--table-only", *base])
    assert "uce/Pastel: the method's configuration changed; not kept" in capsys.readouterr().out
    assert json.loads((out / "attacks.json").read_text())["cells"] == []
    with pytest.raises(SystemExit, match="erased with another configuration of uce"):
        attacks_benchmark.main(["--work", str(empty), "--table-only", *base, "--concepts", "Rust"])

    monkeypatch.undo()
    attacks_benchmark.main(["--work", str(work), "--table-only", *base, "--seeds", "1,2", "--replace"])
    replaced = json.loads((out / "attacks.json").read_text())
    assert replaced["settings"]["attack seeds"] == "1,2" and replaced["concepts"] == ["Pastel", "Cats"]


def test_each_cell_says_its_grid_precision_and_auto_follows_the_machine(tmp_path, monkeypatch):
    """``--precision auto`` (the default) samples a cell's grid in bf16 only where the device has native
    bf16; every cell records its grid's precision, and a row pooling both precisions says so."""
    import json

    import hirm.checks

    cpu = attacks_benchmark.torch.device("cpu")
    monkeypatch.setattr(hirm.checks, "native_bf16", lambda device: False)
    assert attacks_benchmark.grid_precision("auto", cpu) == "fp32"
    assert attacks_benchmark.grid_precision("bf16", cpu) == "bf16"  # asked for: kept (and warned about)
    monkeypatch.setattr(hirm.checks, "native_bf16", lambda device: True)
    assert attacks_benchmark.grid_precision("auto", cpu) == "bf16"

    work, out = tmp_path / "work", tmp_path / "table"
    attacks = ("embedding", "unlearndiffatk", "ringabell")
    _fake_cell(work, "uce", "Pastel", attacks, k=0, precision="bf16")
    _fake_cell(work, "uce", "Rust", attacks, k=1, precision="fp32")
    _fake_cell(work, "uce", "Cats", attacks, k=2, precision="fp32")
    attacks_benchmark.main(
        ["--work", str(work), "--out", str(out), "--table-only", "--methods", "uce", "--concepts", "Pastel,Rust,Cats"]
    )  # fmt: skip
    table = json.loads((out / "attacks.json").read_text())
    assert table["settings"]["grid precision"] == "auto"
    assert table["rows"]["uce|style"]["grid precision"] == "bf16+fp32"
    assert table["rows"]["uce|object"]["grid precision"] == "fp32"
    assert [attacks_benchmark.cell_precision(c) for c in table["cells"]] == ["bf16", "fp32", "fp32"]
    text = (out / "attacks.md").read_text()
    assert "| CRA | grid |" in text and "| bf16+fp32 |" in text
    assert "grid precision auto (bf16 autocast where the machine has native bf16, else fp32" in text


XEON = "Intel(R) Xeon(R) Processor (2 cores, native bf16), 2 torch threads, torch 2.13.0+cpu"
H200 = (
    "Intel(R) Xeon(R) Processor (16 cores, native bf16), 4 torch threads, torch 2.11.0+cu130, GPU NVIDIA H200"
)


def test_machine_labels_name_the_gpu_else_the_cpu_model():
    from hirm.evaluation.common import machine_label

    assert machine_label(XEON) == "Xeon"
    assert machine_label(H200) == "H200"
    assert machine_label("AMD EPYC (2 cores, no native bf16), 2 torch threads, torch 2.13.0+cpu") == "EPYC"


def test_two_machines_with_one_short_name_are_told_apart_and_never_pooled():
    """Two AMD EPYCs, one with native bf16: distinct names in the table, seconds averaged apart."""
    from hirm.evaluation.common import machine_labels

    plain = "AMD EPYC (2 cores, no native bf16), 2 torch threads, torch 2.13.0+cpu"
    bf16 = "AMD EPYC (2 cores, native bf16), 2 torch threads, torch 2.13.0+cpu"
    assert machine_labels([XEON, H200]) == {XEON: "Xeon", H200: "H200"}  # unique names stay as they were
    assert machine_labels([plain, bf16, plain]) == {plain: "EPYC no-bf16", bf16: "EPYC bf16"}
    other = bf16.replace("torch 2.13.0", "torch 2.12.0")
    assert sorted(machine_labels([bf16, other]).values()) == ["EPYC bf16 #1", "EPYC bf16 #2"]

    canvas = {"UA": 1.0, "n_target": 10, "IRA": 1.0, "n_in_domain": 90, "CRA": 1.0, "n_cross": 100}
    cells = [
        {"concept": "Cats", "erase_seconds": 2.0, "attacks": {"embedding": _run(0, 10, 100.0)},
         "canvas": canvas, "machine": plain},
        {"concept": "Trees", "erase_seconds": 4.0, "attacks": {"embedding": _run(0, 10, 50.0)},
         "canvas": canvas, "machine": bf16},
    ]  # fmt: skip
    row = attacks_benchmark.pooled(cells, ["embedding"], attacks_benchmark.table_labels(cells))
    assert [(t["machine"], t["attack_seconds"]) for t in row["timed"]] == [
        ("EPYC bf16", 50.0),
        ("EPYC no-bf16", 100.0),
    ]
    # a row whose cells ran on one of them still names it as the table's machines line does
    alone = attacks_benchmark.pooled(cells[:1], ["embedding"], attacks_benchmark.table_labels(cells))
    assert [t["machine"] for t in alone["timed"]] == ["EPYC no-bf16"]
    assert "EPYC no-bf16 = " + plain in attacks_benchmark.cells_machines(cells)


def test_tables_made_on_two_machines_merge_and_keep_their_seconds_apart(tmp_path, capsys):
    """``--merge`` adds another table's cells (same settings) to --out's; a cell both hold keeps --out's.
    A row whose cells were timed on a GPU and on a CPU gives each machine's mean seconds, not one mean."""
    import json

    attacks = ("embedding", "unlearndiffatk", "ringabell")
    cpu_work, gpu_work = tmp_path / "cpu-work", tmp_path / "gpu-work"
    cpu_out, gpu_out = tmp_path / "cpu-table", tmp_path / "gpu-table"
    _fake_cell(cpu_work, "uce", "Pastel", attacks, k=0, machine=XEON, seconds=300.0)
    _fake_cell(cpu_work, "uce", "Cats", attacks, k=1, machine=XEON, seconds=300.0)
    _fake_cell(gpu_work, "uce", "Rust", attacks, k=4, machine=H200, seconds=10.0)
    _fake_cell(gpu_work, "uce", "Cats", attacks, k=3, machine=H200, seconds=10.0)  # also in the CPU table
    table = ["--table-only", "--methods", "uce"]
    attacks_benchmark.main(
        [*table, "--work", str(cpu_work), "--out", str(cpu_out), "--concepts", "Pastel,Cats"]
    )
    attacks_benchmark.main(
        [*table, "--work", str(gpu_work), "--out", str(gpu_out), "--concepts", "Rust,Cats"]
    )
    capsys.readouterr()

    attacks_benchmark.main(
        [*table, "--work", str(tmp_path / "none"), "--out", str(cpu_out), "--concepts", "Pastel",
         "--merge", str(gpu_out)]
    )  # fmt: skip
    assert f"uce/Cats: in {cpu_out} and {gpu_out}; keeping {cpu_out}'s" in capsys.readouterr().out
    merged = json.loads((cpu_out / "attacks.json").read_text())
    assert sorted((c["concept"], c["machine"]) for c in merged["cells"]) == [
        ("Cats", XEON), ("Pastel", XEON), ("Rust", H200)
    ]  # fmt: skip
    assert merged["concepts"] == ["Pastel", "Cats", "Rust"] and merged["complete"]
    assert (cpu_out / "sheets" / "uce" / "Rust.png").read_bytes() == (
        gpu_out / "sheets" / "uce" / "Rust.png"
    ).read_bytes()
    style = merged["rows"]["uce|style"]  # Pastel (Xeon) + Rust (H200)
    assert style["attacks"]["embedding"]["asr"]["k"] == 4
    assert style["timed"] == [
        {"machine": "H200", "cells": 1, "erase_seconds": 10.0, "attack_seconds": 3.0},
        {"machine": "Xeon", "cells": 1, "erase_seconds": 300.0, "attack_seconds": 3.0},
    ]  # by name, whichever cell came first
    text = (cpu_out / "attacks.md").read_text()
    assert "| 3 (H200) · 3 (Xeon) | 10.0 (H200) · 300.0 (Xeon) |" in text
    assert f"Xeon = {XEON}; H200 = {H200}" in text

    with pytest.raises(SystemExit, match="other settings \\(attack seeds\\)"):
        attacks_benchmark.main(
            [*table, "--work", str(tmp_path / "none"), "--out", str(cpu_out), "--concepts", "Pastel",
             "--seeds", "1,2", "--replace", "--merge", str(gpu_out)]
        )  # fmt: skip
    with pytest.raises(SystemExit, match="holds no attacks.json"):
        attacks_benchmark.main([*table, "--work", str(tmp_path / "none"), "--out", str(cpu_out),
                                "--concepts", "Pastel", "--merge", str(tmp_path / "nothing")])  # fmt: skip


def test_erase_cell_trains_the_runs_esd_concepts_together_and_records_each_share(sd_dir, tmp_path, esd_runs):
    """``--esd-batch``: a cell's ESD erase trains the run's concepts for that method in one batched run;
    the next cell's patch comes from the cache; each cell's erase seconds is its share of the batch."""
    import torch

    import hirm
    from hirm.evaluation.canvas_grid import Canvas
    from hirm.evaluation.compare import Entry

    canvas = Canvas(
        ("Van_Gogh", "Crayon"), ("Cats", "Dogs"), {"Van_Gogh": "painting", "Crayon": "drawing"},
        {"Cats": "animal", "Dogs": "animal"},
    )  # fmt: skip
    entry = Entry("esd-x", ("esd-x",), overrides={"esd-x": {"steps": 2, "ddim_steps": 3, "lr": 1e-3}})
    calls = esd_runs
    handle = hirm.load_model(sd_dir)
    options = {"esd_batch": 4, "esd_cache": tmp_path / "cache", "pending": ["Cats", "Dogs"]}
    cells = []
    for concept in ("Cats", "Dogs"):
        work = tmp_path / "work" / concept
        work.mkdir(parents=True)
        cells.append(
            attacks_benchmark.erase_cell(entry, canvas, handle, concept, work, torch.device("cpu"), **options)
        )
    assert calls == [["Cats", "Dogs"]]  # one run for both; Dogs' cell read its patch from the cache
    for patch, seconds in cells:
        assert seconds == patch.metadata["seconds"] == patch.metadata["batched"]["seconds"] / 2 > 0


def test_a_merged_cell_reuses_the_part_another_cell_made_alone(sd_dir, tmp_path, monkeypatch):
    """``hirm-empty-keep+esd-u-keep``-like cells: the ESD part another cell of the work directory made
    alone (same method, config, concept, base weights) is read, not trained again, and the cell's erase
    seconds count what that part cost; a part made with another config is trained anew."""
    import json

    import torch

    import hirm
    import hirm.api
    from hirm.evaluation.canvas_grid import Canvas
    from hirm.evaluation.compare import Entry

    canvas = Canvas(
        ("Van_Gogh", "Crayon"), ("Cats", "Dogs"), {"Van_Gogh": "painting", "Crayon": "drawing"},
        {"Cats": "animal", "Dogs": "animal"},
    )  # fmt: skip
    esd = {"esd-u": {"steps": 2, "ddim_steps": 3, "lr": 1e-3}}
    alone = Entry("esd-u-keep", ("esd-u",), overrides=esd, preserve_others=("esd-u",))
    other = Entry("esd-u-keep-3", ("esd-u",), overrides={"esd-u": {**esd["esd-u"], "steps": 3}},
                  preserve_others=("esd-u",))  # fmt: skip
    both = Entry(
        "hirm+esd-u-keep", ("hirm", "esd-u"), target="empty", overrides={**esd, "hirm": {"steps": 2}},
        preserve_others=("hirm", "esd-u"),
    )  # fmt: skip
    calls, real = [], hirm.api.erase

    def spy(handle, concepts, *, method, **kwargs):
        calls.append(method)
        return real(handle, concepts, method=method, **kwargs)

    monkeypatch.setattr(hirm.api, "erase", spy)
    handle, cpu, root = hirm.load_model(sd_dir), torch.device("cpu"), tmp_path / "work"

    def cell(entry):
        work = root / entry.name / "Cats"
        work.mkdir(parents=True)
        return attacks_benchmark.erase_cell(entry, canvas, handle, "Cats", work, cpu)

    part, part_seconds = cell(alone)
    other_part, _ = cell(other)
    assert calls == ["esd-u", "esd-u"]
    merged, seconds = cell(both)
    assert calls == ["esd-u", "esd-u", "hirm"]  # the ESD part was read, not trained
    for key, value in part.tensors.items():
        assert torch.equal(merged.tensors[key], value), key
    assert not torch.equal(part.tensors[key], other_part.tensors[key])  # the other config: another patch
    record = json.loads((root / both.name / "Cats" / "erase.json").read_text())
    assert record["reused"] == {"esd-u": str(root / "esd-u-keep" / "Cats")}
    assert seconds == record["seconds"] > part_seconds  # the part's recorded cost plus HiRM's own

    # without the matching cell, the part is trained again
    (root / "esd-u-keep" / "Cats" / "erase.json").rename(root / "moved.json")
    again = root / "hirm+esd-u-keep-2" / "Cats"
    again.mkdir(parents=True)
    attacks_benchmark.erase_cell(both, canvas, handle, "Cats", again, cpu)
    assert calls[-2:] == ["hirm", "esd-u"]
