"""UCE: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska, Bau, WACV 2024, arXiv 2308.14761).

A closed-form edit of every U-Net cross-attention key and value projection ``W`` (``attn2.to_k``,
``attn2.to_v``; shape (d_out, d_in), d_in = the text encoder's width). With erased-concept embeddings
``c_i``, guide embeddings ``c*_i`` and preserved embeddings ``c_j``, the new weight solves (eq. 7)::

    min_W'  sum_i e ||W' c_i - W c*_i||^2 + sum_j p ||W' c_j - W c_j||^2 + lamb ||W' - W||_F^2

    W' = (lamb W + e sum_i W c*_i c_i^T + p sum_j W c_j c_j^T) (lamb I + e sum_i c_i c_i^T + p sum_j c_j c_j^T)^-1

with e = ``erase_scale``, p = ``preserve_scale``, lamb = 0.5. The right-hand factor depends only on the
embeddings, so ``W' = W T`` with one d_in x d_in matrix ``T = B M^-1`` shared by all layers; ``T`` is
computed with ``torch.linalg.solve`` in float64. Embeddings are the text encoder's
``last_hidden_state`` (what the SD 1.x/2.x pipeline feeds the U-Net).

The authors' code exists in two generations, and which embedding rows enter the sums differs:

* ``tokens="paper"`` (default) follows the original ``train-scripts/train_erase.py`` (the repository
  before commit 4502388), which produced the paper's numbers. For each (concept, guide) pair it takes
  the rows from each prompt's *last real token* (``attention_mask.sum() - 2``) through the end token
  and all the padding, aligned at that last token and cut to the shorter of the two (77 - max of the
  two last-token positions rows per pair), so the concept's last word is paired with the guide's last
  word and end token with end token. The empty prompt ``''`` is always added to the preserve set, and
  every preserved prompt contributes all 77 rows. ``preserve_scale=None`` is that script's
  ``max(0.1, 1 / (1 + len(preserve)))``. The default guide is ``''`` (the script's ``' '``, which CLIP's
  tokenizer reads exactly as ``''``; its last real token is the start token).
* ``tokens="last"`` follows the rewritten ``trainscripts/uce_sd_erase.py``: one row per prompt, its last
  real token, for erased, guide and preserved prompts; no implicit preserve prompt; ``preserve_scale``
  1; default guide ``"art"`` for styles and ``''`` otherwise.

``expand_prompts=True`` is the rewritten script's ``--expand_prompts true``: besides the bare concept,
five templates per concept ("painting by", "art by", "artwork by", "picture by", "style of" for styles;
"image of", "photo of", "portrait of", "picture of", "painting of" otherwise), each paired with the guide
in the same template. (The original script's ``add_prompts`` paired them with the bare guide; not offered.)

An earlier ``tokens="all"`` paired rows position by position from the start token, so when concept and
guide had different lengths the concept's words met the guide's end or padding rows (the misalignment
the UCE author warns against in the repository's issue #3); it was removed in favour of ``paper``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from hirm.core.config import (
    Concept,
    check_bool,
    check_choice,
    check_float,
    check_prompt,
    check_prompts,
)
from hirm.core.encoder import ConceptError, tokenize
from hirm.core.patch import Patch, component_parameters, make_patch
from hirm.core.registry import MethodSpec, register

logger = logging.getLogger(__name__)

UceTokens = Literal["paper", "last"]

#: Guide per concept kind in the rewritten script (``tokens="last"``) when the config names none:
#: art styles go to "art", everything else to the empty prompt.
REWRITTEN_GUIDE: dict[str, str] = {"style": "art", "object": "", "nudity": ""}

#: The rewritten script's ``expand_prompts`` templates: "art" for styles, "object" for the rest.
EXPAND_TEMPLATES: dict[str, tuple[str, ...]] = {
    "art": ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"),
    "object": ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"),
}


@dataclass(frozen=True)
class UCEConfig:
    """UCE settings (see the module docstring for what each ``tokens`` mode follows).

    Attributes:
        tokens: ``paper`` = the original script's rows (last token through end + padding, aligned at
            the last token; ``''`` always preserved over 77 rows); ``last`` = the rewritten script's
            single last-token row per prompt.
        guide: prompt every erased concept is mapped to; ``None`` = the script's choice (``paper``: the
            empty prompt; ``last``: ``"art"`` for styles, ``''`` otherwise).
        preserve: prompts whose key/value outputs must stay as they are.
        erase_scale: weight ``e`` of the erase terms (both scripts: 1).
        preserve_scale: weight ``p`` of the preserve terms; ``None`` = the script's value (``paper``:
            ``max(0.1, 1 / (1 + len(preserve)))``; ``last``: 1).
        lamb: weight of ``||W' - W||^2`` (both scripts: 0.5); must be > 0.
        expand_prompts: add the rewritten script's five templates per concept (and guide).
        edit_keys: also edit ``to_k`` (both scripts: yes); ``False`` edits only ``to_v``.
    """

    tokens: UceTokens = "paper"
    guide: str | None = None
    preserve: tuple[str, ...] = ()
    erase_scale: float = 1.0
    preserve_scale: float | None = None
    lamb: float = 0.5
    expand_prompts: bool = False
    edit_keys: bool = True

    def __post_init__(self) -> None:
        owner = "UCEConfig"
        if self.tokens == "all":
            raise ValueError(
                "UCEConfig.tokens='all' was removed: it paired concept and guide rows from the start token, "
                "misaligning them when their lengths differ. Use 'paper' (the original script: rows from "
                "the last token on, aligned there) or 'last'."
            )
        check_choice(owner, "tokens", self.tokens, get_args(UceTokens))
        check_prompt(owner, "guide", self.guide, empty=True, optional=True)
        check_prompts(owner, "preserve", self.preserve, empty=True)
        check_float(owner, "erase_scale", self.erase_scale, minimum=0.0)
        check_float(owner, "preserve_scale", self.preserve_scale, minimum=0.0, optional=True)
        check_float(owner, "lamb", self.lamb, positive=True)
        check_bool(owner, "expand_prompts", self.expand_prompts)
        check_bool(owner, "edit_keys", self.edit_keys)

    def guide_for(self, concept: Concept) -> str:
        if self.guide is not None:
            return self.guide
        return "" if self.tokens == "paper" else REWRITTEN_GUIDE[concept.kind]

    def preserve_prompts(self) -> tuple[str, ...]:
        """The preserved prompts: the paper's script always puts ``''`` first."""
        return ("", *self.preserve) if self.tokens == "paper" else self.preserve

    def resolved_preserve_scale(self) -> float:
        if self.preserve_scale is not None:
            return self.preserve_scale
        return max(0.1, 1 / len(self.preserve_prompts())) if self.tokens == "paper" else 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def edit_pairs(concepts: Sequence[Concept], config: UCEConfig) -> tuple[list[str], list[str]]:
    """(erased prompts, guide prompts), pairwise: each concept with its guide, then, with
    ``expand_prompts``, every template with the concept and with the guide."""
    erased, guides = [], []
    for concept in concepts:
        guide = config.guide_for(concept)
        erased.append(concept.text)
        guides.append(guide)
        if config.expand_prompts:
            templates = EXPAND_TEMPLATES["art" if concept.kind == "style" else "object"]
            erased.extend(t.format(concept.text) for t in templates)
            guides.extend(t.format(guide) for t in templates)
    return erased, guides


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


def last_token(lengths: Tensor) -> Tensor:
    """Index of each prompt's last real token before the end token (``attention_mask.sum() - 2``;
    the start token for the empty prompt)."""
    return lengths - 2


def aligned_rows(hidden: Tensor, lengths: Tensor, a: int, b: int, tokens: UceTokens) -> tuple[Tensor, Tensor]:
    """Rows of prompts ``a`` (erased) and ``b`` (guide) of ``hidden`` (B, L, D) that pair up, (k, D) each.

    ``last``: k = 1, each prompt's last real token. ``paper``: from each last real token to the end,
    aligned there: rows ``i_a + j`` and ``i_b + j`` for ``j < L - max(i_a, i_b)``.
    """
    i_a, i_b = int(last_token(lengths[a])), int(last_token(lengths[b]))
    if tokens == "last":
        return hidden[a, i_a : i_a + 1], hidden[b, i_b : i_b + 1]
    k = hidden.shape[1] - max(i_a, i_b)
    return hidden[a, i_a : i_a + k], hidden[b, i_b : i_b + k]


def preserved_rows(hidden: Tensor, lengths: Tensor, index: int, tokens: UceTokens) -> Tensor:
    """Rows of preserved prompt ``index``: all L (``paper``) or its last real token (``last``)."""
    if tokens == "paper":
        return hidden[index]
    i = int(last_token(lengths[index]))
    return hidden[index, i : i + 1]


def uce_embeddings(
    encoder: nn.Module, tokenizer, concepts: Sequence[Concept], config: UCEConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """The erased, guide and preserved embedding rows ``c_i`` (n, D), ``c*_i`` (n, D), ``c_j`` (m, D)."""
    erased, guides = edit_pairs(concepts, config)
    keep = config.preserve_prompts()
    hidden, lengths = prompt_embeddings(encoder, tokenizer, [*erased, *guides, *keep])
    n = len(erased)
    pairs = [aligned_rows(hidden, lengths, i, n + i, config.tokens) for i in range(n)]
    kept = [preserved_rows(hidden, lengths, 2 * n + j, config.tokens) for j in range(len(keep))]
    width = hidden.shape[-1]
    c_keep = torch.cat(kept) if kept else hidden.new_zeros(0, width)
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]), c_keep


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


def transform_cross_attention(
    unet: nn.Module, transform: Tensor, *, edit_keys: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(originals, edited)`` of every cross-attention k/v weight (``unet/<name>`` keys): ``W`` and
    ``W T`` for the d_in x d_in ``transform`` (computed in float64), the caller's U-Net untouched."""
    names = cross_attention_names(unet, edit_keys=edit_keys)
    params = component_parameters(unet)
    width = transform.shape[0]
    bad = [name for name in names if params[name].shape[1] != width]
    if bad:
        raise ValueError(
            f"{bad[0]} takes inputs of width {params[bad[0]].shape[1]}, the text encoder gives {width}."
        )
    originals = {f"unet/{name}": params[name].detach().clone() for name in names}
    edited = {key: (w.to(torch.float64) @ transform.to(w.device)).float() for key, w in originals.items()}
    return originals, edited


def check_unet_model(model, components: Sequence[str] | None, method: str = "UCE") -> None:
    """``model`` is SD 1.x/2.x (one CLIP text encoder + U-Net) and ``components`` names only the U-Net."""
    if model.family.name != "sd" or model.family.denoiser != "unet":
        raise ValueError(
            f"{method} is implemented for Stable Diffusion 1.x/2.x (one CLIP text encoder + U-Net); "
            f"{model.source} is a {model.family.name!r} model."
        )
    if components is not None and list(components) != ["unet"]:
        raise ValueError(f"{method} edits only the 'unet' component; got components={list(components)}.")


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
    check_unet_model(model, components)
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    encoder, tokenizer = model.text_encoder("text_encoder"), model.tokenizer("text_encoder")
    unet = model.component("unet")

    c_erase, c_guide, c_keep = uce_embeddings(encoder, tokenizer, concepts, config)
    transform = uce_transform(
        c_erase,
        c_guide,
        c_keep,
        erase_scale=config.erase_scale,
        preserve_scale=config.resolved_preserve_scale(),
        lamb=config.lamb,
    )
    originals, edited = transform_cross_attention(unet, transform, edit_keys=config.edit_keys)
    if not all(torch.isfinite(v).all() for v in edited.values()):
        raise FloatingPointError("UCE produced non-finite weights; raise lamb. Nothing was saved.")
    logger.info("UCE edited %d cross-attention weights: %s", len(edited), sorted(edited))

    return make_patch(
        method="uce",
        originals=originals,
        edited=edited,
        config=config.to_dict(),
        concepts=[c.record(target=False) for c in concepts],
        base=model.base_info(),
        extra={
            "seconds": time.perf_counter() - start,
            "guides": [config.guide_for(c) for c in concepts],
            "num_edited": len(edited),
            "rows": {"erase": int(c_erase.shape[0]), "preserve": int(c_keep.shape[0])},
            "preserve_scale": config.resolved_preserve_scale(),
        },
    )


register(
    MethodSpec(
        name="uce",
        config_cls=UCEConfig,
        erase=erase,
        edits="U-Net cross-attention (attn2) to_k / to_v weights, closed form",
        description="UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024, arXiv 2308.14761)",
        follows="rohitgandikota/unified-concept-editing train-scripts/train_erase.py (before the rewrite; tokens='last' = trainscripts/uce_sd_erase.py)",
    )
)
