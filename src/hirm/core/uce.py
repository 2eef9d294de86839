"""UCE: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska, Bau, WACV 2024, arXiv 2308.14761).

A closed-form edit of every U-Net cross-attention key and value projection ``W`` (``attn2.to_k``,
``attn2.to_v``; shape (d_out, d_in), d_in = the text encoder's width). With erased-concept embeddings
``c_i``, guide embeddings ``c*_i`` and preserved embeddings ``c_j``, the new weight solves (eq. 7)::

    min_W'  sum_i e ||W' c_i - W c*_i||^2 + sum_j p ||W' c_j - W c_j||^2 + lamb ||W' - W||_F^2

    W' = (lamb W + e sum_i W c*_i c_i^T + p sum_j W c_j c_j^T) (lamb I + e sum_i c_i c_i^T + p sum_j c_j c_j^T)^-1

with e = ``erase_scale``, p = ``preserve_scale``. The ``lamb W`` term on the left is the reference
code's (``mat1 = lamb * w_old``); without it the edit would shrink every direction the concepts do not
span. The right-hand factor depends only on the embeddings, so ``W' = W T`` with one d_in x d_in
matrix ``T = B M^-1`` shared by all layers; ``T`` is computed with ``torch.linalg.solve`` in float64.

Embeddings (reference code, ``trainscripts/uce_sd_erase.py``): the text encoder's ``last_hidden_state``
(what the pipeline feeds the U-Net) at the prompt's *last token* before the end token
(``attention_mask.sum() - 2``); for the empty guide that is the start token. ``tokens="all"`` uses
all L positions of each prompt instead, position by position (the concept's i-th row maps to the
guide's i-th row).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hirm.core.config import Concept
from hirm.core.encoder import ConceptError, tokenize
from hirm.core.patch import Patch, component_parameters, make_patch
from hirm.core.registry import MethodSpec, register

logger = logging.getLogger(__name__)

UceTokens = Literal["last", "all"]

#: Guide per concept kind when the config names none: the reference script guides art styles to
#: "art" and everything else to the empty prompt.
REFERENCE_GUIDE: dict[str, str] = {"style": "art", "object": "", "nudity": ""}


@dataclass(frozen=True)
class UCEConfig:
    """UCE settings; defaults are the reference script's (``erase_scale`` 1, ``preserve_scale`` 1, ``lamb`` 0.5).

    Attributes:
        guide: prompt every erased concept is mapped to; ``None`` = the reference choice per concept
            kind (``"art"`` for styles, the empty prompt ``""`` otherwise).
        preserve: prompts whose key/value outputs must stay as they are (empty by default).
        erase_scale: weight ``e`` of the erase terms.
        preserve_scale: weight ``p`` of the preserve terms.
        lamb: weight of ``||W' - W||^2`` (keeps everything else; the identity term); must be > 0.
        tokens: ``last`` = one embedding per prompt, its last token before the end token (reference);
            ``all`` = all L positions of each prompt, matched position by position.
        edit_keys: also edit ``to_k`` (reference: yes); ``False`` edits only ``to_v``.
    """

    guide: str | None = None
    preserve: tuple[str, ...] = ()
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.5
    tokens: UceTokens = "last"
    edit_keys: bool = True

    def __post_init__(self) -> None:
        if not (self.lamb > 0 and math.isfinite(self.lamb)):
            raise ValueError(
                f"lamb must be a positive finite number (it keeps M invertible), got {self.lamb}."
            )
        for name in ("erase_scale", "preserve_scale"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
        if self.tokens not in ("last", "all"):
            raise ValueError(f"tokens must be 'last' or 'all', got {self.tokens!r}.")
        if isinstance(self.preserve, str):
            raise TypeError("preserve is a tuple of prompts, e.g. ('dog',), not one string.")

    def guide_for(self, concept: Concept) -> str:
        return REFERENCE_GUIDE[concept.kind] if self.guide is None else self.guide

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_ids(
    tokenizer, prompts: Sequence[str], *, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Token ids (B, L) padded as SD pipelines do, and each prompt's number of real tokens (B,)
    (start and end tokens included). Unlike :func:`hirm.core.encoder.tokenize` the empty prompt is
    allowed (it is the usual guide); over-long prompts are still an error."""
    prompts = list(prompts)
    for prompt in prompts:
        if prompt.strip():
            tokenize(tokenizer, [prompt])  # raises ConceptError if it would be truncated
        elif prompt:
            raise ConceptError(f"Prompt {prompt!r} is only whitespace; use '' for the empty prompt.")
    out = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return out["input_ids"].to(device), out["attention_mask"].sum(dim=1)


@torch.no_grad()
def prompt_embeddings(encoder: nn.Module, tokenizer, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``last_hidden_state`` (B, L, D) of ``prompts`` as the pipeline computes it, and the lengths (B,)."""
    device = next(encoder.parameters()).device
    ids, lengths = prompt_ids(tokenizer, prompts, device=device)
    return encoder(input_ids=ids).last_hidden_state, lengths


def select_tokens(hidden: Tensor, lengths: Tensor, tokens: UceTokens) -> Tensor:
    """(B, L, D) -> (B * k, D): the last token before the end token (k = 1) or all positions (k = L)."""
    if tokens == "all":
        return hidden.reshape(-1, hidden.shape[-1])
    last = (lengths - 2).clamp(min=0).to(hidden.device)  # the empty prompt -> its start token (index 0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def uce_transform(
    erase: Tensor, guide: Tensor, preserve: Tensor, *, erase_scale: float, preserve_scale: float, lamb: float
) -> Tensor:
    """The d_in x d_in matrix ``T`` with ``W' = W T`` for every edited ``W`` (float64).

    Args:
        erase: erased-concept embeddings ``c_i``, (n, d_in).
        guide: their guide embeddings ``c*_i``, (n, d_in), row i paired with ``erase[i]``.
        preserve: preserved embeddings ``c_j``, (m, d_in) (m may be 0).

    ``W' = W B M^-1`` with ``B = lamb I + e sum c*_i c_i^T + p sum c_j c_j^T`` and
    ``M = lamb I + e sum c_i c_i^T + p sum c_j c_j^T``; M is symmetric positive definite, so
    ``T = B M^-1 = (M^-1 B^T)^T`` is one ``solve``.
    """
    if erase.shape != guide.shape:
        raise ValueError(
            f"erase {tuple(erase.shape)} and guide {tuple(guide.shape)} embeddings must pair up."
        )
    c, g, p = (x.detach().to(torch.float64) for x in (erase, guide, preserve))
    eye = torch.eye(c.shape[1], dtype=torch.float64, device=c.device)
    m = lamb * eye + erase_scale * c.T @ c + preserve_scale * p.T @ p  # sum_i c_i c_i^T = C^T C
    b = lamb * eye + erase_scale * g.T @ c + preserve_scale * p.T @ p  # sum_i c*_i c_i^T = G^T C
    return torch.linalg.solve(m, b.T).T


def cross_attention_names(unet: nn.Module, *, edit_keys: bool = True) -> list[str]:
    """Parameter names of every cross-attention (``attn2``) value and key projection weight, by exact name."""
    params = component_parameters(unet)
    projections = ("to_k", "to_v") if edit_keys else ("to_v",)
    names = [
        f"{name}.{proj}.weight"
        for name, _ in unet.named_modules()
        if name.split(".")[-1] == "attn2"
        for proj in projections
    ]
    names = [n for n in names if n in params]
    if not names:
        raise ValueError(
            f"{type(unet).__name__} has no cross-attention (attn2) to_k/to_v weights for UCE to edit."
        )
    return names


def _check_model(model, components: Sequence[str] | None) -> None:
    if model.family.name != "sd" or model.family.denoiser != "unet":
        raise ValueError(
            f"UCE is implemented for Stable Diffusion 1.x/2.x (one CLIP text encoder + U-Net); "
            f"{model.source} is a {model.family.name!r} model."
        )
    if components is not None and list(components) != ["unet"]:
        raise ValueError(f"UCE edits only the 'unet' component; got components={list(components)}.")


def erase(
    model,
    concepts: Sequence[Concept],
    config: UCEConfig = UCEConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """UCE on the U-Net of ``model`` (a ``ModelHandle``); returns a patch of the ``attn2`` k/v weights.

    Nothing is modified in place: the edit is computed from copies of the weights. ``progress`` is
    accepted for the common interface (the edit is one linear solve).
    """
    start = time.perf_counter()
    _check_model(model, components)
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    encoder, tokenizer = model.text_encoder("text_encoder"), model.tokenizer("text_encoder")
    unet = model.component("unet")

    guides = [config.guide_for(c) for c in concepts]
    texts = [c.text for c in concepts]
    hidden, lengths = prompt_embeddings(encoder, tokenizer, texts + guides + list(config.preserve))
    rows = select_tokens(hidden, lengths, config.tokens).reshape(hidden.shape[0], -1, hidden.shape[-1])
    n = len(concepts)
    width = hidden.shape[-1]
    c_erase, c_guide, c_keep = (x.reshape(-1, width) for x in (rows[:n], rows[n : 2 * n], rows[2 * n :]))

    names = cross_attention_names(unet, edit_keys=config.edit_keys)
    params = component_parameters(unet)
    bad = [name for name in names if params[name].shape[1] != width]
    if bad:
        raise ValueError(
            f"{bad[0]} takes inputs of width {params[bad[0]].shape[1]}, the text encoder gives {width}."
        )
    transform = uce_transform(
        c_erase,
        c_guide,
        c_keep,
        erase_scale=config.erase_scale,
        preserve_scale=config.preserve_scale,
        lamb=config.lamb,
    )
    originals = {f"unet/{name}": params[name].detach().clone() for name in names}
    edited = {key: (w.to(torch.float64) @ transform.to(w.device)).float() for key, w in originals.items()}
    if not all(torch.isfinite(v).all() for v in edited.values()):
        raise FloatingPointError("UCE produced non-finite weights; raise lamb. Nothing was saved.")
    logger.info("UCE edited %d cross-attention weights: %s", len(names), names)

    return make_patch(
        method="uce",
        originals=originals,
        edited=edited,
        config=config.to_dict(),
        concepts=[asdict(c) for c in concepts],
        base=model.base_info(),
        extra={"seconds": time.perf_counter() - start, "guides": guides, "num_edited": len(names)},
    )


register(
    MethodSpec(
        name="uce",
        config_cls=UCEConfig,
        erase=erase,
        edits="U-Net cross-attention (attn2) to_k / to_v weights, closed form",
        description="UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024, arXiv 2308.14761)",
    )
)
