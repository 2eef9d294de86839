"""Every attack table at once: which (method, domain) comes closest to issue 14's goal?

The attack benchmark (``benchmarks/attacks.py``) writes one table per study (``results/attacks``,
``results/attacks_kv_proj``, ...), each with its own plot. This script reads the cells of all of them,
pools each (method, domain) over the concepts asked (default: the six of the issue's table) exactly as a
table does (successes / images, 95 % Wilson intervals, n), and checks the goal (ASR <= 5 % under every
attack with IRA >= 90 % and CRA >= 95 %) on the point estimates and on the intervals (the worst attack's
upper bound, IRA's and CRA's lower bounds). It runs nothing and reads no image::

    python benchmarks/attacks_frontier.py --out results/attacks_frontier

Only tables that ran every attack (``embedding``, ``unlearndiffatk``, ``ringabell``) under the
benchmark's default settings on today's world are read; any other is named and left out, never mixed
in. A cell held by two tables counts once; when their numbers differ (a cell re-run elsewhere) the first
table given keeps it and the frontier says so. A cell whose method's configuration has changed since it
ran is left out, as a table would.

Writes ``--out``/frontier.json, frontier.md (rows sorted by how many of the goal's three parts they meet,
then by worst-case ASR; the cells that meet the goal on their own), frontier_ira.png and
frontier_cra.png (worst-case ASR vs IRA and vs CRA, one numbered point per row, the goal region shaded).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hirm.evaluation.common import dump_json, now_iso
from hirm.io import OutputExistsError, atomic_path, check_writable

# benchmarks/ is a folder of scripts, not a package: its table's code is loaded from the file
_SPEC = importlib.util.spec_from_file_location("benchmark_attacks", Path(__file__).with_name("attacks.py"))
table = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(table)

DOMAINS = ("style", "object")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tables",
        type=Path,
        nargs="*",
        help="attack table directories, first wins a conflict (default: results/attacks*, sorted)",
    )
    parser.add_argument(
        "--concepts",
        default=",".join(table.DEFAULT_CONCEPTS),
        help="comma-separated world concepts each row pools (default: the issue table's six)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/attacks_frontier"), help="where it goes")
    return parser.parse_args(argv)


def same_cell(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """The same numbers: grid metrics and each attack's successes / prompts."""
    counts = {name: (run["asr"]["k"], run["asr"]["n"]) for name, run in a["attacks"].items()}
    other = {name: (run["asr"]["k"], run["asr"]["n"]) for name, run in b["attacks"].items()}
    return a["canvas"] == b["canvas"] and counts == other


def read_tables(paths: Sequence[Path], expected: Mapping[str, Any]):
    """The cells of every table that ran all attacks under ``expected`` settings, each (method, concept)
    once; with the tables left out and the conflicting duplicates, as lines of text."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    source: dict[tuple[str, str], str] = {}
    skipped, conflicts = [], []
    for path in paths:
        file = path / "attacks.json"
        if not file.is_file():
            raise SystemExit(
                f"error: {path} holds no attacks.json; name a directory the attack benchmark wrote"
            )
        data = json.loads(file.read_text())
        if data.get("kind") != "attack-table":
            raise SystemExit(
                f"error: {file} is not an attack table; name a directory the attack benchmark wrote"
            )
        if list(data.get("attacks", [])) != list(table.ATTACKS):
            skipped.append(f"{path}: ran {', '.join(data.get('attacks', []))} only")
            continue
        differ = [k for k, v in expected.items() if data.get("settings", {}).get(k) != v]
        if differ:
            skipped.append(f"{path}: other settings ({', '.join(differ)})")
            continue
        for cell in data["cells"]:
            key = (cell["method"], cell["concept"])
            entry = table.ENTRIES.get(cell["method"])
            if entry is None or cell.get("entry") != table.describe_entry(entry):
                skipped.append(f"{path}: {key[0]}/{key[1]} (the method's configuration changed)")
            elif key not in cells:
                cells[key], source[key] = cell, str(path)
            elif not same_cell(cells[key], cell):
                conflicts.append(f"{key[0]}/{key[1]}: {source[key]} kept, {path} differs")
    return cells, source, skipped, conflicts


def worst(row: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The attack with the highest ASR in a row, and its rate."""
    return max(row["attacks"].items(), key=lambda item: item[1]["asr"]["rate"])


def goal_checks(row: Mapping[str, Any]) -> dict[str, dict[str, bool]]:
    """Each part of the goal, on the point estimate and on the 95 % interval."""
    asr = worst(row)[1]["asr"]
    goal = table.GOAL
    # every attack's upper end: with unequal n the worst rate need not have the widest interval
    upper = max(run["asr"]["ci95"][1] for run in row["attacks"].values())
    return {
        "ASR": {"point": asr["rate"] <= goal["ASR"], "interval": upper <= goal["ASR"]},
        "IRA": {"point": row["IRA"]["rate"] >= goal["IRA"], "interval": row["IRA"]["ci95"][0] >= goal["IRA"]},
        "CRA": {"point": row["CRA"]["rate"] >= goal["CRA"], "interval": row["CRA"]["ci95"][0] >= goal["CRA"]},
    }


def frontier(cells: Mapping[tuple[str, str], Mapping[str, Any]], concepts: Sequence[str], domains):
    """Pooled rows by (method, domain) over ``concepts`` (``domains``: each concept's domain), sorted."""
    rows = {}
    for method in dict.fromkeys(m for m, _ in cells):
        for domain in DOMAINS:
            wanted = [c for c in concepts if domains[c] == domain]
            chosen = [cells[method, c] for c in wanted if (method, c) in cells]
            if not chosen:
                continue
            row = table.pooled(chosen, table.ATTACKS)
            row["of"] = len(wanted)
            row["worst attack"] = worst(row)[0]
            row["goal"] = goal_checks(row)
            rows[f"{method}|{domain}"] = row

    def order(item):
        row = item[1]
        met = sum(check["point"] for check in row["goal"].values())
        return (-met, worst(row)[1]["asr"]["rate"], item[0])

    return dict(sorted(rows.items(), key=order))


def markdown(rows, cells, source, concepts, skipped, conflicts, numbers) -> str:
    attacks = table.ATTACKS
    header = ["#", "method", "domain", "concepts", "UA", "IRA", "CRA", *[f"ASR {a}" for a in attacks], "goal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in rows.items():
        method, domain = key.split("|")
        marks = ", ".join(
            f"{part} {'met' if c['interval'] else 'point only' if c['point'] else 'missed'}"
            for part, c in row["goal"].items()
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    numbers[key],
                    f"`{method}`",
                    domain,
                    f"{len(row['concepts'])} of {row['of']}",
                    table._pct(row["UA"]),
                    table._pct(row["IRA"]),
                    table._pct(row["CRA"]),
                    *[table._pct(row["attacks"][a]["asr"]) for a in attacks],
                    marks,
                ]
            )  # fmt: skip
            + " |"
        )
    held = []
    for (method, concept), cell in cells.items():
        if concept not in concepts:
            continue
        grid, asrs = cell["canvas"], [run["asr"] for run in cell["attacks"].values()]
        if (
            max(a["k"] / a["n"] for a in asrs) <= table.GOAL["ASR"]
            and grid["IRA"] >= table.GOAL["IRA"]
            and grid["CRA"] >= table.GOAL["CRA"]
        ):
            held.append(
                f"- `{method}` on {concept}: ASR "
                + " / ".join(f"{100 * a['k'] / a['n']:.1f} % (n={a['n']})" for a in asrs)
                + f", IRA {100 * grid['IRA']:.1f} % (n={grid['n_in_domain']}), CRA {100 * grid['CRA']:.1f} %"
                + f" (n={grid['n_cross']}); {source[method, concept]}"
            )
    return "\n".join([
        "# Every attack table against issue 14's goal (MiniCanvas)",
        "",
        "Rates in % pooled over the concepts each row covers, [95 % Wilson interval], n = images (prompts for",
        "ASR); ASR as in the tables (before or after the attack). Goal: ASR <= 5 % under every attack with",
        "IRA >= 90 % and CRA >= 95 %; `met`: on the 95 % interval, `point only`: on the point estimate. Rows",
        "that cover fewer of the domain's concepts are not comparable with full rows on the same footing.",
        "",
        *lines,
        "",
        "![worst-case ASR vs IRA](frontier_ira.png) ![worst-case ASR vs CRA](frontier_cra.png)",
        "",
        "Points: a row's worst-case ASR against its IRA (left) and CRA (right), numbered as in the # column;",
        "blue styles, red objects; the goal region shaded.",
        "",
        "Cells (one method, one concept) that meet the goal on their point estimates:",
        "",
        *(held or ["- none"]),
        "",
        f"- command: `python {' '.join(sys.argv)}`; written {now_iso()}",
        f"- concepts: {', '.join(concepts)}",
        f"- tables read: {', '.join(sorted(set(source.values())))}",
        f"- left out: {'; '.join(skipped) or 'none'}",
        f"- cells in two tables with different numbers: {'; '.join(conflicts) or 'none'}",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from hirm.evaluation.canvas_grid import Canvas

    canvas = Canvas.from_world()
    try:
        concepts = [canvas.canonical(c) for c in args.concepts.split(",")]
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: --concepts: {err}") from None
    paths = args.tables or sorted(p.parent for p in Path("results").glob("attacks*/attacks.json"))
    try:
        check_writable(args.out, overwrite=True, directory=True)
    except OutputExistsError as err:
        raise SystemExit(f"error: {err}") from None
    expected = table.table_settings(table.parse_args([]), table.ATTACKS)
    cells, source, skipped, conflicts = read_tables(paths, expected)
    rows = frontier(cells, concepts, {c: canvas.domain(c) for c in concepts})
    numbers = {key: str(i + 1) for i, key in enumerate(rows)}
    report = {
        "kind": "attack-frontier", "date": now_iso(), "argv": sys.argv, "goal": table.GOAL,
        "concepts": concepts, "tables": [str(p) for p in paths], "left out": skipped,
        "conflicts": conflicts, "rows": rows,
    }  # fmt: skip
    with atomic_path(args.out, overwrite=True, directory=True, kind="attack-frontier") as tmp:
        (tmp / "frontier.json").write_text(dump_json(report))
        (tmp / "frontier.md").write_text(
            markdown(rows, cells, source, concepts, skipped, conflicts, numbers) + "\n"
        )
        for metric in ("IRA", "CRA"):
            table.tradeoff_plot(
                rows, tmp / f"frontier_{metric.lower()}.png", x_metric=metric,
                labels=numbers,  # a dozen method names would bury the points; frontier.md's # column names them
            )  # fmt: skip
    print(f"frontier -> {args.out / 'frontier.md'}")


if __name__ == "__main__":
    main()
