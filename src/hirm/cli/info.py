"""``hirm info``: a patch's metadata and its loss curve (a small text chart), or the list of methods."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hirm.cli.common import AsJson, friendly_errors

#: Eighths of a character cell, empty to full.
BLOCKS = " ▁▂▃▄▅▆▇█"


def columns(values: Sequence[float], width: int) -> list[float]:
    """``values`` in at most ``width`` columns: each column is the mean of its (contiguous) share of values."""
    n = len(values)
    if n <= width:
        return [float(v) for v in values]
    edges = [round(i * n / width) for i in range(width + 1)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]


def text_chart(values: Sequence[float], *, width: int = 60, height: int = 6) -> str:
    """A bar chart of ``values`` in ``height`` lines of block characters, the y range on the left and
    the step range below (e.g. a loss curve per optimizer step)."""
    if not values:
        return "(no values)"
    cols = columns(values, width)
    lo, hi = min(cols), max(cols)
    span = hi - lo
    # bar heights in eighths of a line: the lowest value still shows as a thin bar
    eighths = [1 + round((8 * height - 1) * ((v - lo) / span if span else 1.0)) for v in cols]
    labels = [f"{hi:.4g}", *([""] * (height - 2)), f"{lo:.4g}"] if height > 1 else [f"{hi:.4g}"]
    pad = max(len(label) for label in labels)
    lines = []
    for row, label in enumerate(labels):
        floor = 8 * (height - 1 - row)  # eighths below this line
        cells = "".join(BLOCKS[min(8, max(0, e - floor))] for e in eighths)
        lines.append(f"{label:>{pad}} ┤{cells}")
    axis = f"step 1{'':{max(1, len(cols) - 6 - len(str(len(values))))}}{len(values)}"
    lines.append(f"{'':>{pad}} └{'─' * len(cols)}")
    lines.append(f"{'':>{pad}}  {axis}")
    return "\n".join(lines)


def info_command(
    patch: Path | None = typer.Argument(None, help="Patch file to describe."),
    methods: bool = typer.Option(False, "--methods", help="List the available erasure methods."),
    as_json: AsJson = False,
) -> None:
    """Describe a patch (method, concepts, base model, fingerprints, loss curve, changed tensors) or list methods.

    ``--json`` prints the patch's whole metadata as JSON instead.
    """
    from hirm.core.patch import Patch
    from hirm.core.registry import methods as all_methods

    out = Console()
    if methods:
        table = Table("method", "edits", "description", "defaults follow")
        for spec in all_methods().values():
            table.add_row(spec.name, spec.edits, spec.description, spec.follows)
        out.print(table)
        return
    if patch is None:
        raise ValueError("Give a patch file, or --methods.")
    loaded = Patch.load(patch)
    meta = loaded.metadata
    if as_json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return
    table = Table(show_header=False)
    table.add_row("method", meta.get("method", "?"))
    table.add_row(
        "concepts",
        ", ".join(
            # methods without misdirection targets (UCE, ESD, ...) record none
            f"{c.get('text')} ({c.get('kind')}"
            + (f", {c['target'].get('kind')})" if isinstance(c.get("target"), dict) else ")")
            for c in meta.get("concepts", [])
        ),
    )
    table.add_row("base", json.dumps({k: v for k, v in meta.get("base", {}).items() if k != "fingerprints"}))
    for component, fp in loaded.fingerprints.items():
        table.add_row(f"fingerprint {component}", fp)
    table.add_row("changed", f"{loaded.num_parameters:,} parameters in {len(loaded.tensors)} tensors")
    for key in ("final_loss", "steps", "lr", "precision", "seconds", "hirm_version", "created"):
        if key in meta:
            table.add_row(key, str(meta[key]))
    out.print(table)
    for component, curve in (meta.get("losses") or {}).items():
        out.print(f"loss per optimizer step ({component}):", highlight=False)
        out.print(text_chart(curve), highlight=False)
    change = meta.get("relative_change") or {}  # patches made before hirm recorded it have none
    for name in sorted(loaded.tensors):
        size = change.get(name)
        note = "" if size is None else f"  changed by {size:.3g}x its norm"
        out.print(f"  {name} {tuple(loaded.tensors[name].shape)}{note}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("info")(friendly_errors(info_command))
