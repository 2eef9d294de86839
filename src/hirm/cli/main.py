"""The ``hirm`` command line: one module per subcommand, each exposing ``register(app)``."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="hirm",
    help="Erase concepts from text-to-image diffusion models (HiRM and peers), measure and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
    "hirm.cli.world",
    "hirm.cli.env",
)

for _name in COMMANDS:
    importlib.import_module(_name).register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # `python -m hirm.cli.main`, e.g. under torchrun or accelerate launch
    main()
