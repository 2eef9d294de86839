"""``hirm sweep``: erase every concept of a domain in turn, evaluate each, aggregate mean ± std."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hirm.cli.common import (
    CONTEXT_SETTINGS,
    BatchSize,
    CacheDir,
    Device,
    GridSeeds,
    Guidance,
    Height,
    Model,
    NoCache,
    NoHeldout,
    NoSuper,
    Overwrite,
    Precision,
    Quiet,
    SamplerSteps,
    Template,
    Width,
)
from hirm.cli.eval import canvas_settings, fail_on_errors, print_json


@fail_on_errors
def sweep_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Sweep directory: sweep.json, results.jsonl/csv, concepts/<name>/. Re-run to resume.",
        ),
    ],
    domain: Annotated[str, typer.Option("--domain", help="style, object or all.")] = "all",
    method: Annotated[
        str, typer.Option("--method", help="Erasure method (hirm.methods()); its default config is used.")
    ] = "hirm",
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="Misdirection target: random (HiRM-R) or super (HiRM-S toward the concept's super-category word).",
        ),
    ] = "random",
    concept: Annotated[
        list[str] | None,
        typer.Option("--concept", "-c", help="Only these concepts (repeatable; any spelling)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the first N concepts (smoke runs).")
    ] = None,
    model: Model = "minicanvas",
    overwrite: Overwrite = False,
    device: Device = "auto",
    precision: Precision = "auto",
    seeds: GridSeeds = None,
    template: Template = None,
    no_heldout: NoHeldout = False,
    no_super: NoSuper = False,
    sampler_steps: SamplerSteps = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
    batch_size: BatchSize = None,
    save_patches: Annotated[
        bool,
        typer.Option(
            "--save-patches", help="Keep each concept's patch in concepts/<name>/patch.safetensors."
        ),
    ] = False,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    quiet: Quiet = False,
) -> None:
    """Erase each concept of --domain with --method and evaluate it on the UnlearnCanvas grid; streams results, resumes."""
    from hirm.cli.common import resolve_device, sampling_precision
    from hirm.evaluation.sweep import run_sweep

    dev = resolve_device(device)
    settings = canvas_settings(
        model, seeds=seeds, templates=template, no_heldout=no_heldout, no_super=no_super,
        sampler_steps=sampler_steps, guidance=guidance, height=height, width=width, batch_size=batch_size,
        precision=sampling_precision(precision, dev),
    )  # fmt: skip
    manifest = run_sweep(
        model, out=out, domain=domain, method=method, target=target, concepts=concept, limit=limit,
        settings=settings, device=dev, cache_dir=cache_dir, use_cache=not no_cache, overwrite=overwrite,
        save_patches=save_patches, progress=not quiet,
    )  # fmt: skip
    print_json({k: manifest.get(k) for k in ("complete", "finished", "aggregate", "times")})


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)


def main() -> None:
    """``accelerate launch -m hirm.cli.sweep ...`` / ``torchrun ... -m hirm.cli.sweep ...``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, context_settings=CONTEXT_SETTINGS)
    app.command()(sweep_command)
    app()


if __name__ == "__main__":
    main()
