"""``hirm apply``: write a patched copy of a model (pipeline or text encoder) to disk."""

from __future__ import annotations

from pathlib import Path

import typer

from hirm.cli.common import MODEL_HELP, console, friendly_errors


def apply_command(
    patch: list[Path] = typer.Option(..., "--patch", "-p", help="Patch file (repeat to compose several)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the patched model (save_pretrained)."),
    model: str = typer.Option("minicanvas", "--model", "-m", help=MODEL_HELP),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Apply patch(es) to the original model and save the result with save_pretrained."""
    from hirm.api import save_patched
    from hirm.io import check_writable

    check_writable(out, overwrite=overwrite)
    save_patched(model, patch, out, overwrite=overwrite)
    console.print(f"[green]patched model[/] -> {out}")


def register(app: typer.Typer) -> None:
    app.command("apply")(friendly_errors(apply_command))
