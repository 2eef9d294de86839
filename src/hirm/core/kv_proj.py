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
* with ``spare`` (words, e.g. the other domain's concepts, in ``spare_templates``): the same generalized
  eigenvectors with ``Sigma`` the second moment of what tells the spared words *apart*: each word's rows
  minus the mean over the words in the same template. Raw rows (``preserve``) are dominated by what all
  prompts share (the start token, the padding); their differences are what a classifier of the other
  domain reads, i.e. what CRA measures.

Several concepts: each its own ``rank`` directions, joined (an orthonormal basis of their union).

**Keys blind to fewer directions** (``key_rank``; ours): the values stay blind to all of ``S``, the keys
only to the ``key_rank`` directions of each concept (of its orthonormalized ``rank``) that matter most to
the U-Net: removed alone from the concept's prompts (``e T_j``, ``T_j = I - q_j q_j^T``), they bring the
original U-Net's noise prediction closest to the contrast words' prediction, ``toward_j = 1 - |eps(e T_j)
- eps(m)|^2 / |eps(e) - eps(m)|^2`` on the concept's noised latents (the hardening's pool, below: the
method's templates, never the grid's). Measured on the world's Neon Lines (grid, one seed, n = 20 / 380 /
400 images; 2-core AMD EPYC, bf16 grid): rank 4 on keys and values erases it (UA 95 %) but takes Cats and
Statues from every style (6 and 8 of 20 left; CRA 87.8 %); one of the four directions alone, on keys and
values, erases as much (UA 100 %, CRA 95.2 %), the other three alone nothing (UA 0 %); values blind to all
four erase 20 %, keys and values blind to all four but keys to the one direction 90 % (CRA 96.0 %), to
any other one 15-35 % (``benchmarks/kv_proj_directions.py``, ``results/kv_proj_directions/``). Its ``toward`` score is 0.22 against -0.07 to 0.02 for the other three (the default 16
latents). On three styles (``results/attacks_kv_proj_key_rank/``; attacks as textual inversion /
UnlearnDiffAtk / Ring-A-Bell, n = 120 each): ``key_rank`` = 1 keeps CRA 96.2 % but gives 14.2 / 14.2 /
5.0 % back (rank 4 on both: CRA 92.6 %, 6.7 / 10.0 / 2.5 %); rank 8 with ``key_rank`` = 1 holds 5.0 / 5.0 /
3.3 % at CRA 95.6 %, IRA 99.7 %: the values' directions stop the attacks, the keys' cost CRA. Chosen on
those three, it does not carry over to six held-out styles (``results/attacks_kv_proj_heldout/``: 20.8 /
14.2 / 8.8 %, n = 240 each, CRA 92.9 %; Crayon 47.5 % and Pop_Art 50.0 % under textual inversion,
Watercolor 42.5 % under UnlearnDiffAtk). On objects
the keys' one direction keeps CRA 100 % and the attacks recover as much as with rank 4 on both.
What it gives up: the values still ignore every component in ``S`` whatever the input, the keys only the
``key_rank`` directions, so attention can still be drawn to a token along the others (what it then
reads is blind to ``S``).

**Hardening** (``harden_rounds``; ours): what the first directions miss is what an attacker finds. Each
round learns, per concept, the one word embedding ``v`` that in the concept's place in ``templates`` best
brings back the *original* U-Net's noise predictions for the concept through the edit so far (textual
inversion against the edited model, without images: ESD's partial guided sampling of the concept's
prompts by the original model gives the noised latents, and the original prediction there is the
target; the edited U-Net reading ``e`` is the original reading ``e T``). The ``harden_rank`` top right
singular vectors of what ``v`` still puts through, ``T (e_v - m)`` over every row of the templates (``m``
the contrast rows, as above), join ``S``. The templates are the method's own (on the world: its training
templates, never the grid's), so an attack on the grid prompts is not what the rounds trained against.
Measured on the world (``results/attacks_kv_proj/``, three styles and three objects, rank 4 + one round of
4): against the prompt searches it holds better than rank 4 (styles UnlearnDiffAtk 1.7 % against 10.0 %;
on Cats 35.0 % against 47.5 % for plain rank 8, at the same CRA), not against textual inversion on
every concept, and the extra directions cost the world as a higher rank does (styles CRA 80.1 % against
92.6 %). It is an option, off by default.

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
from tqdm.auto import trange

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
        spare: words (at least two; e.g. the other domain's concepts) whose differences from one another
            the removed directions should touch least (``Sigma`` of their centred rows; not with
            ``preserve``). The first ``rank`` directions only: hardening's are plain.
        spare_templates: ``{concept}`` templates the ``spare`` words are put in; ``()`` = the concept's
            ``templates``.
        ridge: ``Sigma``'s ridge relative to its mean eigenvalue (with ``preserve`` or ``spare``); must
            be > 0. Larger keeps more of the plain directions' concept energy, and spares less.
        edit_keys: also edit ``to_k``; ``False`` edits only ``to_v``.
        key_rank: the keys are blind only to this many of each concept's directions, the ones the U-Net
            needs most (the ``toward`` score above, on the hardening's pool: ``harden_samples``,
            ``ddim_steps``, ``guidance``, ``seed``); the values to all. ``None``: keys and values alike.
            At most ``rank``; not with ``edit_keys=False`` or hardening.
        harden_rounds: rounds of hardening against a learned embedding (0: none; see :func:`harden`):
            each round learns the word embedding that, in the concept's place in ``templates``, best
            brings back the original U-Net's noise predictions for the concept through the edit so far,
            and adds ``harden_rank`` directions of what it found to the subspace.
        harden_rank: directions added per concept and round.
        harden_steps, harden_lr: the learned embedding's Adam steps and learning rate.
        harden_samples: noised latents the embedding is fitted on (per concept; ESD's way: partial
            guided sampling of the concept's prompts by the original model, ``ddim_steps``, ``guidance``).
        ddim_steps, guidance: that sampling's DDIM steps and guidance scale (ESD's defaults, 50 and 3).
        seed: the sampling's and the rounds' random seed.
    """

    rank: int = 16
    templates: tuple[str, ...] = ()
    contrast: tuple[str, ...] = ("",)
    preserve: tuple[str, ...] = ()
    spare: tuple[str, ...] = ()
    spare_templates: tuple[str, ...] = ()
    ridge: float = 1e-3
    edit_keys: bool = True
    key_rank: int | None = None
    harden_rounds: int = 0
    harden_rank: int = 4
    harden_steps: int = 100
    harden_lr: float = 5e-3
    harden_samples: int = 16
    ddim_steps: int = 50
    guidance: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "KVProjConfig"
        check_int(owner, "rank", self.rank, minimum=1)
        check_int(owner, "harden_rounds", self.harden_rounds, minimum=0)
        for name in ("harden_rank", "harden_steps", "harden_samples", "ddim_steps"):
            check_int(owner, name, getattr(self, name), minimum=1)
        check_float(owner, "harden_lr", self.harden_lr, positive=True)
        check_float(owner, "guidance", self.guidance, positive=True)
        check_int(owner, "seed", self.seed, minimum=0)
        check_templates(owner, "templates", self.templates)
        check_prompts(owner, "contrast", self.contrast, empty=True)
        if not self.contrast:
            raise ValueError("KVProjConfig.contrast must name at least one word ('' = the concept left out).")
        check_prompts(owner, "preserve", self.preserve)
        check_prompts(owner, "spare", self.spare)
        check_templates(owner, "spare_templates", self.spare_templates)
        if self.spare and len(self.spare) < 2:
            raise ValueError("KVProjConfig.spare needs at least two words (their differences are spared).")
        if self.spare and self.preserve:
            raise ValueError("KVProjConfig: give preserve or spare, not both.")
        if self.spare_templates and not self.spare:
            raise ValueError("KVProjConfig.spare_templates is given without spare words; add spare.")
        check_float(owner, "ridge", self.ridge, positive=True)
        check_bool(owner, "edit_keys", self.edit_keys)
        if self.key_rank is not None:
            check_int(owner, "key_rank", self.key_rank, minimum=1)
            if self.key_rank > self.rank:
                raise ValueError(
                    f"KVProjConfig.key_rank ({self.key_rank}) exceeds rank ({self.rank}); lower key_rank."
                )
            if not self.edit_keys:
                raise ValueError(
                    "KVProjConfig.key_rank needs edit_keys=True (it chooses the keys' directions)."
                )
            if self.harden_rounds:
                raise ValueError(
                    "KVProjConfig.key_rank does not combine with harden_rounds; set one of them."
                )

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
    return (named - contrast_rows(encoder, tokenizer, templates, contrast)).reshape(-1, named.shape[-1])


def contrast_rows(encoder: nn.Module, tokenizer, templates: Sequence[str], contrast: Sequence[str]) -> Tensor:
    """``m``: (len(templates), L, D), the mean rows of the ``contrast`` words put in each template."""
    return torch.stack(
        [rows(encoder, tokenizer, [render(t, word) for t in templates]) for word in contrast]
    ).mean(0)


def top_directions(diff: Tensor, rank: int, sigma: Tensor | None = None, *, ridge: float = 1e-3) -> Tensor:
    """(D, rank) directions: the top right singular vectors of ``diff`` (``sigma`` None), else the top
    generalized eigenvectors of ``(diff^T diff / n, sigma + ridge * mean_eig I)`` (``sigma``: (D, D), the
    second moment of the rows to keep, :func:`second_moment` / :func:`spared_moment`), by a Cholesky
    reduction to a symmetric eigenproblem."""
    diff = diff.to(torch.float64)
    if rank > min(diff.shape):
        raise ValueError(
            f"KV-Proj rank {rank} exceeds what {diff.shape[0]} difference rows of width {diff.shape[1]} can "
            "span; lower rank or add templates."
        )
    if sigma is None:
        _, _, vh = torch.linalg.svd(diff, full_matrices=False)
        return vh[:rank].T
    sigma = sigma.to(torch.float64)
    eye = torch.eye(diff.shape[1], dtype=torch.float64, device=diff.device)
    b = sigma + ridge * sigma.trace() / sigma.shape[0] * eye
    a = diff.T @ diff / diff.shape[0]
    lower = torch.linalg.cholesky(b)  # b = L L^T; with y = L^T u: L^-1 a L^-T y = mu y
    c = torch.linalg.solve_triangular(
        lower, torch.linalg.solve_triangular(lower, a, upper=False).T, upper=False
    )
    _, vecs = torch.linalg.eigh((c + c.T) / 2)  # ascending
    y = vecs[:, -rank:].flip(1)
    return torch.linalg.solve_triangular(lower.T, y, upper=True)


def second_moment(keep: Tensor) -> Tensor:
    """``keep^T keep / m`` of (m, D) rows, float64."""
    keep = keep.to(torch.float64)
    return keep.T @ keep / keep.shape[0]


def spared_moment(
    encoder: nn.Module, tokenizer, words: Sequence[str], templates: Sequence[str], *, chunk: int = 8
) -> tuple[Tensor, int]:
    """The second moment (D, D) of what tells ``words`` apart: each word's rows in each template minus the
    mean over the words in that template, accumulated ``chunk`` templates at a time; and the row count."""
    total, count = None, 0
    for i in range(0, len(templates), chunk):
        part = templates[i : i + chunk]
        named = torch.stack([rows(encoder, tokenizer, [render(t, w) for t in part]) for w in words])
        centred = (named - named.mean(0, keepdim=True)).reshape(-1, named.shape[-1])
        total = centred.T @ centred if total is None else total + centred.T @ centred
        count += centred.shape[0]
    assert total is not None
    return total / count, count


def concept_directions(
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: KVProjConfig,
    sigma: Tensor | None = None,
) -> list[Tensor]:
    """Each concept's ``rank`` directions (D, rank), orthonormalized in their order."""
    parts = []
    for c in concepts:
        directions = top_directions(
            concept_differences(encoder, tokenizer, c.text, config.templates_for(c), config.contrast),
            config.rank,
            sigma,
            ridge=config.ridge,
        )
        parts.append(torch.linalg.qr(directions)[0])
    return parts


def basis(parts: Sequence[Tensor]) -> Tensor:
    """An orthonormal basis (D, r_total) of the union of ``parts``' spans, the first part's first."""
    joined = torch.cat(list(parts), dim=1)
    if joined.shape[1] >= joined.shape[0]:
        raise ValueError(
            f"KV-Proj would remove {joined.shape[1]} directions of a {joined.shape[0]}-wide encoder; lower rank."
        )
    q, r = torch.linalg.qr(joined)
    return q[:, r.diagonal().abs() > 1e-9 * r.diagonal().abs().max()]


def subspace(
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: KVProjConfig,
    sigma: Tensor | None = None,
) -> Tensor:
    """The removed subspace's orthonormal basis ``Q`` (D, r_total): every concept's directions, joined."""
    return basis(concept_directions(encoder, tokenizer, concepts, config, sigma))


def projector(q: Tensor) -> Tensor:
    """``T = I - Q Q^T`` (float64) for an orthonormal ``q`` (D, r)."""
    return torch.eye(q.shape[0], dtype=torch.float64, device=q.device) - q @ q.T


def blind(
    unet: nn.Module, *, keys: Tensor | None, values: Tensor | None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(originals, edited)``: every cross-attention ``to_k`` blind to ``span(keys)`` and ``to_v`` to
    ``span(values)`` (orthonormal bases; ``None`` leaves that projection untouched)."""
    if keys is not None and values is not None and keys is values:
        return transform_cross_attention(unet, projector(values))
    originals: dict[str, Tensor] = {}
    edited: dict[str, Tensor] = {}
    for q, suffix in ((values, ".to_v.weight"), (keys, ".to_k.weight")):
        if q is not None:
            o, e = transform_cross_attention(unet, projector(q), edit_keys=suffix == ".to_k.weight")
            originals.update({n: w for n, w in o.items() if n.endswith(suffix)})
            edited.update({n: w for n, w in e.items() if n.endswith(suffix)})
    return originals, edited


def join(q: Tensor, new: Tensor) -> Tensor:
    """An orthonormal basis of ``span(q) + span(new)`` whose first columns span ``q``."""
    joined, r = torch.linalg.qr(torch.cat([q, new], dim=1))
    keep = r.diagonal().abs() > 1e-9 * r.diagonal().abs().max()
    keep[: q.shape[1]] = True
    return joined[:, keep]


@dataclass
class _Pool:
    """What a learned embedding is fitted on, for one concept: noised latents ``x`` (N, C, h, w) at
    timesteps ``t`` (N,), the original U-Net's noise predictions ``target`` for the concept's prompt,
    and each sample's template index."""

    x: Tensor
    t: Tensor
    target: Tensor
    template: list[int]


@torch.no_grad()
def _pool(
    model, unet: nn.Module, encoder: nn.Module, tokenizer, concept: Concept, config: KVProjConfig
) -> _Pool:
    """ESD's way to get the concept's noised latents without images: ``t_enc`` guided DDIM steps of the
    original model from noise (``hirm.core.esd.sample_until``), then the original prediction there."""
    from diffusers import DDIMScheduler

    from hirm.core.esd import sample_until

    templates = config.templates_for(concept)
    device = next(unet.parameters()).device
    scheduler = DDIMScheduler.from_config(model.component("scheduler").config)
    scheduler.set_timesteps(config.ddim_steps, device=device)
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    emb_0 = prompt_embeddings(encoder, tokenizer, [""])[0].to(device)
    xs, ts, targets, which = [], [], [], []
    for _ in range(config.harden_samples):
        index = int(torch.randint(len(templates), (1,), generator=generator))
        emb_c = prompt_embeddings(encoder, tokenizer, [render(templates[index], concept.text)])[0].to(device)
        noise = torch.randn((1, unet.config.in_channels, h, w), generator=generator).to(device)
        t_enc = int(torch.randint(config.ddim_steps, (1,), generator=generator))
        x = sample_until(
            unet, scheduler, noise * scheduler.init_noise_sigma, emb_c, emb_0, t_enc, config.guidance
        )
        t = scheduler.timesteps[t_enc]
        xs.append(x)
        ts.append(t)
        targets.append(unet(x, t, encoder_hidden_states=emb_c).sample.float())
        which.append(index)
    return _Pool(torch.cat(xs), torch.stack(ts), torch.cat(targets), which)


@torch.no_grad()
def toward_scores(
    unet: nn.Module,
    encoder: nn.Module,
    tokenizer,
    concept: Concept,
    config: KVProjConfig,
    q: Tensor,
    pool: _Pool,
) -> Tensor:
    """``toward_j`` (r,) for each column ``q_j`` of ``q`` (D, r): how far removing it alone from the concept's
    rows brings the original U-Net's prediction on ``pool`` toward the contrast words' (module docstring)."""
    templates = config.templates_for(concept)
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    chosen = [templates[i] for i in pool.template]
    named = rows(encoder, tokenizer, [render(t, concept.text) for t in chosen]).to(device)
    reference = contrast_rows(encoder, tokenizer, chosen, config.contrast).to(device, dtype)
    eps_m = unet(pool.x, pool.t, encoder_hidden_states=reference).sample.float()
    gap = (pool.target - eps_m).pow(2).mean()
    scores = []
    for j in range(q.shape[1]):
        column = q[:, j : j + 1].to(device)
        removed = (named - named @ column @ column.T).to(dtype)
        pred = unet(pool.x, pool.t, encoder_hidden_states=removed).sample.float()
        scores.append(1 - (pred - eps_m).pow(2).mean() / gap)
    return torch.stack(scores).cpu()


def key_directions(
    model,
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: KVProjConfig,
    parts: Sequence[Tensor],
) -> tuple[Tensor, list[dict[str, Any]]]:
    """The keys' basis for ``key_rank``: per concept the ``key_rank`` columns of its part with the highest
    :func:`toward_scores`, joined; and a record per concept (scores, chosen columns)."""
    assert config.key_rank is not None
    unet = model.component("unet")
    chosen, records = [], []
    for concept, part in zip(concepts, parts, strict=True):
        pool = _pool(model, unet, encoder, tokenizer, concept, config)
        scores = toward_scores(unet, encoder, tokenizer, concept, config, part, pool)
        top = sorted(torch.argsort(scores, descending=True)[: config.key_rank].tolist())
        chosen.append(part[:, top])
        records.append({"concept": concept.text, "toward": [round(float(x), 4) for x in scores], "keys": top})
    return basis(chosen), records


def _slotted(tokenizer, templates: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """Ids (N, L) of ``templates`` with one slot in the concept's place, and the slot mask (N, L)."""
    from hirm.attacks.text import as_batch, slot_id, with_slots

    slotted = [with_slots(tokenizer, render(t, "\x00"), "\x00", 1, slot_id(tokenizer)) for t in templates]
    return as_batch([r[0] for r in slotted], device), torch.tensor([r[1] for r in slotted], device=device)


def learned_embedding(
    unet: nn.Module,
    encoder: nn.Module,
    tokenizer,
    concept: Concept,
    config: KVProjConfig,
    pool: _Pool,
    t_proj: Tensor,
    *,
    progress: bool = False,
) -> tuple[Tensor, list[float]]:
    """The word embedding (D_tok,) that, in the concept's place, best brings back the original U-Net's
    predictions ``pool.target`` through the edit ``T`` (the U-Net reading ``e T``, which is what ``W T``
    computes): Adam from the concept's own word embeddings (their mean), each sample in its own template.
    Returns the embedding and the loss per step."""
    from hirm.attacks.text import encode, token_embedding, word_ids

    templates = config.templates_for(concept)
    device = next(unet.parameters()).device
    ids, mask = _slotted(tokenizer, [templates[i] for i in pool.template], device)
    table = token_embedding(encoder).weight.detach().float()
    vector = table[word_ids(tokenizer, concept.text)].mean(0).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([vector], lr=config.harden_lr)
    transform = t_proj.to(device, torch.float32)
    losses = []
    for _ in trange(
        config.harden_steps, desc=f"kv-proj hardening [{concept.text}]", disable=not progress, leave=False
    ):
        optimizer.zero_grad(set_to_none=True)
        cond = encode(encoder, ids, mask, vector.expand(len(ids), 1, -1)).float() @ transform
        pred = unet(pool.x, pool.t, encoder_hidden_states=cond).sample.float()
        loss = nn.functional.mse_loss(pred, pool.target)
        (grad,) = torch.autograd.grad(loss, [vector])
        vector.grad = grad
        optimizer.step()
        losses.append(loss.item())
    return vector.detach(), losses


def harden(
    model,
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: KVProjConfig,
    q: Tensor,
    *,
    progress: bool = False,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """``config.harden_rounds`` rounds: for each concept, :func:`learned_embedding` against the edit so
    far, then the top ``harden_rank`` right singular vectors of what it puts through the edit, ``T (e_v -
    m)`` over all rows of the templates (``e_v``: the rows with the embedding in the concept's place,
    ``m``: the mean rows of the ``contrast`` words there, as for the first directions), joined to ``q``.
    Returns the grown basis and a record per round and concept (the fit's first and last loss)."""
    from hirm.attacks.text import encode

    unet = model.component("unet")
    if next(unet.parameters()).dtype != torch.float32:
        raise ValueError(
            "KV-Proj hardening runs the U-Net in float32; load the model with dtype=torch.float32."
        )
    flags = {n: p.requires_grad for n, p in [*unet.named_parameters(), *encoder.named_parameters()]}
    unet.requires_grad_(False)
    encoder.requires_grad_(False)
    history: list[dict[str, Any]] = []
    try:
        pools = [_pool(model, unet, encoder, tokenizer, c, config) for c in concepts]
        # the same every round: computed once per concept
        references = [
            contrast_rows(encoder, tokenizer, config.templates_for(c), config.contrast) for c in concepts
        ]
        for round_ in range(config.harden_rounds):
            for concept, pool, reference in zip(concepts, pools, references, strict=True):
                t_proj = projector(q)
                vector, losses = learned_embedding(
                    unet, encoder, tokenizer, concept, config, pool, t_proj, progress=progress
                )
                templates = config.templates_for(concept)
                ids, mask = _slotted(tokenizer, templates, next(unet.parameters()).device)
                with torch.no_grad():
                    found = encode(encoder, ids, mask, vector.expand(len(templates), 1, -1)).to(torch.float64)
                carried = ((found - reference.to(found.device)) @ t_proj.to(found.device)).reshape(
                    -1, q.shape[0]
                )
                q = join(q, top_directions(carried, config.harden_rank).to(q.device))
                history.append(
                    {
                        "round": round_,
                        "concept": concept.text,
                        "loss_first": losses[0],
                        "loss_last": losses[-1],
                    }
                )
    finally:
        for name, p in [*unet.named_parameters(), *encoder.named_parameters()]:
            p.requires_grad_(flags[name])
    return q, history


def erase(
    model,
    concepts: Sequence[Concept],
    config: KVProjConfig = KVProjConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """KV-Proj on the U-Net of ``model`` (a ``ModelHandle``); returns a patch of the ``attn2`` k/v weights.

    Nothing is modified in place. ``progress``: a bar over the hardening's steps (without hardening the
    edit is one SVD or solve).
    """
    start = time.perf_counter()
    check_unet_model(model, components, "KV-Proj")
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    encoder, tokenizer = model.text_encoder("text_encoder"), model.tokenizer("text_encoder")
    unet = model.component("unet")
    sigma, kept = None, 0
    templates = tuple(dict.fromkeys(t for c in concepts for t in config.templates_for(c)))
    if config.preserve:
        keep = rows(encoder, tokenizer, [render(t, p) for p in config.preserve for t in templates])
        sigma, kept = second_moment(keep.reshape(-1, keep.shape[-1])), keep.shape[0] * keep.shape[1]
    elif config.spare:
        sigma, kept = spared_moment(encoder, tokenizer, config.spare, config.spare_templates or templates)
    parts = concept_directions(encoder, tokenizer, concepts, config, sigma)
    u = basis(parts)
    keys, key_records = None, []
    if config.key_rank is not None and config.key_rank < config.rank:
        keys, key_records = key_directions(model, encoder, tokenizer, concepts, config, parts)
    hardening: list[dict[str, Any]] = []
    if config.harden_rounds:
        u, hardening = harden(model, encoder, tokenizer, concepts, config, u, progress=progress)
        if u.shape[1] >= u.shape[0]:
            raise ValueError("KV-Proj hardening grew the subspace to the encoder's width; lower harden_rank.")
    # the keys: their own basis with key_rank, else the values'; untouched without edit_keys
    key_basis = (u if keys is None else keys) if config.edit_keys else None
    originals, edited = blind(unet, keys=key_basis, values=u)
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
            **({"key_directions": int(keys.shape[1]), "keys": key_records} if keys is not None else {}),
            "preserved_rows": int(kept),
            **({"hardening": hardening} if hardening else {}),
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
