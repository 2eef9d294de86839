"""``hirm export``: an erased model where people use it (diffusers folder, single file, model card).

hirm export encoder -p cats.safetensors -m ./sd15 -o hub/no-cats              # text_encoder/ (diffusers)
hirm export single-file -p cats.safetensors --checkpoint v1-5.safetensors -o v1-5-no-cats.safetensors
hirm export card -p cats.safetensors --eval runs/cats --grid out/grid.png -o hub/no-cats
huggingface-cli upload me/sd15-no-cats hub/no-cats
"""

from __future__ import annotations

from pathlib import Path

import typer

from hirm.cli.common import CONTEXT_SETTINGS, Model, Quiet, console, friendly_errors

export_app = typer.Typer(
    help="Export an erased model: diffusers text-encoder folders, an A1111/ComfyUI single file, a model card.",
    no_args_is_help=True,
    context_settings=CONTEXT_SETTINGS,
)

PATCH = typer.Option(..., "--patch", "-p", help="The patch file (hirm erase -o ...).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing output files.")


def encoder_command(
    patch: Path = PATCH,
    out: Path = typer.Option(..., "--out", "-o", help="Directory receiving one folder per edited encoder."),
    model: Model = "minicanvas",
    overwrite: bool = OVERWRITE,
    quiet: Quiet = False,
) -> None:
    """Each edited text encoder (and tokenizer) as a save_pretrained folder OUT/<component> (float32)."""
    from hirm.export import export_encoders

    path = export_encoders(model, patch, out, overwrite=overwrite)
    console.print(f"[green]text encoder folder(s)[/] -> {path}")


def single_file_command(
    patch: Path = PATCH,
    checkpoint: Path = typer.Option(
        ...,
        "--checkpoint",
        help="The original single-file .safetensors (SD 1.x/2.x, SDXL, SD3, a CLIP file).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="The new .safetensors file (the input is never modified)."
    ),
    no_check: bool = typer.Option(
        False,
        "--no-check",
        help="Write even if the checkpoint's encoder is not the patch's base (fingerprint).",
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """A copy of CHECKPOINT with the patched text-encoder tensors, in its own layout and dtype (A1111, ComfyUI)."""
    from hirm.export import export_single_file

    path = export_single_file(patch, checkpoint, out, overwrite=overwrite, check_base=not no_check)
    console.print(f"[green]single-file checkpoint[/] -> {path}")


def card_command(
    patch: Path = PATCH,
    out: Path = typer.Option(
        ..., "--out", "-o", help="The folder to upload (README.md, grid.png, the patch)."
    ),
    evaluation: Path | None = typer.Option(
        None, "--eval", help="A `hirm eval canvas` result (directory or result.json): metrics in the card."
    ),
    grid: Path | None = typer.Option(
        None, "--grid", help="A picture for the card, e.g. `hirm generate`'s grid.png."
    ),
    base_model: str | None = typer.Option(
        None,
        "--base-model",
        help="Hub id of the base model (default: the patch's source when it is a hub id).",
    ),
    license_: str | None = typer.Option(None, "--license", help="License id for the card (e.g. the base's)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """README.md with YAML metadata (base model, method, concepts, metrics) for `huggingface-cli upload`."""
    from hirm.export import write_model_card

    path = write_model_card(
        patch,
        out,
        evaluation=evaluation,
        grid=grid,
        base_model=base_model,
        license=license_,
        overwrite=overwrite,
    )
    console.print(f"[green]model card[/] -> {path}")


def register(app: typer.Typer) -> None:
    export_app.command("encoder")(friendly_errors(encoder_command))
    export_app.command("single-file")(friendly_errors(single_file_command))
    export_app.command("card")(friendly_errors(card_command))
    app.add_typer(export_app, name="export")
