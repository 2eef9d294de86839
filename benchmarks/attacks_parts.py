"""What each part of a merged attack-table cell costs the world, judged alone.

A cell of ``benchmarks/attacks.py`` whose entry merges several methods (e.g. HiRM + KV-Proj + ESD-u) keeps
one patch; :func:`hirm.core.patch.split_patch` gives back the patches it was merged from, exactly as
made. Each is judged alone on the UnlearnCanvas grid at the attack table's grid seed, next to the whole
and the original model (the original's images come from the cache):

    python benchmarks/attacks_parts.py --work WORK --methods METHOD --concepts Birds,Horses --out DIR

Per (method, concept): UA / IRA / CRA with n and 95 % Wilson intervals for the original, every part and
all parts; and the ``--worst`` kept concepts of the concept's domain whose accuracy falls most under all
parts, with each part's accuracy on them (n images each). Generates only the parts' grids (a minute a
part on a 2-core CPU at the world's 32 px); trains nothing. Sampling is in fp32 (the world's evaluation
default); the attack table's grid is in bf16 where the CPU has it natively, so the whole's figures can
differ from the table's by bf16 rounding (up to 0.8 points of IRA on the five objects measured).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hirm.evaluation.metrics import wilson_interval

METRICS = ("UA", "IRA", "CRA")
#: The attack table's grid seed (``benchmarks/attacks.py --grid-seeds`` default).
GRID_SEEDS = (188,)
#: ``metrics['erased']['grid']`` field holding each metric's n.
N_FIELD = {"UA": "n_target", "IRA": "n_in_domain", "CRA": "n_cross"}


def judged(result: Mapping[str, Any], side: str) -> dict[str, Any]:
    """UA / IRA / CRA of ``side`` (``original`` or ``erased``) of an ``evaluate_canvas`` result, each with
    its n and 95 % interval, and the per-concept accuracies of both domains."""
    grid = result["metrics"][side]["grid"]
    out: dict[str, Any] = {}
    for metric in METRICS:
        n = int(grid[N_FIELD[metric]])
        k = round(float(grid[metric]) * n)
        out[metric] = {"k": k, "n": n, "value": k / n if n else None, "ci95": wilson_interval(k, n)}
    out["per_concept"] = result["per_concept"][side]
    return out


def worst_kept(rows: Mapping[str, Any], concept: str, domain: str, count: int) -> list[str]:
    """The kept concepts of ``domain`` whose accuracy falls most from the original to all parts."""
    before, after = rows["original"]["per_concept"][domain], rows["all parts"]["per_concept"][domain]
    kept = [c for c in before if c != concept]
    return sorted(kept, key=lambda c: (after[c] - before[c], c))[:count]


def run_cell(cell: Path, concept: str, seeds: Sequence[int], device: str, worst: int) -> dict[str, Any]:
    """The rows of one cell: the original, all parts, each part alone."""
    from hirm.core.patch import Patch, split_patch
    from hirm.evaluation.canvas import CanvasSettings, evaluate_canvas
    from hirm.evaluation.canvas_grid import Canvas

    patch = Patch.load(cell / "patch.safetensors")
    parts = split_patch(patch)
    settings = CanvasSettings.for_world(seeds=tuple(seeds), heldout_templates=(), super_templates=())
    rows: dict[str, Any] = {}
    for label, patches in (
        ("all parts", [patch]),
        *((f"part {i + 1}: {p.metadata['method']}", [p]) for i, p in enumerate(parts)),
    ):
        # the original model is judged once, with the first row
        result = evaluate_canvas(
            "minicanvas", target=concept, patches=patches, settings=settings, device=device,
            baseline=not rows, progress=False,
        )  # fmt: skip
        if not rows:
            rows["original"] = judged(result, "original")
        rows[label] = judged(result, "erased")
    domain = Canvas.from_world().domain(concept)
    names = worst_kept(rows, concept, domain, worst)
    per_image = len(seeds) * len(rows["original"]["per_concept"]["style" if domain == "object" else "object"])
    return {
        "concept": concept,
        "domain": domain,
        "rows": rows,
        "worst": {name: {row: r["per_concept"][domain][name] for row, r in rows.items()} for name in names},
        "n_per_concept": per_image,
    }


def _cell(metric: Mapping[str, Any]) -> str:
    lo, hi = metric["ci95"]
    return f"{100 * metric['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={metric['n']})"


def markdown(report: Mapping[str, Any]) -> str:
    lines = [
        "# Each part of a merged attack cell, judged alone (MiniCanvas)",
        "",
        f"`{report['command']}`",
        "",
        f"Grid seeds {report['seeds']}; % with 95 % Wilson intervals, n images; {report['machine']}.",
        "",
        "| method | concept | row | UA | IRA | CRA |",
        "|---|---|---|---|---|---|",
    ]
    for cell in report["cells"]:
        for row, r in cell["rows"].items():
            metrics = " | ".join(_cell(r[m]) for m in METRICS)
            lines.append(f"| {cell['method']} | {cell['concept']} | {row} | {metrics} |")
    lines += [
        "",
        "Kept concepts whose accuracy falls most under all parts (accuracy per row, n images each):",
        "",
    ]
    for cell in report["cells"]:
        rows = list(cell["rows"])
        lines.append(f"- {cell['method']}, {cell['concept']} (n {cell['n_per_concept']} each):")
        for name, accs in cell["worst"].items():
            lines.append(f"  - {name}: " + ", ".join(f"{row} {100 * accs[row]:.0f} %" for row in rows))
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="Work directory of benchmarks/attacks.py.")
    parser.add_argument("--methods", required=True, help="Comma-separated merged entries (cells to split).")
    parser.add_argument("--concepts", required=True, help="Comma-separated concepts.")
    parser.add_argument("--out", type=Path, required=True, help="Directory for parts.json / parts.md.")
    parser.add_argument("--seeds", default=",".join(map(str, GRID_SEEDS)), help="Grid seeds (default 188).")
    parser.add_argument("--worst", type=int, default=3, help="Kept concepts listed per cell (default 3).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier output of this script.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from hirm.evaluation.canvas_grid import Canvas
    from hirm.evaluation.common import dump_json, machine_text, now_iso
    from hirm.io import OutputExistsError, atomic_path, check_writable

    args = parse_args(argv)
    canvas = Canvas.from_world()
    try:
        concepts = [canvas.canonical(c) for c in args.concepts.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        check_writable(args.out, overwrite=args.overwrite, directory=True)
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    except OutputExistsError as err:
        raise SystemExit(f"error: {err}") from None
    cells = []
    for method in args.methods.split(","):
        for concept in concepts:
            cell = args.work / method / concept
            if not (cell / "patch.safetensors").is_file():
                raise SystemExit(
                    f"No cell {cell}; run benchmarks/attacks.py --methods {method} --concepts {concept} first."
                )
            try:
                cells.append({"method": method, **run_cell(cell, concept, seeds, args.device, args.worst)})
            except ValueError as err:
                raise SystemExit(f"error: {cell}: {err}") from None
    command = " ".join(["python benchmarks/attacks_parts.py", *(sys.argv[1:] if argv is None else argv)])
    report = {
        "kind": "attack-parts", "date": now_iso(), "command": command, "seeds": seeds,
        "machine": machine_text(), "cells": cells,
    }  # fmt: skip
    with atomic_path(args.out, overwrite=args.overwrite, directory=True, kind="attack-parts") as tmp:
        (tmp / "parts.json").write_text(dump_json(report))
        (tmp / "parts.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
