"""``hirm info``: a patch's metadata, or the list of methods."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hirm.cli.common import friendly_errors


def info_command(
    patch: Path | None = typer.Argument(None, help="Patch file to describe."),
    methods: bool = typer.Option(False, "--methods", help="List the available erasure methods."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw metadata as JSON."),
) -> None:
    """Describe a patch (method, concepts, base model, fingerprints, changed tensors) or list methods."""
    from hirm.core.patch import Patch
    from hirm.core.registry import methods as all_methods

    out = Console()
    if methods:
        table = Table("method", "edits", "description")
        for spec in all_methods().values():
            table.add_row(spec.name, spec.edits, spec.description)
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
            f"{c.get('text')} ({c.get('kind')}, {(c.get('target') or {}).get('kind')})"
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
    for name in sorted(loaded.tensors):
        out.print(f"  {name} {tuple(loaded.tensors[name].shape)}")


def register(app: typer.Typer) -> None:
    app.command("info")(friendly_errors(info_command))
