"""Typed, frozen configuration for HiRM, and the field checks every method's config uses.

Defaults follow the authors' training code (``shared/NOTES.md``): block 0 attention + MLP trainable
(``first-attn``), the representation read at the last block's self-attention ``out_proj`` output, MSE
over all positions, HiRM-R target ``torch.manual_seed(42); torch.rand(1, L, D)`` scaled to norm 5000,
AdamW (0.9, 0.98), eps 1e-6, weight decay 1e-8, learning rate and steps chosen by the concept kind.
What differs from their code by default is listed in :class:`HiRMConfig`.

Every config is checked field by field at construction: a wrong type or value raises ``ValueError``
(or ``TypeError`` for a wrong type) whose message names the field, the value and what is allowed.
"""

from __future__ import annotations

import math
import string
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

ConceptKind = Literal["style", "object", "nudity"]
TrainableSet = Literal[
    "first-attn",
    "attn-only",
    "mlp-only",
    "mlp-attn",
    "final-attn",
    "mix-attn",
    "mlp-final-attn",
    "all",
    "block0-attn",
    "first-k",
    "params",
]
ReadSite = Literal["attn", "mlp", "hidden", "final"]
Precision = Literal["auto", "fp32", "bf16"]
TargetScale = Literal["reference", "readout-rms"]
DrawDevice = Literal["cpu", "cuda"]
ConceptWeighting = Literal["mean", "balanced"]

TRAINABLE_SETS: tuple[str, ...] = get_args(TrainableSet)
CONCEPT_KINDS: tuple[str, ...] = get_args(ConceptKind)

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

_SEED_MAX = 2**63 - 1


# ------------------------------------------------------------------------------------------ checks


def _bad(owner: str, name: str, value: Any, allowed: str, error: type[Exception] = ValueError) -> Exception:
    return error(f"{owner}.{name} must be {allowed}; got {value!r}.")


def check_int(
    owner: str, name: str, value: Any, *, minimum: int | None = None, optional: bool = False
) -> None:
    """An ``int`` (not a bool) ``>= minimum``; ``None`` too when ``optional``."""
    if optional and value is None:
        return
    allowed = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(owner, name, value, allowed, TypeError)
    if minimum is not None and value < minimum:
        raise _bad(owner, name, value, allowed)


def check_seed(owner: str, name: str, value: Any) -> None:
    check_int(owner, name, value, minimum=0)
    if value > _SEED_MAX:
        raise _bad(owner, name, value, f"an int in [0, {_SEED_MAX}]")


def check_float(
    owner: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    positive: bool = False,
    below: float | None = None,
    optional: bool = False,
) -> None:
    """A finite real number (int or float, not bool); ``> 0`` when ``positive``, ``>= minimum``, ``< below``."""
    if optional and value is None:
        return
    parts = ["a finite number"]
    if positive:
        parts.append("> 0")
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if below is not None:
        parts.append(f"< {below:g}")
    allowed = " ".join(parts) + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(owner, name, value, allowed, TypeError)
    if (
        not math.isfinite(value)
        or (positive and not value > 0)
        or (minimum is not None and value < minimum)
        or (below is not None and not value < below)
    ):
        raise _bad(owner, name, value, allowed)


def check_choice(owner: str, name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise _bad(owner, name, value, f"one of {', '.join(map(repr, choices))}")


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(owner, name, value, "True or False", TypeError)


def check_prompt(owner: str, name: str, value: Any, *, empty: bool = True, optional: bool = False) -> None:
    """A prompt string; ``''`` (the empty prompt) only when ``empty``; whitespace-only never."""
    if optional and value is None:
        return
    kind = "a prompt string ('' = the empty prompt)" if empty else "a non-empty prompt string"
    allowed = kind + (" or None" if optional else "")
    if not isinstance(value, str):
        raise _bad(owner, name, value, allowed, TypeError)
    if (not value and not empty) or (value and not value.strip()):
        raise _bad(owner, name, value, allowed + "; whitespace alone is not a prompt")


def check_prompts(owner: str, name: str, value: Any, *, empty: bool = False) -> None:
    """A tuple of prompt strings (a single string is the usual mistake and is refused)."""
    if not isinstance(value, tuple):
        raise _bad(owner, name, value, "a tuple of prompt strings, e.g. ('a dog',)", TypeError)
    for i, item in enumerate(value):
        check_prompt(owner, f"{name}[{i}]", item, empty=empty)


def check_template(owner: str, name: str, template: Any) -> None:
    """A ``str.format`` template whose only field is ``{concept}`` (literal braces as ``{{`` / ``}}``)."""
    if not isinstance(template, str):
        raise _bad(owner, name, template, "a template string with '{concept}'", TypeError)
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise _bad(
            owner, name, template, f"a valid template ({err}; write literal braces as '{{{{' and '}}}}')"
        ) from None
    fields = [f for f, _, _ in parsed]
    others = sorted({f for f in fields if f != "concept"})
    if others:
        raise _bad(
            owner,
            name,
            template,
            f"a template whose only field is '{{concept}}' (it has {others}; write literal braces as "
            "'{{' and '}}')",
        )
    if not fields:
        raise _bad(owner, name, template, "a template containing '{concept}'")
    if any(spec or conv for _, spec, conv in parsed):
        raise _bad(
            owner, name, template, "a template with a plain '{concept}' (no format spec or conversion)"
        )


def render(template: str, text: str) -> str:
    """``template`` with ``text`` in every ``{concept}`` (templates are checked by :func:`check_template`)."""
    return template.format(concept=text)


def check_templates(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, tuple):
        raise _bad(owner, name, value, "a tuple of templates, e.g. ('a photo of {concept}',)", TypeError)
    for i, template in enumerate(value):
        check_template(owner, f"{name}[{i}]", template)


def check_betas(owner: str, value: Any) -> None:
    allowed = "a pair (beta1, beta2) of numbers in [0, 1)"
    if not isinstance(value, tuple) or len(value) != 2:
        raise _bad(owner, "betas", value, allowed, TypeError)
    for i, beta in enumerate(value):
        check_float(owner, f"betas[{i}]", beta, minimum=0.0, below=1.0)


def reference_steering_coeff(seq_len: int, width: int) -> float:
    """Norm of the whole HiRM-R target for an encoder with ``seq_len`` positions and ``width`` channels.

    The reference uses norm 5000 for a (1, 77, 768) tensor, i.e. a root-mean-square entry of
    5000 / sqrt(77 * 768) ≈ 20.5 (per-token norm ≈ 570). Other sizes keep that per-entry RMS, so the
    coefficient is ``5000 * sqrt(seq_len * width / (77 * 768))``; at 77 x 768 it is exactly 5000.
    """
    ref_len, ref_width = REFERENCE_TARGET_SHAPE
    return REFERENCE_STEERING_COEFF * math.sqrt(seq_len * width / (ref_len * ref_width))


# ----------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class RandomTarget:
    """HiRM-R: a fixed random direction ``rand(1, L, D)`` (uniform [0, 1)) drawn from ``seed``.

    Attributes:
        seed: the draw's seed (reference 42).
        scale: ``reference`` = the whole tensor normalised to norm ``coeff`` (``None`` =
            :func:`reference_steering_coeff`: 5000 on SD's 77 x 768, the same per-entry RMS elsewhere);
            ``readout-rms`` = rescaled so that its RMS is ``factor`` times the RMS of the concept's own
            read-out on the original encoder (over its prompts, all positions and channels).
        coeff: the norm for ``scale="reference"``; must stay ``None`` with ``readout-rms``.
        factor: the RMS ratio for ``scale="readout-rms"``; must stay 1 with ``reference``.
        draw_device: ``cpu`` (default) = a CPU generator: reproducible on every machine, equal to
            ``torch.manual_seed(seed); torch.rand(...)`` on the CPU but *not* the authors' tensor;
            ``cuda`` = the authors' draw (``torch.manual_seed(42); torch.rand(..., device="cuda")``),
            which needs a CUDA GPU. Both have the same distribution; only the numbers differ.

    When to use which scale: ``reference`` is the paper's setting and is calibrated for SD 1.x's CLIP-L
    read at the last block's attention output, whose activations are far smaller than an entry RMS of
    20.5, so the target lies far outside the natural range. For other read-outs (``final`` is
    layer-normalised, RMS ≈ 1) or other encoders (MiniCLIP) a fixed norm is arbitrary and can be
    hundreds of times the read-out's own scale; ``readout-rms`` with ``factor`` ≈ 1 keeps the target on
    the read-out's scale (issue 12 reports, on the first MiniCanvas with the final read-out, 100 steps
    and lr 5e-4, Cats, Horses, Pastel and Neon Lines erased at UA 83-100 %, IRA 70-95 %; no result file
    of ours backs those figures yet).
    """

    seed: int = 42
    coeff: float | None = None
    scale: TargetScale = "reference"
    factor: float = 1.0
    draw_device: DrawDevice = "cpu"
    kind: Literal["random"] = "random"

    def __post_init__(self) -> None:
        owner = "RandomTarget"
        check_seed(owner, "seed", self.seed)
        check_float(owner, "coeff", self.coeff, positive=True, optional=True)
        check_choice(owner, "scale", self.scale, get_args(TargetScale))
        check_float(owner, "factor", self.factor, positive=True)
        check_choice(owner, "draw_device", self.draw_device, get_args(DrawDevice))
        check_choice(owner, "kind", self.kind, ("random",))
        if self.scale == "readout-rms" and self.coeff is not None:
            raise _bad(owner, "coeff", self.coeff, "None with scale='readout-rms' (use factor)")
        if self.scale == "reference" and self.factor != 1.0:
            raise _bad(
                owner, "factor", self.factor, "1 with scale='reference' (use coeff, or scale='readout-rms')"
            )


@dataclass(frozen=True)
class PromptTarget:
    """HiRM-S (or any prompt): the same read-out of ``prompt`` on the original encoder, times ``coeff``.

    With ``templates`` in :class:`HiRMConfig`, the target of each templated prompt is the read-out of
    the same template with ``prompt`` in the concept's place (so the template's other words keep their
    meaning), not of the bare ``prompt``.
    """

    prompt: str
    coeff: float = 1.0
    kind: Literal["prompt"] = "prompt"

    def __post_init__(self) -> None:
        check_prompt("PromptTarget", "prompt", self.prompt, empty=True)
        check_float("PromptTarget", "coeff", self.coeff)
        check_choice("PromptTarget", "kind", self.kind, ("prompt",))


@dataclass(frozen=True)
class VectorTarget:
    """A target stored in a safetensors file under ``key``: shape (L, D), (1, L, D) or (D,) (broadcast)."""

    path: str
    key: str = "target"
    coeff: float = 1.0
    kind: Literal["file"] = "file"

    def __post_init__(self) -> None:
        check_prompt("VectorTarget", "path", self.path, empty=False)
        check_prompt("VectorTarget", "key", self.key, empty=False)
        check_float("VectorTarget", "coeff", self.coeff)
        check_choice("VectorTarget", "kind", self.kind, ("file",))


Target = RandomTarget | PromptTarget | VectorTarget


@dataclass(frozen=True)
class Concept:
    """One concept to erase: its text, its kind (picks reference lr/steps) and its target."""

    text: str
    kind: ConceptKind = "object"
    target: Target = field(default_factory=RandomTarget)

    def __post_init__(self) -> None:
        check_prompt("Concept", "text", self.text, empty=False)
        check_choice("Concept", "kind", self.kind, CONCEPT_KINDS)
        if not isinstance(self.target, (RandomTarget, PromptTarget, VectorTarget)):
            raise _bad(
                "Concept", "target", self.target, "a RandomTarget, PromptTarget or VectorTarget", TypeError
            )

    def record(self, *, target: bool = True) -> dict[str, Any]:
        """The concept as a patch records it; ``target=False`` for a method that ignores targets (UCE,
        ESD, ...), so that no patch claims a misdirection it never had."""
        out = asdict(self)
        if not target:
            del out["target"]
        return out


@dataclass(frozen=True)
class ReadingPoint:
    """Where the high-level representation is read.

    ``site``: ``attn`` = output of block ``layer``'s self-attention ``out_proj`` (before the residual
    add; the reference), ``mlp`` = output of block ``layer``'s MLP (before the residual add),
    ``hidden`` = the residual stream after block ``layer`` (``hidden_states[layer + 1]``; ``layer=-2``
    is what SDXL and SD3 feed their denoiser), ``final`` = the final layer norm output
    (``last_hidden_state``; ``layer`` is ignored and must stay -1). Negative ``layer`` counts from the end.
    """

    layer: int = -1
    site: ReadSite = "attn"

    def __post_init__(self) -> None:
        check_int("ReadingPoint", "layer", self.layer)
        check_choice("ReadingPoint", "site", self.site, get_args(ReadSite))
        if self.site == "final" and self.layer != -1:
            raise _bad("ReadingPoint", "layer", self.layer, "-1 with site='final' (the final layer norm)")


#: The reference reading point: the last block's self-attention output.
REFERENCE_READ = ReadingPoint()

#: HiRM's default reading point per model family, and why. SD 1.x/2.x feed the denoiser
#: ``last_hidden_state`` (the last block, layer-normalised), so the last block's attention output is the
#: latest point on the path to the U-Net (the authors' choice on SD 1.4). SDXL and SD3 feed it the
#: *penultimate* hidden state (``hidden_states[-2]``, no final layer norm): the last block only reaches
#: the pooled embedding, so the analogous point is the attention output of the second-to-last block.
#: Flux reads only CLIP's pooled output (the final layer norm at the end token), which the last block
#: feeds: the reference point. Not the authors' choice for SDXL/SD3 (they report SD 1.4 only): ours.
FAMILY_READ: dict[str, ReadingPoint] = {
    "sd": REFERENCE_READ,
    "flux": REFERENCE_READ,
    "text-encoder": REFERENCE_READ,
    "sdxl": ReadingPoint(layer=-2, site="attn"),
    "sd3": ReadingPoint(layer=-2, site="attn"),
}

#: What each family's denoiser reads from a CLIP encoder (the naive baseline supervises this output).
DENOISER_READ: dict[str, ReadingPoint] = {
    "sd": ReadingPoint(site="final"),
    "flux": ReadingPoint(site="final"),
    "text-encoder": ReadingPoint(site="final"),
    "sdxl": ReadingPoint(layer=-2, site="hidden"),
    "sd3": ReadingPoint(layer=-2, site="hidden"),
}


def family_read(family: str | None) -> ReadingPoint:
    """HiRM's default reading point for a model family (``None``: the reference point)."""
    return FAMILY_READ.get(family or "sd", REFERENCE_READ)


def denoiser_read(family: str | None) -> ReadingPoint:
    """The encoder output the family's denoiser reads (``None``: ``last_hidden_state``)."""
    return DENOISER_READ.get(family or "sd", DENOISER_READ["sd"])


# ------------------------------------------------------------------------------------------ HiRM


def check_training(owner: str, config: Any) -> None:
    """The fields HiRM and the naive baseline share (trainable set, optimizer, steps, precision)."""
    check_choice(owner, "trainable", config.trainable, TRAINABLE_SETS)
    check_int(owner, "k", config.k, minimum=1)
    if config.k != 1 and config.trainable != "first-k":
        raise _bad(owner, "k", config.k, f"1 unless trainable='first-k' (trainable is {config.trainable!r})")
    if not isinstance(config.params, tuple) or not all(isinstance(p, str) and p for p in config.params):
        raise _bad(owner, "params", config.params, "a tuple of exact parameter names", TypeError)
    if config.trainable == "params" and not config.params:
        raise _bad(owner, "params", config.params, "a non-empty tuple of names with trainable='params'")
    if config.params and config.trainable != "params":
        raise _bad(
            owner, "params", config.params, f"empty unless trainable='params' (it is {config.trainable!r})"
        )
    check_int(owner, "steps", config.steps, minimum=1, optional=True)
    check_float(owner, "lr", config.lr, positive=True, optional=True)
    check_betas(owner, config.betas)
    check_float(owner, "eps", config.eps, positive=True)
    check_float(owner, "weight_decay", config.weight_decay, minimum=0.0)
    check_seed(owner, "seed", config.seed)
    check_choice(owner, "precision", config.precision, get_args(Precision))


#: ``preserve_weight`` for a preserve set added by a strategy that is given none (the unweighted sum of
#: the misdirection and preservation MSEs): the multi-concept ``preserved`` / ``anchored`` strategies and
#: ``preserve_others`` of the comparison and the attack table.
DEFAULT_PRESERVE_WEIGHT = 1.0


@dataclass(frozen=True)
class HiRMConfig:
    """Everything HiRM needs besides the model and the concepts. ``None`` means "reference default".

    Attributes:
        trainable: which tensors are trained. The authors' names (their ``freeze_and_unfreeze_text_encoder``,
            resolved by exact name; "block 0" = their ``0.``-prefixed matches, "last block" = their
            ``11.`` on SD's 12-block CLIP-L):
            ``first-attn`` (reference) = block 0 self-attention q/k/v/out + MLP fc1/fc2;
            ``attn-only`` = the self-attention of *every* block; ``mlp-only`` = block 0's MLP;
            ``mlp-attn`` = block 0's MLP + every block's self-attention; ``final-attn`` = the last
            block's self-attention; ``mlp-final-attn`` = block 0's MLP + the last block's
            self-attention; ``mix-attn`` = block 0's self-attention and MLP + the last block's
            self-attention; ``all`` = every parameter of the encoder. Ours: ``block0-attn`` = block 0's
            self-attention only; ``first-k`` = attention + MLP of blocks ``0..k-1``; ``params`` =
            exactly the canonical names in ``params``. Weights and biases throughout.
        k: number of blocks for ``first-k`` (must stay 1 otherwise).
        params: explicit canonical parameter names for ``params`` (e.g.
            ``encoder.layers.0.self_attn.q_proj.weight``); must stay empty otherwise.
        read: the reading point; ``None`` = the model family's default (:data:`FAMILY_READ`: the
            reference on SD 1.x/2.x and Flux, the second-to-last block on SDXL/SD3).
        steps: optimizer steps; ``None`` = the largest reference value among the concepts.
        lr: AdamW learning rate; ``None`` = the largest reference value among the concepts.
        betas, eps, weight_decay: AdamW settings (reference values).
        seed: seeds anything random in training (the HiRM-R target has its own seed).
        templates: optional prompt templates with ``{concept}``; each concept is trained on every
            template. A prompt target is rendered in the same template (the super-category in the
            concept's place). Empty = the raw concept string (reference).
        preserve: prompts whose read-out should stay as on the original encoder.
        preserve_weight: weight of the preservation MSE; 0 = reference behaviour (no such term; then
            ``preserve`` must be empty).
        concept_weighting: ``mean`` = one MSE over every prompt (reference; several concepts share it
            in proportion to their prompts); ``balanced`` = each concept's MSE divided by its own value at
            step 0, so every concept pulls equally however far it starts from its target (ours, for
            joint multi-concept erasure).
        precision: arithmetic of the forward/backward. ``fp32`` = the authors' arithmetic; ``bf16``
            = autocast to bfloat16 (weights, optimizer state and loss stay fp32); ``auto`` (default) =
            bf16 where the hardware has native bf16 matrix units (CUDA >= sm80, CPU with AMX), else fp32.

    Differences from the authors' code with the defaults: ``precision="auto"`` trains under bf16 autocast
    on such hardware (theirs: fp32; pass ``precision="fp32"``); the HiRM-R target is drawn on the CPU
    (theirs: on CUDA; ``RandomTarget(draw_device="cuda")``); steps are the middle of the paper's
    per-kind ranges (the authors pick per concept); the result is a patch of the trained tensors, not
    the whole encoder. On SDXL/SD3 the reading point is ours (see ``read``).
    """

    trainable: TrainableSet = "first-attn"
    k: int = 1
    params: tuple[str, ...] = ()
    read: ReadingPoint | None = None
    steps: int | None = None
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 1e-8
    seed: int = 0
    templates: tuple[str, ...] = ()
    preserve: tuple[str, ...] = ()
    preserve_weight: float = 0.0
    concept_weighting: ConceptWeighting = "mean"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        owner = "HiRMConfig"
        check_training(owner, self)
        if self.read is not None and not isinstance(self.read, ReadingPoint):
            raise _bad(owner, "read", self.read, "a ReadingPoint or None (the family default)", TypeError)
        check_templates(owner, "templates", self.templates)
        check_prompts(owner, "preserve", self.preserve, empty=True)
        check_float(owner, "preserve_weight", self.preserve_weight, minimum=0.0)
        if self.preserve_weight > 0 and not self.preserve:
            raise _bad(
                owner, "preserve", self.preserve, "a non-empty tuple of prompts when preserve_weight > 0"
            )
        if self.preserve and self.preserve_weight == 0:
            raise _bad(owner, "preserve_weight", self.preserve_weight, "> 0 when preserve prompts are given")
        check_choice(owner, "concept_weighting", self.concept_weighting, get_args(ConceptWeighting))

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
    raise ValueError(f"Unknown target kind {kind!r}; expected 'random', 'prompt' or 'file'.")


def concept_from_dict(data: dict[str, Any]) -> Concept:
    return Concept(text=data["text"], kind=data["kind"], target=target_from_dict(data["target"]))


def config_from_dict(data: dict[str, Any]) -> HiRMConfig:
    data = dict(data)
    data["read"] = None if data.get("read") is None else ReadingPoint(**data["read"])
    for key in ("params", "templates", "preserve", "betas"):
        data[key] = tuple(data[key])
    return HiRMConfig(**data)
