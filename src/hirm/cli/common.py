"""Pieces every subcommand shares: common options and turning known errors into clear messages."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from hirm.adapters.families import UnsupportedModelError
from hirm.adapters.loading import EMBEDDED, ModelNotFoundError
from hirm.core.encoder import ConceptError
from hirm.core.hirm import NonFiniteLossError
from hirm.core.patch import PatchMismatchError
from hirm.io import OutputExistsError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

#: Errors whose message already says what to do: printed without a traceback, exit code 2.
USER_ERRORS = (
    ModelNotFoundError,
    UnsupportedModelError,
    ConceptError,
    NonFiniteLossError,
    PatchMismatchError,
    OutputExistsError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    ValueError,
    KeyError,
)

MODEL_HELP = (
    f"'{EMBEDDED}' (the embedded miniature world, default), a local diffusers pipeline directory, "
    "a text-encoder directory, or a hub id (from the local cache when HF_HUB_OFFLINE=1)."
)


def friendly_errors(func: F) -> F:
    """Run a command; known user errors print one red line and exit with code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as err:
            console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-3"`` -> list of ints."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            start, end = part.split("-", 1)
            seeds.extend(range(int(start), int(end) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"No seeds in {text!r}.")
    return seeds
