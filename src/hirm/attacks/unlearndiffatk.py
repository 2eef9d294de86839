"""Discrete prompt search: UnlearnDiffAtk (Zhang, Jia, Chen, Chen, Zhang, Liu, Wang, Liu, ECCV 2024,
"To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To Generate Unsafe
Images ... For Now", arXiv 2310.11868; code: OPTML-Group/Diffusion-MU-Attack, ``text_grad``).

The diffusion model is its own classifier: for an attacked prompt and the image ``x0`` the *original*
model made from it (same seed), ``k`` tokens put in front of the prompt are chosen so that the
*erased* model denoises ``x0`` well when conditioned on the attacked prompt::

    min_{z_1..z_k}  E_eps || eps_theta'(x_t, t, E([z_1..z_k] + prompt)) - eps ||^2,   z_i in the vocabulary

Each token is a point ``p_i`` of the probability simplex over the vocabulary; a forward pass draws a
one-hot token from it (straight-through: the gradient of the one-hot passes to ``p_i``, clipped to
[-1, 1]) and looks up its word embedding; Adam (lr 0.01, weight decay 0.1) then the Euclidean
projection onto the simplex (sort-based, the same point the reference finds by bisection). The loss
timestep runs through ``n_timesteps`` evenly spaced values ``T/n/2 + i T/n`` in increasing order,
``iterations`` steps each; after every timestep the arg-max tokens are decoded and the attacked prompt
is generated and judged, stopping at the first success. A prompt already recognised before the
attack is counted as a success and not attacked (the reference's ``results['success']`` check).

Reference settings (``configs/*/text_grad_esd_*_classifier.json``): k = 3 for styles and objects,
5 for nudity; 40 iterations; 50 timesteps; uniform initialisation. The CPU-budget defaults keep
everything but the number of timesteps (5: t = 100, 300, ..., 900) and iterations (20).
Departure, named: special tokens (start/end/pad) are left out of the vocabulary searched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hirm.attacks.diffusion import denoising_loss, training_scheduler
from hirm.attacks.registry import AttackSpec, nothing, register
from hirm.attacks.run import (
    CHECKPOINT_META,
    AttackContext,
    Interrupted,
    ItemOutcome,
    clear_search,
    load_search,
    save_search,
)
from hirm.attacks.targets import AttackItem
from hirm.attacks.text import as_batch, decode, encode, slot_id, token_embedding, vocabulary_ids, with_prefix


@dataclass(frozen=True)
class UnlearnDiffAtkConfig:
    """UnlearnDiffAtk's ``text_grad`` attacker with ``prefix_k`` insertion.

    Attributes:
        k: tokens put in front of the prompt (reference 3 for styles/objects, 5 for nudity).
        iterations: optimizer steps per loss timestep (reference 40).
        n_timesteps: number of loss timesteps, ``T/n/2 + i T/n`` (reference 50).
        lr, weight_decay: Adam settings (reference 0.01, 0.1).
        rand_init: start from a uniform random point projected on the simplex instead of the centre.
        stop_on_success: stop an item at the first timestep whose attacked prompt is recognised (reference).
    """

    k: int = 3
    iterations: int = 20
    n_timesteps: int = 5
    lr: float = 0.01
    weight_decay: float = 0.1
    rand_init: bool = False
    stop_on_success: bool = True

    def __post_init__(self) -> None:
        for name in ("k", "iterations", "n_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}.")

    @classmethod
    def reference(cls, kind: str | None = None, **overrides: Any) -> UnlearnDiffAtkConfig:
        """The authors' settings: 40 iterations x 50 timesteps, k = 5 prefix tokens for nudity (their
        nudity config) and 3 for styles and objects."""
        return replace(cls(k=5 if kind == "nudity" else 3, iterations=40, n_timesteps=50), **overrides)

    def timesteps(self, num_train_timesteps: int = 1000) -> list[int]:
        """The reference's ``sampled_t``: ``start + i * (T // n)`` with ``start = T // n // 2``."""
        step = num_train_timesteps // self.n_timesteps
        return list(range(step // 2, num_train_timesteps, step))[: self.n_timesteps]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v`` (..., V) onto the probability simplex (sort-based)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    cumsum = u.cumsum(dim=-1) - 1.0
    index = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    support = (u - cumsum / index) > 0
    rho = support.to(v.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last index where support holds
    theta = cumsum.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp(min=0)


class _SampleOneHot(torch.autograd.Function):
    """Forward: one token per row drawn from the row's distribution, as a one-hot; backward: the
    gradient of the one-hot, clipped to [-1, 1] (the reference's straight-through estimator)."""

    @staticmethod
    def forward(ctx, probs: Tensor, generator: torch.Generator) -> Tensor:
        draws = torch.multinomial(probs.detach().cpu().clamp(min=0), 1, generator=generator).to(probs.device)
        return torch.zeros_like(probs).scatter_(-1, draws, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.clamp(-1.0, 1.0), None


def original(ctx: AttackContext, config: UnlearnDiffAtkConfig) -> dict[str, Tensor]:
    """The original model's latents (N, C, h, w) of every attacked prompt (its own seed and guidance)."""
    cached = ctx.run.load_tensors("original.safetensors")
    if cached is not None:
        return cached
    items = ctx.target.items
    # Prompts longer than the encoder reads (8 of UnlearnDiffAtk's 142 nudity prompts) are cut as the
    # pipeline cuts them.
    latents = ctx.latents(
        ctx.embed([i.prompt for i in items], truncate=True),
        [i.seed for i in items],
        [i.guidance for i in items],
        "original",
    )
    tensors = {"latents": latents}
    ctx.run.save_tensors("original.safetensors", tensors)
    return tensors


@dataclass
class _Search:
    """The state of one chunk's searches: item ``j`` owns row ``j`` of ``probs`` (k, V) and its own
    random stream; ``done[j]`` once it succeeded (then its outcome is fixed); ``step`` is shared (every
    unfinished item takes the same optimizer steps at the same loss timestep)."""

    probs: Tensor
    optimizer: torch.optim.Adam
    generators: list[torch.Generator]
    step: int = 0
    totals: list[float] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    images: list[np.ndarray | None] = field(default_factory=list)

    #: What the checkpoint's JSON keeps besides the chunk's indices.
    FIELDS = ("step", "totals", "losses", "done", "tokens", "texts", "success")

    def save(self, ctx: AttackContext, indices: Sequence[int]) -> None:
        images = {f"image{j}": torch.from_numpy(im) for j, im in enumerate(self.images) if im is not None}
        meta = {"indices": list(indices), **{k: getattr(self, k) for k in self.FIELDS}}
        save_search(ctx.run, self.probs, self.optimizer, self.generators, meta, images)

    def load(self, ctx: AttackContext, indices: Sequence[int]) -> None:
        """Continue the saved search of exactly this chunk (an earlier call ran out of time), if any."""
        saved = ctx.run.load_json(CHECKPOINT_META)
        if saved is None or saved.get("indices") != list(indices):
            return
        meta, images = load_search(ctx.run, self.probs, self.optimizer, self.generators)
        if meta is None:
            return
        for key in self.FIELDS:
            setattr(self, key, meta[key])
        self.images = [
            images[f"image{j}"].numpy() if f"image{j}" in images else None for j in range(len(self.done))
        ]


def attack_batch(
    ctx: AttackContext,
    config: UnlearnDiffAtkConfig,
    original: dict[str, Tensor],
    prepared: Any,
    indices: Sequence[int],
    items: Sequence[AttackItem],
    befores: Sequence[Any],
) -> list[ItemOutcome]:
    """The search of every item of a chunk at once: each item keeps its own token distribution, random
    stream and stopping point, exactly as if it were searched alone (one Adam over the stacked rows is
    Adam per item: the update is elementwise and every unfinished item has taken the same number of
    steps); the U-Net and the judge see the unfinished items as one batch, several times faster on a
    CPU than one item at a time (``benchmarks/attack_speed.py``)."""
    device, n = ctx.device, len(items)
    vocab = vocabulary_ids(ctx.tokenizer, token_embedding(ctx.encoder).num_embeddings).to(device)
    table = token_embedding(ctx.encoder).weight.detach()[vocab].float()  # (V', D)
    prefix = [slot_id(ctx.tokenizer)] * config.k
    ids = as_batch([with_prefix(ctx.tokenizer, item.prompt, prefix, truncate=True) for item in items], device)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 1 : 1 + config.k] = True
    x0 = original["latents"][list(indices)].to(device)
    generators = [torch.Generator(device="cpu").manual_seed(ctx.item_seed(index)) for index in indices]
    probs = torch.full((n, config.k, len(vocab)), 1.0 / len(vocab), device=device)
    if config.rand_init:
        draws = [torch.rand((config.k, len(vocab)), generator=g) for g in generators]
        probs = project_simplex(torch.stack(draws).to(device))
    probs.requires_grad_(True)
    optimizer = torch.optim.Adam([probs], lr=config.lr, weight_decay=config.weight_decay)
    search = _Search(
        probs, optimizer, generators, totals=[0.0] * n, losses=[[] for _ in range(n)], done=[False] * n,
        tokens=[[] for _ in range(n)], texts=[item.prompt for item in items], success=[False] * n,
        images=[None] * n,
    )  # fmt: skip
    search.load(ctx, indices)
    scheduler = training_scheduler(ctx.pipe)
    timesteps = config.timesteps(scheduler.config.num_train_timesteps)
    steps = len(timesteps) * config.iterations
    bar = tqdm(total=steps, initial=search.step, desc=f"prompts {indices[0]}-{indices[-1]}",
               disable=not ctx.progress, leave=False)  # fmt: skip
    while search.step < steps and not all(search.done):
        if ctx.budget.expired():
            bar.close()
            search.save(ctx, indices)
            raise Interrupted(f"time limit reached while attacking prompts {indices[0]}-{indices[-1]}")
        t = timesteps[search.step // config.iterations]
        live = [j for j in range(n) if not search.done[j]]
        optimizer.zero_grad(set_to_none=True)
        one_hot = torch.stack([_SampleOneHot.apply(probs[j], generators[j]) for j in live])
        cond = encode(ctx.encoder, ids[live], mask[live], one_hot @ table)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=generators[j]) for j in live]).to(device)
        # each item's own loss (the mean over its latent), summed: item j's gradient is its solo gradient
        losses = denoising_loss(
            ctx.unet, scheduler, x0[live], cond, torch.full((len(live),), t, device=device), noise,
            per_sample=True,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(losses.sum(), [probs])
        probs.grad = grad
        optimizer.step()
        with torch.no_grad():
            probs.copy_(project_simplex(probs))
        for j, value in zip(live, losses.tolist(), strict=True):
            search.totals[j] += value
        search.step += 1
        bar.update(1)
        if search.step % config.iterations:
            continue
        chosen = {j: vocab[probs.detach()[j].argmax(dim=-1)].tolist() for j in live}
        attacked = as_batch(
            [with_prefix(ctx.tokenizer, items[j].prompt, chosen[j], truncate=True) for j in live], device
        )
        with torch.no_grad():
            images, verdicts = ctx.judged(encode(ctx.encoder, attacked), [items[j] for j in live])
        for j, image, verdict in zip(live, images, verdicts, strict=True):
            search.losses[j].append(search.totals[j] / config.iterations)
            search.totals[j] = 0.0
            search.tokens[j] = chosen[j]
            search.texts[j] = f"{decode(ctx.tokenizer, chosen[j])} {items[j].prompt}".strip()
            search.images[j], search.success[j] = image, bool(verdict)
            search.done[j] = bool(verdict) and config.stop_on_success
        bar.set_postfix(t=t, success=sum(search.success))
    bar.close()
    clear_search(ctx.run)
    return [
        ItemOutcome(
            attacked_prompt=search.texts[j],
            success=search.success[j],
            image=search.images[j],
            tensors={"tokens": torch.tensor(search.tokens[j], dtype=torch.long)},
            info={
                "tokens": search.tokens[j],
                "timesteps": timesteps[: len(search.losses[j])],
                "losses": search.losses[j],
            },
        )
        for j in range(n)
    ]


register(
    AttackSpec(
        name="unlearndiffatk",
        config_cls=UnlearnDiffAtkConfig,
        description="Discrete prompt search, the diffusion model as its own classifier (UnlearnDiffAtk, Zhang et al. 2024, arXiv 2310.11868)",
        original=original,
        prepare=nothing,
        attack_batch=attack_batch,
        stop_if_before=True,
    )
)
