"""``hirm generate``: original vs erased images on the same seeds (or the original model alone)."""

from __future__ import annotations

from pathlib import Path

import typer

from hirm.cli.common import (
    Device,
    Guidance,
    Height,
    Model,
    OldSteps,
    Overwrite,
    Patches,
    Precision,
    Quiet,
    SamplerSteps,
    Width,
    console,
    friendly_errors,
    parse_seeds,
    renamed,
)


def generate_command(
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt (repeat)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (PNGs, grid.png, manifest.json)."),
    patch: Patches = None,
    model: Model = "minicanvas",
    seeds: str = typer.Option("0,1,2", help="Seeds, e.g. '0,1,2' or '0-7'; one image per prompt and seed."),
    sampler_steps: SamplerSteps = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
    device: Device = "auto",
    precision: Precision = "auto",
    overwrite: Overwrite = False,
    scale: float = typer.Option(1.0, help="Patch strength: base + scale * (patch - base)."),
    allow_overlap: bool = typer.Option(
        False, help="Let separately trained patches that change the same tensors add their deltas."
    ),
    quiet: Quiet = False,
    old_steps: OldSteps = None,
) -> None:
    """Generate each prompt with the original and the erased model on the same seeds.

    grid.png has one row per prompt and model (labelled) and one column per seed (labelled).
    """
    from hirm.adapters.loading import EMBEDDED, load_model
    from hirm.api import _as_patches, apply_patch
    from hirm.cli.common import resolve_device, sampling_precision
    from hirm.core.patch import check_composable
    from hirm.generation import compare_original_erased
    from hirm.io import check_writable

    steps = renamed("--steps", "--sampler-steps", old_steps, sampler_steps)
    device = str(resolve_device(device))
    precision = sampling_precision(precision, device)
    check_writable(out, overwrite=overwrite, directory=True)
    seed_list = parse_seeds(seeds)
    patches = _as_patches(patch or [])
    check_composable(patches, allow_overlap=allow_overlap)  # before the pipelines load
    handle = load_model(model, device=device)
    original = handle.pipeline()
    erased = None
    if patches:
        erased = apply_patch(handle.pipeline(), patches, scale=scale, allow_overlap=allow_overlap)
    for pipe in (original, erased):
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)  # one bar per model instead of one per batch
    call = {}
    if model == EMBEDDED:
        from hirm.world import GENERATION_DEFAULTS

        call.update(GENERATION_DEFAULTS)
    overrides = {
        "num_inference_steps": steps, "guidance_scale": guidance, "height": height, "width": width,
        "precision": precision,
    }  # fmt: skip
    call.update({k: v for k, v in overrides.items() if v is not None})
    meta = {
        "model": model,
        "patches": [str(p) for p in patch or []],
        "fingerprints": [p.fingerprints for p in patches],
        "scale": scale,
    }
    compare_original_erased(
        original,
        erased,
        prompt,
        seed_list,
        out,
        overwrite=overwrite,
        metadata=meta,
        progress=not quiet,
        **call,
    )
    what = "original vs erased" if patches else "original model (no patch)"
    console.print(f"[green]images ({what})[/] -> {out} (grid: {out / 'grid.png'})")


def register(app: typer.Typer) -> None:
    app.command("generate")(friendly_errors(generate_command))
