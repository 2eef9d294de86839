"""Registry of attacks: names -> (config class, the three phases of the attack).

Every attack runs in the same frame (:func:`hirm.attacks.api.run_attack`):

1. ``original(ctx, config)`` on the *original* model (no patch applied): what the attack takes from
   it (images of the concept, the original text encoder's embeddings). Cached in the run directory.
2. ``prepare(ctx, config, original)`` on the *erased* model, once (e.g. learn an embedding); may raise
   :class:`hirm.attacks.run.Interrupted` when the time budget runs out (after saving a checkpoint).
3. ``attack(ctx, config, original, prepared, index, item, before)`` for each attacked prompt, on the
   erased model (``before``: whether the plain prompt was already recognised) -> ``ItemOutcome``; or
   ``attack_batch(ctx, config, original, prepared, indices, items, befores)`` -> one outcome per item,
   for attacks whose images can be made in batches.

``found(ctx, config, prepared, records)`` optionally gives the run's found tensors and their readable
description (``found.safetensors`` / ``found.json``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hirm.evaluation.common import EvaluationInputError


@dataclass(frozen=True)
class AttackSpec:
    """One attack.

    Attributes:
        name: the name used by ``hirm attack``.
        config_cls: its frozen config (``config_cls()`` = the CPU-budget defaults,
            ``config_cls.reference(kind=...)`` = the authors' settings).
        description: one line with the paper.
        judge_before: judge the plain prompt on the erased model first (the "before" of the ASR).
        stop_if_before: do not attack an item already recognised before the attack (UnlearnDiffAtk).
    """

    name: str
    config_cls: type
    description: str
    original: Callable[..., Any]
    prepare: Callable[..., Any]
    attack: Callable[..., Any] | None = None
    attack_batch: Callable[..., Any] | None = None
    found: Callable[..., Any] | None = None
    judge_before: bool = True
    stop_if_before: bool = False

    def __post_init__(self) -> None:
        if (self.attack is None) == (self.attack_batch is None):
            raise ValueError(f"Attack {self.name!r} needs exactly one of attack / attack_batch.")


_ATTACKS: dict[str, AttackSpec] = {}

#: Modules whose import registers a built-in attack.
BUILTIN = (
    "hirm.attacks.embedding",
    "hirm.attacks.unlearndiffatk",
    "hirm.attacks.ringabell",
    "hirm.attacks.promptset",
)


def register(spec: AttackSpec) -> AttackSpec:
    if spec.name in _ATTACKS:
        raise ValueError(f"Attack {spec.name!r} is already registered.")
    _ATTACKS[spec.name] = spec
    return spec


def attacks() -> dict[str, AttackSpec]:
    for module in BUILTIN:
        importlib.import_module(module)
    return dict(_ATTACKS)


def get_attack(name: str) -> AttackSpec:
    available = attacks()
    if name not in available:
        raise EvaluationInputError(f"Unknown attack {name!r}; available: {sorted(available)}.")
    return available[name]


def nothing(*_args: Any, **_kwargs: Any) -> None:
    """A phase an attack does not need."""
    return None
