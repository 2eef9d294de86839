"""``hirm apply``: write a patched copy of a model (pipeline or text encoder) to disk."""

from __future__ import annotations

from pathlib import Path

import typer

from hirm.cli.common import Model, Overwrite, Quiet, console, friendly_errors


def apply_command(
    patch: list[Path] = typer.Option(..., "--patch", "-p", help="Patch file (repeat to compose several)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the patched model (save_pretrained)."),
    model: Model = "minicanvas",
    overwrite: Overwrite = False,
    scale: float = typer.Option(1.0, help="Strength: base + scale * (patch - base); 1 = as trained."),
    allow_overlap: bool = typer.Option(
        False, help="Let separately trained patches that change the same tensors add their deltas."
    ),
    quiet: Quiet = False,
) -> None:
    """Apply patch(es) to the original model and save the result (loadable with from_pretrained).

    Components the patches change are re-saved in their stored dtypes; every other component is copied.
    """
    from hirm.api import save_patched
    from hirm.io import check_writable

    check_writable(out, overwrite=overwrite, directory=True)
    save_patched(model, patch, out, overwrite=overwrite, scale=scale, allow_overlap=allow_overlap)
    console.print(f"[green]patched model[/] -> {out}")


def register(app: typer.Typer) -> None:
    app.command("apply")(friendly_errors(apply_command))
