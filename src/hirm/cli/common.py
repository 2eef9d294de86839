"""Pieces every subcommand shares: the option grammar, quiet mode and turning known errors into clear
messages.

The grammar (the same option means the same thing in every command):

* ``--concept/-c`` the erased concept; ``--target/-t`` the misdirection target of an erasure;
* ``--model/-m``, ``--patch/-p`` (repeatable), ``--out/-o``, ``--overwrite``;
* ``--steps`` optimizer steps (erase, attack budgets), ``--sampler-steps`` denoising steps of every image;
* ``--device`` and ``--precision``: the same choices and defaults everywhere (``auto``);
* ``--quiet/-q`` no progress bars, and transformers/diffusers logging at errors only;
* ``-h``/``--help`` everywhere, ``hirm --version``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import threading
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

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

#: ``-h`` is ``--help`` in every command (sub-commands inherit it from the app's context).
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

# ------------------------------------------------------------------------------------ shared options
# One definition per option; commands use them as ``model: Model = "minicanvas"``.

#: ``--precision`` choices, the same in every command.
PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "bf16")
DEVICE_HELP = "torch device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps."
PRECISION_HELP = (
    "auto (bf16 autocast where the hardware has native bf16: CUDA sm80+, CPUs with AMX; else fp32), "
    "fp32, or bf16 (autocast; weights stay as stored)."
)

Model = Annotated[str, typer.Option("--model", "-m", help="The model: " + MODEL_HELP)]
Patches = Annotated[
    list[Path] | None,
    typer.Option("--patch", "-p", help="Patch file of the erasure (repeat; several compose)."),
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace an output that an earlier hirm run wrote.")
]
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
Precision = Annotated[str, typer.Option("--precision", help=PRECISION_HELP)]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bars; transformers/diffusers log errors only."),
]
SamplerSteps = Annotated[
    int | None,
    typer.Option(
        "--sampler-steps", min=1, help="Denoising steps of every image (default: the model's protocol)."
    ),
]
Guidance = Annotated[
    float | None,
    typer.Option("--guidance", help="Classifier-free guidance scale (default: the model's protocol)."),
]
Height = Annotated[
    int | None, typer.Option("--height", min=8, help="Image height (default: protocol / pipeline).")
]
Width = Annotated[
    int | None, typer.Option("--width", min=8, help="Image width (default: protocol / pipeline).")
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size", min=1, help="Images per generation batch (also the unit shared between processes)."
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Image cache (default $HIRM_CACHE/images or ~/.cache/hirm/images)."),
]
NoCache = Annotated[
    bool, typer.Option("--no-cache", help="Do not read or write the original model's image cache.")
]
GridSeeds = Annotated[
    str | None,
    typer.Option(
        "--seeds",
        help="Seeds of the grid, e.g. 188,288,588 or 0-4; one image per prompt and seed "
        "(default: the protocol's; UnlearnCanvas: 188,288,588,688,888).",
    ),
]
Template = Annotated[
    list[str] | None,
    typer.Option("--template", help="Grid template with {style} and {object} (repeat)."),
]
NoHeldout = Annotated[bool, typer.Option("--no-heldout", help="Skip the held-out templates.")]
NoSuper = Annotated[bool, typer.Option("--no-super", help="Skip the super-category prompts.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
#: Hidden spellings of earlier versions: accepted with a one-line notice (see :func:`renamed`).
OldSteps = Annotated[int | None, typer.Option("--steps", hidden=True, min=1)]


def renamed(old: str, new: str, old_value: Any, value: Any) -> Any:
    """``value``, or ``old_value`` given under the former option name ``old`` (with a one-line notice)."""
    if old_value is None:
        return value
    if value is not None:
        raise ValueError(f"{old} is the former name of {new}; give only {new}.")
    console.print(f"[yellow]note:[/] {old} is now {new} (the old name will go away).")
    return old_value


def resolve_device(text: str) -> Any:
    """``--device`` -> torch device; ``auto`` = the accelerate process's device (CUDA when present)."""
    from hirm.evaluation.common import resolve_device as resolve

    return resolve(text)


def check_precision(text: str) -> str:
    if text not in PRECISION_CHOICES:
        raise ValueError(
            f"--precision takes one of {', '.join(repr(c) for c in PRECISION_CHOICES)}; got {json.dumps(text)}."
        )
    return text


def sampling_precision(text: str, device: Any) -> str:
    """``--precision`` for sampling: ``auto`` -> ``bf16`` where ``device`` has native bf16, else ``fp32``."""
    import torch

    from hirm.checks import native_bf16

    if check_precision(text) != "auto":
        return text
    return "bf16" if native_bf16(torch.device(device)) else "fp32"


@contextmanager
def quiet_libraries(quiet: bool) -> Iterator[None]:
    """With ``quiet``: transformers and diffusers log errors only and hide their progress bars (loading
    bars, the "requires torchvision" notices); everything is restored afterwards."""
    if not quiet:
        yield
        return
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    saved = (
        tlog.get_verbosity(),
        tlog.is_progress_bar_enabled(),
        dlog.get_verbosity(),
        dlog.is_progress_bar_enabled(),
    )
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torchvision.*")
            yield
    finally:
        tlog.set_verbosity(saved[0])
        dlog.set_verbosity(saved[2])
        (tlog.enable_progress_bar if saved[1] else tlog.disable_progress_bar)()
        (dlog.enable_progress_bar if saved[3] else dlog.disable_progress_bar)()


def friendly_errors(func: F) -> F:
    """Run a command; known user errors print one red line and exit with code 2.

    SIGTERM is turned into ``SystemExit(143)`` for the duration of the command, so that temporary
    outputs are cleaned up (``finally`` blocks run) as on Ctrl-C.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            with terminate_as_exit(), quiet_libraries(bool(kwargs.get("quiet"))):
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
