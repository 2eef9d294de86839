"""KV-Proj: make the U-Net's cross-attention blind to the concept's subspace (ours; not a published method).

Every U-Net cross-attention key and value projection ``W`` (``attn2.to_k``, ``attn2.to_v``; shape
(d_out, d_in), d_in = the text encoder's width) is replaced by ``W' = W T`` with the orthogonal projection
``T = I - Q Q^T`` onto the complement of a subspace ``S = span(Q)`` of the text encoder's output space
where the concept lives (``Q``: d_in x r, orthonormal; ``T Q = 0``).

The directions come from the differences ``D`` between the encoder's output rows (``last_hidden_state``,
all L positions: CLIP's causal attention carries a word into every later row, the padding included) for
the concept in each of ``templates`` and the mean of the same templates with each ``contrast`` word in
its place (default: the concept left out, ``''``):

* without ``preserve``: the top ``rank`` right singular vectors of ``D`` (the directions of most
  difference energy);
* with ``preserve`` (concepts put in the same templates): the top ``rank`` generalized eigenvectors of
  ``(D^T D / n_D) u = mu (Sigma + ridge * mean_eig * I) u``, ``Sigma`` the second moment of the
  preserved rows: the directions where the concept differs most *relative to* how much the preserved
  prompts use them (a Rayleigh quotient, as in Fisher's discriminant), so removing them moves the
  preserved rows little; orthonormalized, they span ``S``. A large ``ridge`` returns to the first case.

Several concepts: each its own ``rank`` directions, joined (an orthonormal basis of their union).

Measured on the world's Pastel (2-core CPU, fp32 grid; ``results/attacks_kv_proj_rank/``, made with
``benchmarks/attacks.py``: world training templates, the other styles as ``contrast``): the rank trades
what textual inversion recovers against CRA. Rank 4 alone: UA 95 %, IRA 95.3 %, CRA 95.5 %, textual
inversion 2.5 % (n = 20 / 380 / 400 / 40); with HiRM, ranks 4 / 8 / 16: CRA 84.8 / 81.8 / 52.5 %,
textual inversion 2.5 / 0 / 0 %. Two variants that move the other styles less gave the attack the
concept back (Pastel with HiRM, rank 16): ``contrast=('',)`` with the other styles as ``preserve`` (UA 90 %,
IRA 100 %, CRA 92 %, textual inversion 60 %), and an oblique projection that moves the preserved rows
least for the same ``S`` (the generalized least-squares one; UA 95 %, IRA 99.7 %, CRA 90 %, textual
inversion 47.5 %; no longer offered): what stops the attack is removing directions the concept shares
with its neighbours, which is also what costs the neighbours.

Why a subspace rather than UCE's point edit: UCE maps the concept's embedding rows to the guide's, so
an attacker that controls the encoder's input (a learned token, Pham et al. 2023) looks for another
output the unedited directions turn into the concept. After ``W' = W T`` every output's component along
``S`` is gone, whatever the input; the cross-attention inputs of all layers together (full column rank)
can no longer reproduce a concept row ``c`` exactly, only its part outside ``S``. The price is what other
prompts keep in ``S``, which ``preserve`` lowers. Related: SAFREE (Yoon et al., ICLR 2025) projects
token embeddings away from a toxic-concept subspace at inference time; this is a weight edit, so it
travels as a patch and composes with HiRM's text-encoder patch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hirm.core.config import (
    Concept,
    check_bool,
    check_float,
    check_int,
    check_prompts,
    check_templates,
    render,
)
from hirm.core.patch import Patch, make_patch
from hirm.core.registry import MethodSpec, register
from hirm.core.uce import EXPAND_TEMPLATES, check_unet_model, prompt_embeddings, transform_cross_attention

logger = logging.getLogger(__name__)

#: Default templates per concept kind: the bare concept and the five templates of UCE's rewritten script
#: (``expand_prompts``) for its kind.
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    kind: ("{concept}", *(t.replace("{}", "{concept}") for t in EXPAND_TEMPLATES[group]))
    for kind, group in (("style", "art"), ("object", "object"), ("nudity", "object"))
}


@dataclass(frozen=True)
class KVProjConfig:
    """KV-Proj settings (see the module docstring).

    Attributes:
        rank: directions removed per concept (the subspace's dimension ``r``); must be below the
            encoder's width.
        templates: prompt templates with ``{concept}``; ``()`` = :data:`DEFAULT_TEMPLATES` of the
            concept's kind.
        contrast: words put in the concept's place to contrast with (the differences' reference is the
            mean over them); default the concept left out, ``''``.
        preserve: concepts (put in the same templates) whose rows the removed directions should touch
            least (the generalized eigenproblem above); ``()`` = plain SVD directions.
        ridge: ``Sigma``'s ridge relative to its mean eigenvalue (with ``preserve``); must be > 0.
        edit_keys: also edit ``to_k``; ``False`` edits only ``to_v``.
    """

    rank: int = 16
    templates: tuple[str, ...] = ()
    contrast: tuple[str, ...] = ("",)
    preserve: tuple[str, ...] = ()
    ridge: float = 1e-3
    edit_keys: bool = True

    def __post_init__(self) -> None:
        owner = "KVProjConfig"
        check_int(owner, "rank", self.rank, minimum=1)
        check_templates(owner, "templates", self.templates)
        check_prompts(owner, "contrast", self.contrast, empty=True)
        if not self.contrast:
            raise ValueError("KVProjConfig.contrast must name at least one word ('' = the concept left out).")
        check_prompts(owner, "preserve", self.preserve)
        check_float(owner, "ridge", self.ridge, positive=True)
        check_bool(owner, "edit_keys", self.edit_keys)

    def templates_for(self, concept: Concept) -> tuple[str, ...]:
        return self.templates or DEFAULT_TEMPLATES[concept.kind]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rows(encoder: nn.Module, tokenizer, prompts: Sequence[str], *, batch: int = 256) -> Tensor:
    """The encoder's output rows of ``prompts`` as the pipeline computes them: (len(prompts), L, D), float64."""
    out = [
        prompt_embeddings(encoder, tokenizer, prompts[i : i + batch])[0].to(torch.float64)
        for i in range(0, len(prompts), batch)
    ]
    return torch.cat(out)


def concept_differences(
    encoder: nn.Module, tokenizer, concept: str, templates: Sequence[str], contrast: Sequence[str]
) -> Tensor:
    """``D``: (len(templates) * L, D) rows, the concept's rows minus the mean of the contrast words' rows."""
    named = rows(encoder, tokenizer, [render(t, concept) for t in templates])
    reference = torch.stack(
        [rows(encoder, tokenizer, [render(t, word) for t in templates]) for word in contrast]
    ).mean(0)
    return (named - reference).reshape(-1, named.shape[-1])


def top_directions(diff: Tensor, rank: int, keep: Tensor | None = None, *, ridge: float = 1e-3) -> Tensor:
    """(D, rank) directions: the top right singular vectors of ``diff`` (``keep`` None or empty), else the
    top generalized eigenvectors of ``(diff^T diff / n, Sigma + ridge * mean_eig I)`` with ``Sigma = keep^T
    keep / m`` (``keep``: (m, D) preserved rows), by a Cholesky reduction to a symmetric eigenproblem."""
    diff = diff.to(torch.float64)
    if rank > min(diff.shape):
        raise ValueError(
            f"KV-Proj rank {rank} exceeds what {diff.shape[0]} difference rows of width {diff.shape[1]} can "
            "span; lower rank or add templates."
        )
    if keep is None or keep.shape[0] == 0:
        _, _, vh = torch.linalg.svd(diff, full_matrices=False)
        return vh[:rank].T
    keep = keep.to(torch.float64)
    eye = torch.eye(diff.shape[1], dtype=torch.float64, device=diff.device)
    sigma = keep.T @ keep / keep.shape[0]
    b = sigma + ridge * sigma.trace() / sigma.shape[0] * eye
    a = diff.T @ diff / diff.shape[0]
    lower = torch.linalg.cholesky(b)  # b = L L^T; with y = L^T u: L^-1 a L^-T y = mu y
    c = torch.linalg.solve_triangular(
        lower, torch.linalg.solve_triangular(lower, a, upper=False).T, upper=False
    )
    _, vecs = torch.linalg.eigh((c + c.T) / 2)  # ascending
    y = vecs[:, -rank:].flip(1)
    return torch.linalg.solve_triangular(lower.T, y, upper=True)


def subspace(
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: KVProjConfig,
    keep: Tensor | None = None,
) -> Tensor:
    """The removed subspace's orthonormal basis ``Q`` (D, r_total): every concept's directions, joined."""
    parts = [
        top_directions(
            concept_differences(encoder, tokenizer, c.text, config.templates_for(c), config.contrast),
            config.rank,
            keep,
            ridge=config.ridge,
        )
        for c in concepts
    ]
    joined = torch.cat(parts, dim=1)
    if joined.shape[1] >= joined.shape[0]:
        raise ValueError(
            f"KV-Proj would remove {joined.shape[1]} directions of a {joined.shape[0]}-wide encoder; lower rank."
        )
    q, r = torch.linalg.qr(joined)
    return q[:, r.diagonal().abs() > 1e-9 * r.diagonal().abs().max()]


def erase(
    model,
    concepts: Sequence[Concept],
    config: KVProjConfig = KVProjConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """KV-Proj on the U-Net of ``model`` (a ``ModelHandle``); returns a patch of the ``attn2`` k/v weights.

    Nothing is modified in place. ``progress`` is accepted for the common interface (one SVD and solve).
    """
    start = time.perf_counter()
    check_unet_model(model, components, "KV-Proj")
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    encoder, tokenizer = model.text_encoder("text_encoder"), model.tokenizer("text_encoder")
    unet = model.component("unet")
    keep = None
    if config.preserve:
        templates = tuple(dict.fromkeys(t for c in concepts for t in config.templates_for(c)))
        kept = rows(encoder, tokenizer, [render(t, p) for p in config.preserve for t in templates])
        keep = kept.reshape(-1, kept.shape[-1])
    u = subspace(encoder, tokenizer, concepts, config, keep)
    transform = torch.eye(u.shape[0], dtype=torch.float64, device=u.device) - u @ u.T

    originals, edited = transform_cross_attention(unet, transform, edit_keys=config.edit_keys)
    logger.info("KV-Proj removed %d directions from %d cross-attention weights", u.shape[1], len(edited))
    return make_patch(
        method="kv-proj",
        originals=originals,
        edited=edited,
        config=config.to_dict(),
        concepts=[c.record(target=False) for c in concepts],
        base=model.base_info(),
        extra={
            "seconds": time.perf_counter() - start,
            "num_edited": len(edited),
            "removed_directions": int(u.shape[1]),
            "preserved_rows": 0 if keep is None else int(keep.shape[0]),
        },
    )


register(
    MethodSpec(
        name="kv-proj",
        config_cls=KVProjConfig,
        erase=erase,
        edits="U-Net cross-attention k/v (attn2.to_k, attn2.to_v)",
        description="Projects the concept's subspace out of every cross-attention k/v input (ours)",
        follows="no published script: ours (module docstring); related to SAFREE's embedding projection",
    )
)
