"""``hirm compare``: every method on the same miniature-world runs, one table."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from hirm.cli.common import (
    CacheDir,
    Device,
    Model,
    NoHeldout,
    NoSuper,
    Precision,
    Quiet,
    SamplerSteps,
    console,
    friendly_errors,
    parse_seeds,
)


def compare_command(
    out: Path = typer.Option(
        Path("results/compare"),
        "--out",
        "-o",
        help="Directory: one sweep per method + compare.md/csv. Re-run to resume.",
    ),
    method: list[str] = typer.Option(
        [],
        "--method",
        help="Entries to compare (repeat); default all: hirm-r, hirm-s, hirm-s-tuned, hirm-r-rms, naive, diffquickfix, uce, hirm+uce, esd-x, esd-u.",
    ),
    domain: str = typer.Option("all", help="style, object or all."),
    concept: list[str] = typer.Option(
        [], "--concept", "-c", help="Only these concepts (repeat; any spelling)."
    ),
    limit: int | None = typer.Option(None, help="Only the first N concepts of the domain (smoke runs)."),
    seeds: str = typer.Option("188,288,588", help="Seeds of the grid (one image per prompt and seed)."),
    esd_steps: int | None = typer.Option(
        None, help="Override ESD's 1000 optimizer steps (the table states it)."
    ),
    esd_batch: int = typer.Option(
        0,
        help="ESD entries: erase up to N concepts at once in one batched run (each still its own ESD, the "
        "same patches up to floating point; several times faster). 0: one at a time.",
    ),
    sampler_steps: SamplerSteps = None,
    no_heldout: NoHeldout = False,
    no_super: NoSuper = False,
    precision: Precision = "auto",
    model: Model = "minicanvas",
    device: Device = "auto",
    cache_dir: CacheDir = None,
    merge: list[Path] = typer.Option(
        [],
        "--merge",
        help="Instead of running: merge these comparison directories (repeat; same settings, disjoint "
        "concepts, e.g. one process per concept group) into a new --out and write its table.",
    ),
    quiet: Quiet = False,
) -> None:
    """Run every method on the world's styles and objects and write compare.md + compare.csv."""
    from hirm.cli.common import resolve_device, sampling_precision
    from hirm.evaluation.canvas import CanvasSettings
    from hirm.evaluation.compare import ENTRIES, merge_compare, run_compare

    if esd_batch < 0:
        raise ValueError(
            f"--esd-batch must be 0 (one concept at a time) or a number of concepts, not {esd_batch}."
        )
    unknown = [m for m in method if m not in ENTRIES]
    if unknown:
        raise ValueError(f"Unknown entries {unknown}; choose from {list(ENTRIES)}.")
    command = "hirm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if merge:
        console.print(merge_compare(merge, out=out, names=method or None, command=command).read_text())
        return
    entries = [ENTRIES[m] for m in (method or ENTRIES)]
    if esd_steps is not None:
        entries = [_with_esd_steps(e, esd_steps) for e in entries]
    if model != "minicanvas":
        raise ValueError(
            "compare runs on the miniature world (its judges); use the Python API for other pipelines."
        )
    dev = resolve_device(device)
    settings = CanvasSettings.for_world(
        seeds=tuple(parse_seeds(seeds)),
        precision=sampling_precision(precision, dev),
        num_inference_steps=sampler_steps,
    )
    if no_heldout or no_super:
        from dataclasses import replace

        settings = replace(
            settings,
            heldout_templates=() if no_heldout else settings.heldout_templates,
            super_templates=() if no_super else settings.super_templates,
        )
    table = run_compare(
        model,
        out=out,
        entries=entries,
        domain=domain,
        concepts=concept or None,
        limit=limit,
        settings=settings,
        device=dev,
        cache_dir=cache_dir,
        command=command,
        progress=not quiet,
        esd_batch=esd_batch or None,
    )
    console.print(table.read_text())


def _with_esd_steps(entry, steps: int):
    """``entry`` with every ESD method's step count replaced (other methods unchanged)."""
    from dataclasses import replace

    esd = [m for m in entry.methods if m.startswith("esd")]
    return replace(entry, overrides={m: {"steps": steps} for m in esd}) if esd else entry


def register(app: typer.Typer) -> None:
    app.command("compare")(friendly_errors(compare_command))
