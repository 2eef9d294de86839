"""Registry of erasure methods: CLI names -> (config class, erase function).

Every method has the same shape: ``erase(model, concepts, config, *, components, progress) -> Patch``
where ``model`` is a :class:`hirm.adapters.loading.ModelHandle`. The patch holds only the tensors
the method changed and is applied with :func:`hirm.core.patch.apply_patches`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hirm.core.config import Concept
from hirm.core.patch import Patch

EraseFn = Callable[..., Patch]


@dataclass(frozen=True)
class MethodSpec:
    """One erasure method.

    Attributes:
        name: the name used by ``--method``.
        config_cls: its frozen config dataclass (``config_cls()`` gives the method's defaults).
        erase: ``erase(model: ModelHandle, concepts: Sequence[Concept], config, *, components=None,
            progress=True) -> Patch``.
        edits: what it changes, for humans (e.g. "text encoder block 0", "U-Net cross-attention k/v").
        description: one line with the paper.
        follows: the authors' code its defaults reproduce (script or notebook), or what it is.
        uses_target: whether the concepts' misdirection targets (``Concept.target``, ``--target``) mean
            anything to it (HiRM's); the others ignore them, and their patches' concepts record none.
    """

    name: str
    config_cls: type
    erase: EraseFn
    edits: str
    description: str
    follows: str = ""
    uses_target: bool = False


_METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _METHODS:
        raise ValueError(f"Method {spec.name!r} is already registered.")
    _METHODS[spec.name] = spec
    return spec


#: Modules whose import registers a built-in method (one method per module).
BUILTIN = (
    "hirm.core.hirm",
    "hirm.core.uce",
    "hirm.core.esd",
    "hirm.core.diffquickfix",
    "hirm.core.naive",
    "hirm.core.advunlearn",
    "hirm.core.hirm_hardened",
    "hirm.core.kv_proj",
)


def _load_builtin() -> None:
    for module in BUILTIN:
        importlib.import_module(module)


def methods() -> dict[str, MethodSpec]:
    _load_builtin()
    return dict(_METHODS)


def get_method(name: str) -> MethodSpec:
    available = methods()
    if name not in available:
        raise ValueError(f"Unknown method {name!r}; available: {sorted(available)}.")
    return available[name]


def run_method(
    name: str, model: Any, concepts: Sequence[Concept], config: Any = None, **kwargs: Any
) -> Patch:
    spec = get_method(name)
    config = spec.config_cls() if config is None else config
    if not isinstance(config, spec.config_cls):
        raise TypeError(f"Method {name!r} takes a {spec.config_cls.__name__}, got {type(config).__name__}.")
    return spec.erase(model, list(concepts), config, **kwargs)
