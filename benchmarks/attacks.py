"""Every erasure method under every attack on the miniature world: does the erased concept stay erased?

    python benchmarks/attacks.py                                  # 3 styles + 3 objects, all methods x attacks
    python benchmarks/attacks.py --all                            # every world concept
    python benchmarks/attacks.py --methods hirm-adv,uce --attacks embedding --concepts Pastel,Cats

Per method and concept: erase (timed), then the UnlearnCanvas metrics of the erased model on the
world's grid (UA on the concept's prompts, IRA on the other concepts of its domain, CRA with the other
domain's judge), then each attack (``hirm.attacks``) on the grid prompts naming the concept: ASR
(before or after the attack, UnlearnDiffAtk's convention), the attacked prompts' own rate, and the
attack's seconds. Rates are pooled over the concepts of a domain (successes / images) and given with
95 % Wilson intervals and n. Everything is resumable: ``--work`` keeps each finished cell (patch,
metrics, attack runs with their images); re-running the command continues. Ring-A-Bell's searches,
which never see the erasure, are shared between methods (``--work``/cache).

Writes ``--out``/attacks.json (every cell and the pooled rows; ``hirm report`` reads it), attacks.md
(the table, the settings, the cells not run yet), tradeoff.png (worst-case ASR over the attacks vs IRA,
one point per method and domain; the issue's goal region ASR <= 5 %, IRA >= 90 % shaded) and
sheets/<method>.png (before / after images of each attack). ``--table-only`` writes them from the cells
already finished, running nothing.

Methods, named as in ``hirm compare`` (see ``ENTRIES``): hirm-s-tuned (HiRM-S at the world-tuned
settings: final hidden state, 100 steps, lr 5e-4), hirm-r-rms (HiRM-R's direction at the read-out's
RMS, same settings), uce (the authors' original script, siblings preserved), hirm-s-tuned+uce,
diffquickfix (the authors' notebook), esd-x-100 (ESD-x at 100 of its 1000 steps), advunlearn-cpu
(``AdvUnlearnConfig.cpu()``), hirm-adv (hardened HiRM: world-tuned HiRM-S per round, 4 rounds).
Attacks at their CPU-budget defaults: embedding (300 steps), unlearndiffatk (k 3, 5 timesteps x 20
iterations), ringabell (64 x 60).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hirm.attacks import canvas_target, run_attack, wilson_interval
from hirm.attacks.run import rate
from hirm.core.advunlearn import AdvUnlearnConfig
from hirm.core.hirm_hardened import WORLD_HIRM
from hirm.evaluation.canvas import CanvasEvaluator, CanvasSettings, make_cache
from hirm.evaluation.canvas_grid import Canvas
from hirm.evaluation.common import dump_json, now_iso
from hirm.evaluation.compare import ENTRIES as COMPARE_ENTRIES
from hirm.evaluation.compare import WORLD_TUNED_HIRM, Entry, make_erase
from hirm.io import atomic_path, write_atomic

#: The table's methods (``hirm.evaluation.compare.Entry``: methods merged, target, config overrides),
#: named and configured as in ``hirm compare`` wherever the comparison has the entry, so that a row of
#: this table and a row of results/compare describe the same erasure. HiRM runs at the world-tuned
#: settings (reference HiRM barely erases on the world: attacking a concept that was never erased says
#: nothing), HiRM-R with its direction at the read-out's RMS (at the paper's scale with the world-tuned
#: steps and lr it wrecks the world: Pastel IRA 50 %, CRA 21 %).
ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        COMPARE_ENTRIES["hirm-s-tuned"],
        COMPARE_ENTRIES["hirm-r-rms"],
        COMPARE_ENTRIES["uce"],
        Entry(
            "hirm-s-tuned+uce",
            ("hirm", "uce"),
            target="super",
            overrides={"hirm": WORLD_TUNED_HIRM},
            preserve_others=("uce",),
        ),
        COMPARE_ENTRIES["diffquickfix"],
        # ESD at a tenth of its published 1000 steps (12-16 min per concept on the 2-core CPU otherwise)
        Entry("esd-x-100", ("esd-x",), overrides={"esd-x": {"steps": 100}}),
        Entry("advunlearn-cpu", ("advunlearn",), overrides={"advunlearn": asdict(AdvUnlearnConfig.cpu())}),
        Entry(
            "hirm-adv",
            ("hirm-adv",),
            target="super",
            overrides={"hirm-adv": {"hirm": WORLD_HIRM, "rounds": 4}},
        ),
    )
}
ATTACKS = ("embedding", "unlearndiffatk", "ringabell")
#: Issue 14's goal for an attack-hardened erasure.
GOAL = {"ASR": 0.05, "IRA": 0.90, "CRA": 0.95}
DEFAULT_CONCEPTS = ("Pastel", "Neon_Lines", "Rust", "Cats", "Horses", "Trees")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(ENTRIES), help="comma-separated methods (default: all)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated attacks (default: all)")
    parser.add_argument(
        "--concepts", default=",".join(DEFAULT_CONCEPTS), help="comma-separated world concepts"
    )
    parser.add_argument("--all", action="store_true", help="every world style and object")
    parser.add_argument("--seeds", default="188,288", help="attack seeds per attacked prompt")
    parser.add_argument("--canvas-seeds", default="188", help="seeds of the UA/IRA/CRA grid")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="seconds per attack run (then resumable)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("runs/attacks-work"),
        help="resumable work directory (patches, images: large; not for results/)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/attacks"), help="where the table goes")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument(
        "--precision",
        default="bf16",
        choices=("fp32", "bf16"),
        help="sampling precision of the UA/IRA/CRA grid (bf16 autocast, as the comparison runs; attacks keep their own)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: write the table from the cells already finished in --work (the rest listed as not run)",
    )
    return parser.parse_args(argv)


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown {what} {unknown}; choose from {list(known)}")
    return names


def erase_cell(entry: Entry, canvas: Canvas, handle: Any, concept: str, work: Path, device: torch.device):
    """The cell's patch (made once, kept in ``work``) and the erase seconds."""
    from hirm.core.patch import Patch

    path, meta = work / "patch.safetensors", work / "erase.json"
    if path.is_file() and meta.is_file():
        return Patch.load(path), json.loads(meta.read_text())["seconds"]
    start = time.perf_counter()
    patch = make_erase(entry, canvas, device)(handle, concept, canvas.domain(concept))
    seconds = time.perf_counter() - start
    patch.save(path, overwrite=True)
    write_atomic(meta, lambda tmp: tmp.write_text(json.dumps({"seconds": seconds})), overwrite=True)
    return patch, seconds


def canvas_cell(evaluator: CanvasEvaluator, concept: str, patch: Any, work: Path) -> dict[str, Any]:
    """UA / IRA / CRA of the erased model on the grid (counts kept for pooling)."""
    path = work / "canvas.json"
    if path.is_file():
        return json.loads(path.read_text())
    result, _ = evaluator.evaluate(concept, patches=[patch], baseline=False)
    grid = result["metrics"]["erased"]["grid"]
    record = {
        "UA": grid["UA"], "IRA": grid["IRA"], "CRA": grid["CRA"],
        "n_target": grid["n_target"], "n_in_domain": grid["n_in_domain"], "n_cross": grid["n_cross"],
    }  # fmt: skip
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(record)), overwrite=True)
    return record


def attack_cell(
    name: str, concept: str, canvas: Canvas, patch: Any, work: Path, args, pipe
) -> dict[str, Any]:
    seeds = tuple(int(s) for s in args.seeds.split(","))
    result = run_attack(
        name, "minicanvas", canvas_target(canvas, concept, seeds=seeds), out=work / name, patches=[patch],
        pipe=pipe, time_limit=args.time_limit, device=args.device, progress=not args.quiet,
        cache_dir=args.work / "cache",
    )  # fmt: skip
    return run_record(result, work / name)


def run_record(result: Mapping[str, Any], run: Path) -> dict[str, Any]:
    """What the table keeps of one attack run's result (``run``: its directory)."""
    keep = ("asr", "before", "after", "complete")
    return {
        **{k: result[k] for k in keep},
        "seconds": result["seconds"]["total"],
        "grid": str((run / "grid.png").resolve()),
    }


def pooled(cells: Sequence[Mapping[str, Any]], attacks: Sequence[str]) -> dict[str, Any]:
    """Rates pooled over the concepts of one (method, domain): successes / images, Wilson 95 %."""

    def pool(metric: str, n_key: str) -> dict[str, Any]:
        k = n = 0
        for c in cells:
            value, count = c["canvas"][metric], c["canvas"][n_key]
            if value is not None:
                k, n = k + round(value * count), n + count
        ci = wilson_interval(k, n)
        return {"k": k, "n": n, "rate": k / n if n else None, "ci95": list(ci) if ci else None}

    row: dict[str, Any] = {
        "UA": pool("UA", "n_target"),
        "IRA": pool("IRA", "n_in_domain"),
        "CRA": pool("CRA", "n_cross"),
        "erase_seconds": sum(c["erase_seconds"] for c in cells) / len(cells),
        "concepts": [c["concept"] for c in cells],
        "attacks": {},
    }
    for name in attacks:
        runs = [c["attacks"][name] for c in cells if name in c["attacks"]]
        if not runs:
            continue
        flags = {key: [] for key in ("asr", "after")}
        for run in runs:
            for key in flags:
                flags[key] += [True] * run[key]["k"] + [False] * (run[key]["n"] - run[key]["k"])
        row["attacks"][name] = {
            "asr": rate(flags["asr"]),
            "after": rate(flags["after"]),
            "seconds": sum(r["seconds"] for r in runs) / len(runs),
            "complete": all(r["complete"] for r in runs),
        }
    return row


def _pct(stats: Mapping[str, Any] | None) -> str:
    if not stats or stats.get("rate") is None:
        return "–"
    lo, hi = stats["ci95"]
    return f"{100 * stats['rate']:.1f} [{100 * lo:.0f}–{100 * hi:.0f}] (n={stats['n']})"


def describe_entry(entry: Entry) -> str:
    """``name = method(s)``, the HiRM target where a HiRM part has one, and the settings changed."""
    target = f", target {entry.target}" if any(m.startswith("hirm") for m in entry.methods) else ""
    changed = f", {dict(entry.overrides)}" if entry.overrides else ""
    return f"{entry.name} = {'+'.join(entry.methods)}{target}{changed}"


def markdown(rows: Mapping[str, Mapping[str, Any]], cells: Sequence[Mapping[str, Any]], args, attacks) -> str:
    header = [
        "method",
        "domain",
        "concepts",
        "UA",
        "IRA",
        "CRA",
        *[f"ASR {a}" for a in attacks],
        "attack s (mean)",
        "erase s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in rows.items():
        method, domain = key.split("|")
        seconds = [row["attacks"][a]["seconds"] for a in attacks if a in row["attacks"]]
        partial = any(not row["attacks"][a]["complete"] for a in attacks if a in row["attacks"])
        cells_ = [
            method, domain, str(len(row["concepts"])), _pct(row["UA"]), _pct(row["IRA"]), _pct(row["CRA"]),
            *[_pct(row["attacks"].get(a, {}).get("asr")) for a in attacks],
            f"{sum(seconds) / len(seconds):.0f}" if seconds else "–", f"{row['erase_seconds']:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells_) + " |" + (" (partial)" if partial else ""))
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    methods = list(dict.fromkeys(c["method"] for c in cells))
    links = [f"### {m}\n\n![{m}: before / after each attack](sheets/{m}.png)\n" for m in methods]
    return "\n".join(
        [
            "# Attacks on erased concepts (MiniCanvas)",
            "",
            "Rates in % pooled over the concepts of each domain, [95 % Wilson interval], n = images. UA = 1 - the",
            "domain judge's accuracy on the concept's grid prompts; IRA / CRA as in UnlearnCanvas. ASR = share of",
            "attacked prompts whose image the judge recognises as the erased concept, before or after the attack.",
            "Goal of issue 14: ASR <= 5 % under every attack with IRA >= 90 % and CRA >= 95 %.",
            "",
            *lines,
            "",
            "![ASR vs IRA](tradeoff.png)",
            "",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- attack seeds {args.seeds}; grid seeds {args.canvas_seeds}, grid precision {args.precision};"
            f" time limit per attack {args.time_limit}",
            "- methods: "
            + "; ".join(describe_entry(ENTRIES[m]) for m in dict.fromkeys(c["method"] for c in cells)),
            f"- machine: {machine}; date {now_iso()}",
            "",
            "## The attacked images",
            "",
            f"Per method, two rows per (concept, attack): the first {SHEET_ITEMS} attacked prompts before the attack",
            "and after it, at the world's 32 px. Each run's full before / after grid and its found tokens or",
            f"embedding stay in the work directory (`{args.work}/<method>/<concept>/<attack>/`).",
            "",
            *links,
        ]
    )


#: Attacked prompts per (concept, attack) shown in a method's contact sheet.
SHEET_ITEMS = 8


def contact_sheet(cells: Sequence[Mapping[str, Any]], method: str, work: Path) -> Any:
    """One picture per method: for each of its (concept, attack) runs a "before" and an "after" row of the
    first ``SHEET_ITEMS`` attacked prompts at native resolution (the per-run grid.png files are 3x
    enlarged and ~160 kB each, too heavy to ship ~150 of them in ``results/``)."""
    import numpy as np
    from PIL import Image

    from hirm.generation import labelled_grid

    rows = []
    for cell in cells:
        if cell["method"] != method:
            continue
        for attack in cell["attacks"]:
            run = work / method / cell["concept"] / attack
            items = json.loads((run / "result.json").read_text())["items"][:SHEET_ITEMS]
            for stage in ("before", "after"):
                images = [
                    np.asarray(Image.open(run / item["images"][stage]).convert("RGB"))
                    if stage in item.get("images", {})
                    else np.full((32, 32, 3), 255, np.uint8)
                    for item in items
                ]
                images += [np.full_like(images[0], 255)] * (SHEET_ITEMS - len(images))
                label = f"{cell['concept']} {attack} {'before' if stage == 'before' else 'after'}"
                rows.append((label, np.stack(images)))
    if not rows:
        return None
    return labelled_grid(
        rows, [str(i) for i in range(SHEET_ITEMS)], min_cell=32, label_width=230, font_size=12
    )


def tradeoff_plot(rows: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Worst-case ASR over the attacks (y) vs IRA (x), one point per (method, domain).

    Drawn with PIL (already a dependency) rather than matplotlib, which the package does not otherwise
    need: a scatter of a dozen labelled points on a 640 x 480 canvas, the goal region shaded."""
    from PIL import Image, ImageDraw

    width, height, margin = 640, 480, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def xy(ira: float, asr: float) -> tuple[float, float]:
        return margin + ira * (width - 2 * margin), height - margin - asr * (height - 2 * margin)

    (gx0, gy0), (gx1, gy1) = xy(0.9, 0.05), xy(1.0, 0.0)
    draw.rectangle([gx0, gy0, gx1, gy1], fill=(220, 245, 220))
    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, _ = xy(v, 0)
        _, y = xy(0, v)
        draw.text((x - 8, height - margin + 6), f"{100 * v:.0f}", fill="black")
        draw.text((margin - 28, y - 6), f"{100 * v:.0f}", fill="black")
    draw.text((width / 2 - 60, height - 25), "IRA (%)  (goal >= 90)", fill="black")
    draw.text((8, 20), "worst-case ASR over the attacks (%)  (goal <= 5)", fill="black")
    colors = {"style": (78, 121, 167), "object": (225, 87, 89)}
    taken: list[tuple[float, float, float, float]] = []  # label boxes already drawn
    for key, row in rows.items():
        method, domain = key.split("|")
        asrs = [a["asr"]["rate"] for a in row["attacks"].values() if a["asr"]["rate"] is not None]
        if row["IRA"]["rate"] is None or not asrs:
            continue
        x, y = xy(row["IRA"]["rate"], max(asrs))
        color = colors.get(domain, (0, 0, 0))
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        label = f"{method} ({domain[0]})"
        w = draw.textlength(label)
        # right of the point, or left of it near the right edge; moved down past labels already drawn
        lx, ly = (x + 6, y - 6) if x + 6 + w < width - 4 else (x - 6 - w, y - 6)
        while any(lx < b[2] and b[0] < lx + w and ly < b[3] and b[1] < ly + 12 for b in taken):
            ly += 12
        taken.append((lx, ly, lx + w, ly + 12))
        draw.text((lx, ly), label, fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"), overwrite=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import hirm
    import hirm.world as world

    methods = _names(args.methods, list(ENTRIES), "methods")
    attacks = _names(args.attacks, list(ATTACKS), "attacks")
    canvas = Canvas.from_world()
    concepts = (
        list(world.STYLES + world.OBJECTS)
        if args.all
        else [canvas.canonical(c) for c in args.concepts.split(",")]
    )
    device = torch.device(args.device)
    if not args.table_only:
        handle = hirm.load_model("minicanvas", device=device)
        pipe = handle.pipeline()
        settings = CanvasSettings.for_world(
            seeds=tuple(int(s) for s in args.canvas_seeds.split(",")),
            heldout_templates=(),
            super_templates=(),
            precision=args.precision,
        )
        evaluator = CanvasEvaluator(
            pipe, canvas=canvas, judges=world.load_judges(device=device), settings=settings,
            cache=make_cache(None, handle.path, True), progress=not args.quiet,
        )  # fmt: skip
    cells = []
    for method in methods:
        for concept in concepts:
            work = args.work / method / concept
            if args.table_only:
                cell = finished_cell(work, method, concept, canvas.domain(concept), attacks)
                if cell is not None:
                    cells.append(cell)
                continue
            work.mkdir(parents=True, exist_ok=True)
            patch, erase_seconds = erase_cell(ENTRIES[method], canvas, handle, concept, work, device)
            cell = {
                "method": method, "concept": concept, "domain": canvas.domain(concept),
                "erase_seconds": erase_seconds, "canvas": canvas_cell(evaluator, concept, patch, work),
                "attacks": {a: attack_cell(a, concept, canvas, patch, work, args, pipe) for a in attacks},
            }  # fmt: skip
            cells.append(cell)
            print(
                f"{method} {concept}: "
                + ", ".join(f"{a} ASR {_pct(r['asr'])}" for a, r in cell["attacks"].items())
            )
    write_table(cells, methods, concepts, attacks, args)


def finished_cell(work: Path, method: str, concept: str, domain: str, attacks: Sequence[str]):
    """A cell read back from ``work`` when its erase, metrics and every attack have a result (finished or
    stopped by a time limit); ``None`` otherwise (``--table-only`` leaves it out)."""
    results = {a: work / a / "result.json" for a in attacks}
    if not ((work / "erase.json").is_file() and (work / "canvas.json").is_file()):
        return None
    if not all(path.is_file() for path in results.values()):
        return None
    runs = {name: run_record(json.loads(path.read_text()), work / name) for name, path in results.items()}
    return {
        "method": method, "concept": concept, "domain": domain,
        "erase_seconds": json.loads((work / "erase.json").read_text())["seconds"],
        "canvas": json.loads((work / "canvas.json").read_text()), "attacks": runs,
    }  # fmt: skip


def write_table(cells, methods, concepts, attacks, args) -> None:
    """attacks.json (kind ``attack-table``, read by ``hirm report``), attacks.md, tradeoff.png, sheets/."""
    rows = {}
    for method in methods:
        for domain in ("style", "object"):
            chosen = [c for c in cells if c["method"] == method and c["domain"] == domain]
            if chosen:
                rows[f"{method}|{domain}"] = pooled(chosen, attacks)
    missing = [f"{m}/{c}" for m in methods for c in concepts if not any(
        x["method"] == m and x["concept"] == c for x in cells)]  # fmt: skip
    complete = not missing and all(r["complete"] for c in cells for r in c["attacks"].values())
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    settings = {
        "command": f"python {' '.join(sys.argv)}",
        "attack seeds": args.seeds,
        "grid seeds": args.canvas_seeds,
        "grid precision": args.precision,
        "time limit per attack": args.time_limit,
        "machine": machine,
        "cells missing": ", ".join(missing) or "none",
    }
    report = {
        "kind": "attack-table", "date": now_iso(), "argv": sys.argv, "complete": complete,
        "attacks": list(attacks), "goal": GOAL, "settings": settings, "rows": rows, "cells": cells,
    }  # fmt: skip
    text = markdown(rows, cells, args, attacks)
    if missing:
        text += f"\n\nNot run yet ({len(missing)} cells): {', '.join(missing)}."
    # The whole directory at once, marked as hirm's: a later run (resumed, or --table-only) replaces it
    # as a whole, and never a directory hirm did not write.
    with atomic_path(args.out, overwrite=True, directory=True, kind="attack-table") as tmp:
        (tmp / "attacks.json").write_text(dump_json(report))
        (tmp / "attacks.md").write_text(text + "\n")
        tradeoff_plot(rows, tmp / "tradeoff.png")
        for method in methods:
            sheet = contact_sheet(cells, method, args.work)
            if sheet is not None:
                (tmp / "sheets").mkdir(exist_ok=True)
                # a 256-colour palette keeps a sheet ~3x smaller than RGB, with no visible change at 32 px
                sheet.quantize(256).save(tmp / "sheets" / f"{method}.png", format="PNG", optimize=True)
    print(f"table -> {args.out / 'attacks.md'}; plot -> {args.out / 'tradeoff.png'}")


if __name__ == "__main__":
    main()
