"""The ``hirm`` command line: one module per subcommand, each exposing ``register(app)``."""

from __future__ import annotations

import importlib

import typer

from hirm.cli.common import CONTEXT_SETTINGS

app = typer.Typer(
    name="hirm",
    help="Erase concepts from text-to-image diffusion models (HiRM and peers), measure and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT_SETTINGS,
)


def _print_version(value: bool) -> None:
    if value:
        from hirm._version import __version__

        typer.echo(f"hirm {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print hirm's version and exit."
    ),
) -> None:
    """Erase concepts from text-to-image diffusion models (HiRM and peers), measure and report."""


#: Subcommand modules, in the order they appear in --help.
COMMANDS = (
    "hirm.cli.erase",
    "hirm.cli.apply",
    "hirm.cli.export",
    "hirm.cli.generate",
    "hirm.cli.info",
    "hirm.cli.eval",
    "hirm.cli.attack",
    "hirm.cli.sweep",
    "hirm.cli.compare",
    "hirm.cli.report",
    "hirm.cli.trace",
    "hirm.cli.world",
    "hirm.cli.env",
)

for _name in COMMANDS:
    importlib.import_module(_name).register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # `python -m hirm.cli.main`, e.g. under torchrun or accelerate launch
    main()
