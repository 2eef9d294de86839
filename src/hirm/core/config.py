"""Typed, frozen configuration for HiRM.

Defaults reproduce the authors' reference code (see ``shared/NOTES.md``): block 0 attention + MLP
trainable, representation read at the last block's self-attention ``out_proj`` output, MSE over all
positions, HiRM-R target ``torch.manual_seed(42); torch.rand(1, L, D)`` scaled to norm 5000, AdamW
(0.9, 0.98), eps 1e-6, weight decay 1e-8, learning rate and steps chosen by the concept kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ConceptKind = Literal["style", "object", "nudity"]
TrainableSet = Literal["first-attn", "attn-only", "mlp-only", "first-k", "params"]
ReadSite = Literal["attn", "mlp", "hidden", "final"]
Precision = Literal["auto", "fp32", "bf16"]

#: The single prompt the reference code uses for nudity.
NUDITY_PROMPT = "naked ,nude, bare, exposed, Stripped, topless, male genitalia, penis, buttocks"

#: Reference learning rates per concept kind (AdamW).
REFERENCE_LR: dict[str, float] = {"style": 5e-5, "object": 5e-5, "nudity": 1e-4}
#: Reference step counts per (target kind, concept kind). Styles 20-40 and objects 15-25 in the
#: paper; we take the middle of each range for HiRM-R and the paper's HiRM-S values.
REFERENCE_STEPS: dict[tuple[str, str], int] = {
    ("random", "style"): 30,
    ("random", "object"): 20,
    ("random", "nudity"): 50,
    ("prompt", "style"): 30,
    ("prompt", "object"): 15,
    ("prompt", "nudity"): 25,
}

#: Reference HiRM-R target: a (1, 77, 768) tensor of Frobenius norm 5000.
REFERENCE_STEERING_COEFF = 5000.0
REFERENCE_TARGET_SHAPE = (77, 768)


def reference_steering_coeff(seq_len: int, width: int) -> float:
    """Norm of the whole HiRM-R target for an encoder with ``seq_len`` positions and ``width`` channels.

    The reference uses norm 5000 for a (1, 77, 768) tensor, i.e. a root-mean-square entry of
    5000 / sqrt(77 * 768) ≈ 20.5 (per-token norm ≈ 570). Other sizes keep that per-entry RMS, so the
    coefficient is ``5000 * sqrt(seq_len * width / (77 * 768))``; at 77 x 768 it is exactly 5000.
    """
    ref_len, ref_width = REFERENCE_TARGET_SHAPE
    return REFERENCE_STEERING_COEFF * math.sqrt(seq_len * width / (ref_len * ref_width))


@dataclass(frozen=True)
class RandomTarget:
    """HiRM-R: a fixed random direction, ``rand(1, L, D)`` from ``seed``, normalised to ``coeff``.

    ``coeff=None`` applies :func:`reference_steering_coeff` (5000 at SD's 77 x 768).
    """

    seed: int = 42
    coeff: float | None = None
    kind: Literal["random"] = "random"


@dataclass(frozen=True)
class PromptTarget:
    """HiRM-S (or any prompt): the same read-out of ``prompt`` on the original encoder, times ``coeff``."""

    prompt: str
    coeff: float = 1.0
    kind: Literal["prompt"] = "prompt"


@dataclass(frozen=True)
class VectorTarget:
    """A target stored in a safetensors file under ``key``: shape (L, D), (1, L, D) or (D,) (broadcast)."""

    path: str
    key: str = "target"
    coeff: float = 1.0
    kind: Literal["file"] = "file"


Target = RandomTarget | PromptTarget | VectorTarget


@dataclass(frozen=True)
class Concept:
    """One concept to erase: its text, its kind (picks reference lr/steps) and its target."""

    text: str
    kind: ConceptKind = "object"
    target: Target = field(default_factory=RandomTarget)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("A concept must be a non-empty string.")
        if self.kind not in REFERENCE_LR:
            raise ValueError(f"Unknown concept kind {self.kind!r}; choose one of {sorted(REFERENCE_LR)}.")


@dataclass(frozen=True)
class ReadingPoint:
    """Where the high-level representation is read.

    ``site``: ``attn`` = output of block ``layer``'s self-attention ``out_proj`` (before the residual
    add; the reference), ``mlp`` = output of block ``layer``'s MLP (before the residual add),
    ``hidden`` = the residual stream after block ``layer``, ``final`` = the final layer norm output
    (``last_hidden_state``; ``layer`` is ignored). Negative ``layer`` counts from the end.
    """

    layer: int = -1
    site: ReadSite = "attn"


@dataclass(frozen=True)
class HiRMConfig:
    """Everything HiRM needs besides the model and the concepts. ``None`` means "reference default".

    Attributes:
        trainable: which tensors are trained. ``first-attn`` (reference) = block 0 self-attention
            q/k/v/out and MLP fc1/fc2, weights and biases; ``attn-only`` / ``mlp-only`` = only that part
            of block 0; ``first-k`` = attention + MLP of blocks ``0..k-1``; ``params`` = exactly the
            canonical parameter names in ``params``.
        k: number of blocks for ``first-k``.
        params: explicit canonical parameter names (e.g. ``encoder.layers.0.self_attn.q_proj.weight``).
        read: the reading point.
        steps: optimizer steps; ``None`` = the largest reference value among the concepts.
        lr: AdamW learning rate; ``None`` = the largest reference value among the concepts.
        betas, eps, weight_decay: AdamW settings (reference values).
        seed: seeds anything random in training (the HiRM-R target has its own seed).
        templates: optional prompt templates with ``{concept}``; each concept is trained on every
            template (all with the concept's target). Empty = the raw concept string (reference).
        preserve: prompts whose read-out should stay as on the original encoder.
        preserve_weight: weight of the preservation MSE; 0 = reference behaviour (no such term).
        precision: arithmetic of the forward/backward. ``fp32`` = exact reference arithmetic; ``bf16``
            = autocast to bfloat16 (weights, optimizer state and loss stay fp32); ``auto`` = bf16 where
            the hardware has native bf16 matrix units (CUDA >= sm80, CPU with AMX), else fp32.
    """

    trainable: TrainableSet = "first-attn"
    k: int = 1
    params: tuple[str, ...] = ()
    read: ReadingPoint = field(default_factory=ReadingPoint)
    steps: int | None = None
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 1e-8
    seed: int = 0
    templates: tuple[str, ...] = ()
    preserve: tuple[str, ...] = ()
    preserve_weight: float = 0.0
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}.")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}.")
        if self.trainable == "first-k" and self.k < 1:
            raise ValueError(f"first-k needs k >= 1, got {self.k}.")
        if self.trainable == "params" and not self.params:
            raise ValueError("trainable='params' needs a non-empty `params` list.")
        if self.preserve_weight < 0:
            raise ValueError("preserve_weight must be >= 0.")
        if self.preserve_weight > 0 and not self.preserve:
            raise ValueError("preserve_weight > 0 needs a list of `preserve` prompts.")
        for template in self.templates:
            if "{concept}" not in template:
                raise ValueError(f"Template {template!r} must contain '{{concept}}'.")

    def resolved_steps(self, concepts: list[Concept]) -> int:
        if self.steps is not None:
            return self.steps
        return max(REFERENCE_STEPS[(_target_family(c.target), c.kind)] for c in concepts)

    def resolved_lr(self, concepts: list[Concept]) -> float:
        if self.lr is not None:
            return self.lr
        return max(REFERENCE_LR[c.kind] for c in concepts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _target_family(target: Target) -> str:
    return "random" if isinstance(target, RandomTarget) else "prompt"


def target_from_dict(data: dict[str, Any]) -> Target:
    kind = data.get("kind")
    fields = {k: v for k, v in data.items() if k != "kind"}
    if kind == "random":
        return RandomTarget(**fields)
    if kind == "prompt":
        return PromptTarget(**fields)
    if kind == "file":
        return VectorTarget(**fields)
    raise ValueError(f"Unknown target kind {kind!r}.")


def concept_from_dict(data: dict[str, Any]) -> Concept:
    return Concept(text=data["text"], kind=data["kind"], target=target_from_dict(data["target"]))


def config_from_dict(data: dict[str, Any]) -> HiRMConfig:
    data = dict(data)
    data["read"] = ReadingPoint(**data["read"])
    for key in ("params", "templates", "preserve", "betas"):
        data[key] = tuple(data[key])
    return HiRMConfig(**data)
