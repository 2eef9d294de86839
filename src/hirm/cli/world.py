"""``hirm world build | info``: rebuild the embedded miniature world, or describe the shipped one.

``hirm world build`` is the one world-build command; ``python -m hirm.world.build ARGS`` (and
``python -m hirm.world ARGS``) run it too (:func:`build_main`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from hirm.cli.common import CONTEXT_SETTINGS, Device, Quiet, console, friendly_errors

world_app = typer.Typer(
    help="The embedded miniature world (MiniCanvas): rebuild it or describe it.",
    no_args_is_help=True,
    context_settings=CONTEXT_SETTINGS,
)


@world_app.command("build")
@friendly_errors
def build_command(
    out: Path = typer.Option(
        ..., "--out", "-o", help="Build directory (stage checkpoints; an interrupted build resumes)."
    ),
    seed: int = typer.Option(0, help="Global seed (0 = the shipped world, built with --device cpu)."),
    preset: str = typer.Option("full", help="full (the shipped world) or tiny (seconds, smoke test)."),
    stage: list[str] = typer.Option(
        [],
        "--stage",
        help="Run only this stage (repeat; its prerequisites must be done): data, tokenizer, clip, judges, "
        "vae, unet, assemble. Default: all, in order.",
    ),
    device: Device = "auto",
    install: bool = typer.Option(False, help="Copy the built assets into the installed package when done."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads (default: torch's choice)."),
    quiet: Quiet = False,
) -> None:
    """Train the whole world from scratch (tokenizer, MiniCLIP, judges, VAE, U-Net), seeded and resumable."""
    import torch

    from hirm.cli.common import resolve_device
    from hirm.io import directory_lock, read_marker, write_marker
    from hirm.world import build_world
    from hirm.world.build import STAGES

    device = str(resolve_device(device))
    unknown = [s for s in stage if s not in STAGES]
    if unknown:
        raise ValueError(f"--stage {unknown[0]!r} is not a stage; the stages are {', '.join(STAGES)}.")
    if threads:
        torch.set_num_threads(threads)
    if out.is_file():
        raise NotADirectoryError(f"{out} is a file; --out of a world build is a directory.")
    with directory_lock(out, "hirm world build"):
        # The build replaces its own stage folders (assets/, ckpt/...): never in someone else's directory.
        others = [p.name for p in out.iterdir() if not p.name.startswith(".hirm-")]
        started = (out / "build.json").is_file() or any((out / "ckpt").glob("*.digest"))
        if others and read_marker(out) is None and not started:
            raise ValueError(
                f"{out} holds files that are not a world build ({', '.join(sorted(others)[:3])}); "
                "choose an empty or new directory."
            )
        write_marker(out, "world-build", files=[])
        assets = build_world(
            out, seed=seed, preset=preset, stages=tuple(stage) or None, device=device, install=install,
            progress=not quiet,
        )  # fmt: skip
    if stage and "assemble" not in stage:
        console.print(f"[green]stages {', '.join(stage)} done[/] in {out}")
    else:
        console.print(
            f"[green]world built[/] -> {assets}" + (" (installed into the package)" if install else "")
        )


@world_app.command("info")
@friendly_errors
def info_command() -> None:
    """Styles, objects, super-categories, templates and where the shipped weights are."""
    from hirm import world

    print(f"assets: {world.assets_dir()} (checksums verified)")
    print(f"pipeline: {world.pipeline_dir()}")
    print(
        f"styles ({len(world.STYLES)}): " + ", ".join(f"{s} [{world.STYLE_SUPER[s]}]" for s in world.STYLES)
    )
    print(
        f"objects ({len(world.OBJECTS)}): "
        + ", ".join(f"{o} [{world.OBJECT_SUPER[o]}]" for o in world.OBJECTS)
    )
    print("training templates:\n  " + "\n  ".join(world.TRAIN_TEMPLATES))
    print("held-out templates:\n  " + "\n  ".join(world.HELDOUT_TEMPLATES))
    print(f"generation defaults: {world.GENERATION_DEFAULTS}")


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")


def build_main(argv: list[str] | None = None) -> None:
    """``hirm world build ARGS`` as a program of its own (``python -m hirm.world.build ARGS``)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, context_settings=CONTEXT_SETTINGS)
    app.command(name="build")(build_command)
    app(args=argv, prog_name="python -m hirm.world.build")
