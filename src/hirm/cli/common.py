"""Pieces every subcommand shares: common options and turning known errors into clear messages."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import typer
from rich.console import Console
from rich.text import Text

from hirm.adapters.families import UnsupportedModelError
from hirm.adapters.loading import EMBEDDED, ModelNotFoundError
from hirm.core.encoder import ConceptError
from hirm.core.hirm import NonFiniteLossError
from hirm.core.patch import PatchConflictError, PatchMismatchError
from hirm.io import DirectoryLockedError, DiskFullError, OutputExistsError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

#: Errors whose message already says what to do: printed without a traceback, exit code 2.
USER_ERRORS = (
    ModelNotFoundError,
    UnsupportedModelError,
    ConceptError,
    NonFiniteLossError,
    PatchMismatchError,
    PatchConflictError,
    OutputExistsError,
    DiskFullError,
    DirectoryLockedError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)

MODEL_HELP = (
    f"'{EMBEDDED}' (the embedded miniature world, default), a local diffusers pipeline directory, "
    "a text-encoder directory, or a hub id (from the local cache when HF_HUB_OFFLINE=1)."
)


def friendly_errors(func: F) -> F:
    """Run a command; known user errors print one red line and exit with code 2.

    SIGTERM is turned into ``SystemExit(143)`` for the duration of the command, so that temporary
    outputs are cleaned up (``finally`` blocks run) as on Ctrl-C.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            with terminate_as_exit():
                return func(*args, **kwargs)
        except USER_ERRORS as err:
            print_error(str(err))
            raise typer.Exit(code=2) from None
        except KeyError as err:  # never a bare "error: 'name'": say what it is
            print_error(
                f"an input lacks the entry {err}; the file may be damaged or from another version of hirm "
                "(if not, please report this as a bug with the command line)."
            )
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def print_error(message: str) -> None:
    """One red ``error:`` line on stderr; the message is printed as is (no rich markup)."""
    console.print(Text.assemble(("error: ", "bold red"), " ".join(message.split())), soft_wrap=True)


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(143)`` (cleanups run) instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-3"`` -> list of ints."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                start, end = part.split("-", 1)
                seeds.extend(range(int(start), int(end) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(
            f"--seeds takes integers and ranges such as '0,1,2' or '0-7', got {text!r}."
        ) from None
    if not seeds:
        raise ValueError(f"No seeds in {text!r}.")
    return seeds


# ------------------------------------------------------------------------------ typed config values


class FieldValueError(ValueError):
    """A value that does not fit a config field's type."""


def describe(annotation: Any) -> str:
    """What a field of type ``annotation`` takes, in words (for error messages)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0])} values (JSON, e.g. [..])"
        return f"a list of exactly {len(args)} values ({', '.join(describe(a) for a in args)})"
    if dataclasses.is_dataclass(annotation):
        return f"a JSON object with fields {', '.join(f.name for f in dataclasses.fields(annotation))}"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a text",
        type(None): "null (the default)",
    }.get(annotation, getattr(annotation, "__name__", str(annotation)))


def coerce(annotation: Any, value: Any, name: str) -> Any:
    """``value`` checked against (and converted to) ``annotation``: ints are not floats, ``2.5`` is no
    step count, ``[0.9]`` is not a pair; lists become tuples, JSON objects nested configs.
    Raises :class:`FieldValueError` naming ``name``, the value and what is allowed."""
    origin, args = get_origin(annotation), get_args(annotation)
    fail = FieldValueError(f"{name} takes {describe(annotation)}; got {json.dumps(value, default=str)}.")
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = {}
        for option in args:
            try:
                return coerce(option, value, name)
            except FieldValueError as err:
                errors[option] = err
        nested = [o for o in args if dataclasses.is_dataclass(o) and isinstance(value, dict)]
        raise errors[nested[0]] if nested else fail  # an object for a nested config: say what is wrong in it
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        raise fail
    if annotation is type(None):
        if value is None:
            return None
        raise fail
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail
    if annotation is str:
        if isinstance(value, str):
            return value
        raise fail
    if origin is tuple:
        return _coerce_tuple(args, value, name, fail)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise fail
        return make_config(annotation, value, label=f"{name}.")
    return value


def _coerce_tuple(args: tuple, value: Any, name: str, fail: FieldValueError) -> tuple:
    if isinstance(value, str) and args[:1] == (str,) and args[1:] == (Ellipsis,):
        value = [value]  # one text for a list of texts
    if not isinstance(value, (list, tuple)):
        raise fail
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise fail
    return tuple(coerce(a, v, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def parse_value(annotation: Any, text: str, name: str) -> Any:
    """A ``--set`` value: JSON when it parses and fits, else the text itself where a text is allowed
    (``guide=5`` is the text "5"; ``lr=abc`` is an error)."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text
    try:
        return coerce(annotation, parsed, name)
    except FieldValueError:
        if parsed == text or not _takes_text(annotation):
            raise
        return coerce(annotation, text, name)


def _takes_text(annotation: Any) -> bool:
    """Whether a field takes a plain text (``str``, ``str | None``), where ``5`` may mean "5"."""
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_takes_text(a) for a in get_args(annotation))
    return annotation is str


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a config dataclass."""
    try:
        hints = get_type_hints(cls)
    except (NameError, TypeError):  # unresolvable annotations: leave the checks to the constructor
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def make_config(cls: type, values: Mapping[str, Any], *, base: Any = None, label: str = "") -> Any:
    """``cls(**values)`` (or ``dataclasses.replace(base, **values)``) with every value checked against
    its field's type first; the constructor's own ValueError/TypeError becomes a one-line error.

    ``label`` prefixes field names in messages (e.g. ``"--set "`` or ``"read."``).
    """
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise FieldValueError(f"{cls.__name__} has no field(s) {unknown}; it has {sorted(types_)}.")
    checked = {key: coerce(types_[key], value, f"{label}{key}") for key, value in values.items()}
    try:
        return dataclasses.replace(base, **checked) if base is not None else cls(**checked)
    except (ValueError, TypeError) as err:
        raise FieldValueError(f"{label}{', '.join(values) or cls.__name__}: {err}") from None


def parse_settings(cls: type, settings: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options -> typed values for the fields of ``cls``."""
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    for text in settings:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FieldValueError(f"--set takes KEY=VALUE, got {text!r}.")
        if key not in types_:
            raise FieldValueError(f"{cls.__name__} has no field {key!r}; it has {sorted(types_)}.")
        values[key] = parse_value(types_[key], raw, f"--set {key}")
    return values
