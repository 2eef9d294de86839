"""DiffQuickFix (Basu, Zhao, Morariu, Feizi, Manjunatha, ICLR 2024, "Localizing and Editing Knowledge
in Text-to-Image Generative Models").

Causal tracing localises visual attributes in SD's CLIP text encoder to one state: block 0's
self-attention output at the concept's last token. DiffQuickFix edits only that block's output
projection ``W`` (``encoder.layers.0.self_attn.out_proj.weight``, shape (D, D)) in closed form so that
the concept's key is sent to a guide prompt's value::

    min_W'  sum_i ||W' k_i - v_i||^2 + lam ||W' - W||_F^2   =>   W' = (lam W + sum_i v_i k_i^T)(lam I + sum_i k_i k_i^T)^-1

``k_i`` = the input of ``out_proj`` (the attention-mixed values) at the last token of the concept in
prompt i; ``v_i = W k*_i`` = the weight's output at the last token of the guide in the same prompt
with the guide put in the concept's place (the bias is not edited, so it is left out of ``v``).
When the guide is the empty prompt it has no token: its value is read where its last token would
be followed, i.e. the first token after it (the end token for the bare empty prompt).
``lam`` = 0.01 as in the paper. ``templates`` give several (k, v) pairs per concept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hirm.core.config import Concept
from hirm.core.encoder import ConceptError, layers, resolve_layer
from hirm.core.patch import Patch, make_patch, merge_patches
from hirm.core.registry import MethodSpec, register
from hirm.core.uce import prompt_ids

logger = logging.getLogger(__name__)

_SLOT = "{concept}"


@dataclass(frozen=True)
class DiffQuickFixConfig:
    """DiffQuickFix settings; defaults follow the paper (block 0, lam 0.01).

    Attributes:
        guide: prompt the concept is mapped to (the paper maps e.g. "Van Gogh" -> "painting");
            default the empty prompt ``""``.
        templates: prompts with ``{concept}``; each gives one (key, value) pair per concept, the
            concept and the guide put in the slot. Empty = the bare concept string only.
        lam: weight of ``||W' - W||^2``; must be > 0.
        layer: block whose self-attention ``out_proj`` is edited (0 = the paper's causal state).
    """

    guide: str = ""
    templates: tuple[str, ...] = ()
    lam: float = 0.01
    layer: int = 0

    def __post_init__(self) -> None:
        if not (self.lam > 0 and math.isfinite(self.lam)):
            raise ValueError(f"lam must be a positive finite number, got {self.lam}.")
        if isinstance(self.templates, str):
            raise TypeError(
                "templates is a tuple of prompts, e.g. ('a photo of {concept}',), not one string."
            )
        for template in self.templates:
            if template.count(_SLOT) != 1:
                raise ValueError(f"Template {template!r} must contain '{{concept}}' exactly once.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slot_position(tokenizer, template: str, text: str) -> int:
    """Index (in the padded ids, start token = 0) of the last token of ``text`` placed in ``template``.

    If ``text`` and what precedes it have no tokens, the first position after the start token.
    """
    prefix = template[: template.index(_SLOT)] + text
    prefix_ids = tokenizer(prefix)["input_ids"]  # [start, tokens..., end]
    full_ids = tokenizer(template.replace(_SLOT, text))["input_ids"]
    index = len(prefix_ids) - 2 if len(prefix_ids) > 2 else 1
    if len(prefix_ids) > 2 and full_ids[: index + 1] != prefix_ids[: index + 1]:
        raise ConceptError(
            f"In {template.replace(_SLOT, text)!r} the tokens of {text!r} merge with the text after it; "
            "put a space or punctuation after '{concept}' in the template."
        )
    return index


@torch.no_grad()
def out_proj_inputs(encoder: nn.Module, tokenizer, prompts: Sequence[str], layer: int) -> Tensor:
    """The input of block ``layer``'s self-attention ``out_proj`` for ``prompts``, (B, L, D), via a pre-hook."""
    module = layers(encoder)[layer].self_attn.out_proj
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple) -> None:
        store["in"] = inputs[0].detach()

    device = next(encoder.parameters()).device
    ids, _ = prompt_ids(tokenizer, prompts, device=device)
    handle = module.register_forward_pre_hook(hook)
    try:
        encoder(input_ids=ids)
    finally:
        handle.remove()
    return store["in"]


def quickfix_weight(weight: Tensor, keys: Tensor, values: Tensor, lam: float) -> Tensor:
    """``W' = (lam W + V^T K)(lam I + K^T K)^-1`` in float64 (keys, values: (n, D) rows ``k_i``, ``v_i``).

    The right factor is symmetric, so ``W'^T = solve(lam I + K^T K, (lam W + V^T K)^T)``.
    """
    w, k, v = (x.detach().to(torch.float64) for x in (weight, keys, values))
    m = lam * torch.eye(k.shape[1], dtype=torch.float64, device=k.device) + k.T @ k
    return torch.linalg.solve(m, (lam * w + v.T @ k).T).T


def pairs(
    encoder: nn.Module, tokenizer, concepts: Sequence[Concept], config: DiffQuickFixConfig
) -> tuple[Tensor, Tensor]:
    """Keys (n, D) and values (n, D) for every concept x template, from the unedited ``encoder``."""
    layer = resolve_layer(encoder, config.layer)
    templates = list(config.templates) or [_SLOT]
    concept_prompts, guide_prompts, concept_pos, guide_pos = [], [], [], []
    for concept in concepts:
        for template in templates:
            concept_prompts.append(template.replace(_SLOT, concept.text))
            guide_prompts.append(template.replace(_SLOT, config.guide))
            concept_pos.append(slot_position(tokenizer, template, concept.text))
            guide_pos.append(slot_position(tokenizer, template, config.guide))
    inputs = out_proj_inputs(encoder, tokenizer, concept_prompts + guide_prompts, layer)  # (2n, L, D)
    n = len(concept_prompts)
    keys = inputs[torch.arange(n), torch.tensor(concept_pos)]
    guide_keys = inputs[n + torch.arange(n), torch.tensor(guide_pos)]
    weight = layers(encoder)[layer].self_attn.out_proj.weight
    return keys, guide_keys @ weight.detach().T  # v_i = W k*_i


def erase_encoder(
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: DiffQuickFixConfig,
    *,
    component: str,
    base: dict,
) -> Patch:
    """DiffQuickFix on one CLIP text encoder; returns a patch with its edited ``out_proj.weight``."""
    start = time.perf_counter()
    layer = resolve_layer(encoder, config.layer)
    name = f"encoder.layers.{layer}.self_attn.out_proj.weight"
    weight = layers(encoder)[layer].self_attn.out_proj.weight
    keys, values = pairs(encoder, tokenizer, concepts, config)
    edited = quickfix_weight(weight, keys, values, config.lam).to(weight.dtype)
    if not torch.isfinite(edited).all():
        raise FloatingPointError("DiffQuickFix produced non-finite weights; raise lam. Nothing was saved.")
    logger.info("DiffQuickFix edits %s/%s from %d key/value pairs.", component, name, keys.shape[0])
    return make_patch(
        method="diffquickfix",
        originals={f"{component}/{name}": weight.detach().clone()},
        edited={f"{component}/{name}": edited},
        config=config.to_dict(),
        concepts=[asdict(c) for c in concepts],
        base={"component": component, **base},
        extra={"seconds": time.perf_counter() - start, "num_pairs": int(keys.shape[0])},
    )


def erase(
    model,
    concepts: Sequence[Concept],
    config: DiffQuickFixConfig = DiffQuickFixConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """DiffQuickFix on every CLIP text encoder of ``model`` (a ``ModelHandle``), or only ``components``.

    Nothing is modified in place. ``progress`` is accepted for the common interface (closed form).
    """
    start = time.perf_counter()
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    selected = list(components or model.family.encoders)
    unknown = [c for c in selected if c not in model.family.encoders]
    if unknown:
        raise ValueError(
            f"{unknown} are not CLIP text encoders of this {model.family.name} model: {model.family.encoders}."
        )
    patches = [
        erase_encoder(
            model.text_encoder(name),
            model.tokenizer(name),
            concepts,
            config,
            component=name,
            base=model.base_info(),
        )
        for name in selected
    ]
    patch = merge_patches(patches)
    patch.metadata["seconds"] = time.perf_counter() - start
    return patch


register(
    MethodSpec(
        name="diffquickfix",
        config_cls=DiffQuickFixConfig,
        erase=erase,
        edits="CLIP text encoder block 0 self-attention out_proj weight, closed form",
        description="DiffQuickFix: Localizing and Editing Knowledge in Text-to-Image Models (Basu et al., ICLR 2024)",
    )
)
