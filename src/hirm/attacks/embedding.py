"""Learned-embedding attack: textual inversion against the erased model (Pham, Marshall, Hegde, 2023,
"Circumventing Concept Erasure Methods for Text-to-Image Generative Models", arXiv 2308.01508).

Images of the concept are made by the *original* model (the grid prompts naming it, on seeds kept apart
from the evaluated ones) or, on the miniature world, drawn by its renderer. A new word, ``num_vectors``
vectors of the text encoder's width, is then fitted so that the *erased* pipeline reproduces them: the
standard denoising loss of textual inversion, everything frozen but the new vectors::

    v* = argmin_v  E_{x0, eps, t} || eps_theta(x_t, t, E(caption with v)) - eps ||^2

where the captions are the training prompts with the concept's name replaced by the new word. The
attacked prompts are the evaluated grid prompts with the new word in the concept's place; the
result reports the judged concept rate with and without it.

Reference settings (the authors' ``concept_inversion.py`` = diffusers' textual-inversion example run
with ``--train_batch_size 4 --gradient_accumulation_steps 4 --max_train_steps 5000 --learning_rate
5e-3 --scale_lr --lr_scheduler constant``, one vector, AdamW (0.9, 0.999), weight decay 1e-2,
initializer ``art`` for styles, 25 training images): :meth:`EmbeddingAttackConfig.reference`. The
defaults are scaled to the CPU budget (batch 4, no accumulation, 300 steps). The learned vectors are
saved in diffusers' textual-inversion format (``found.safetensors``: ``{placeholder: (k, D)}``), so
``pipe.load_textual_inversion(path)`` loads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hirm.attacks.diffusion import denoising_loss, encode_images, training_scheduler
from hirm.attacks.registry import AttackSpec, register
from hirm.attacks.run import AttackContext, Interrupted, ItemOutcome, clear_search, load_search, save_search
from hirm.attacks.targets import AttackItem, AttackTarget
from hirm.attacks.text import as_batch, encode, slot_id, token_embedding, with_slots, word_ids

#: Word the new vectors start from when none is given (the reference initialises styles from "art").
DEFAULT_INITIALIZER = {"style": "art", "object": "object", "nudity": "person"}


@dataclass(frozen=True)
class EmbeddingAttackConfig:
    """Textual inversion against the erased model.

    Attributes:
        num_vectors: vectors of the new word (reference 1).
        steps: optimizer steps (reference 5000, each over 4 x 4 images).
        batch_size: images per step (reference 4).
        grad_accumulation: steps whose gradients are summed before one update (reference 4).
        lr: base learning rate (reference 5e-3); ``scale_lr`` multiplies it by batch x accumulation.
        scale_lr: the reference ``--scale_lr``.
        betas, eps, weight_decay: AdamW settings of the reference script.
        initializer: word whose embedding starts the vectors (several tokens: their mean); ``None``
            = "art" for styles, "object" for objects, "person" for nudity.
        placeholder: the new word as written in prompts and in the saved embedding file.
        source: ``original`` = images of the original model; ``render`` = the miniature world's renderer.
        checkpoint_every: steps between checkpoints (resumable runs).
    """

    num_vectors: int = 1
    steps: int = 300
    batch_size: int = 4
    grad_accumulation: int = 1
    lr: float = 5e-3
    scale_lr: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    initializer: str | None = None
    placeholder: str = "<hirm-attack>"
    source: Literal["original", "render"] = "original"
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("num_vectors", "steps", "batch_size", "grad_accumulation", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}.")
        if self.source not in ("original", "render"):
            raise ValueError(f"source must be 'original' or 'render', got {self.source!r}.")
        if not self.placeholder.strip() or " " in self.placeholder:
            raise ValueError(f"placeholder must be one word without spaces, got {self.placeholder!r}.")

    @classmethod
    def reference(cls, kind: str | None = None, **overrides: Any) -> EmbeddingAttackConfig:
        """The authors' settings (5000 steps of 4 x 4 images; hours on a GPU for SD)."""
        return replace(cls(steps=5000, batch_size=4, grad_accumulation=4), **overrides)

    @property
    def effective_lr(self) -> float:
        return self.lr * (self.batch_size * self.grad_accumulation if self.scale_lr else 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------ phases


def captions(target: AttackTarget, placeholder: str) -> list[str]:
    """The training prompts with the concept's name replaced by the placeholder (or prefixed with it)."""
    return [attacked_prompt(p, target.concept, placeholder) for p in target.train_prompts]


def attacked_prompt(prompt: str, concept: str, placeholder: str) -> str:
    return prompt.replace(concept, placeholder) if concept in prompt else f"{placeholder} {prompt}"


def original(ctx: AttackContext, config: EmbeddingAttackConfig) -> dict[str, Tensor]:
    """Latents (N, C, h, w) of the concept's images, one per training prompt and training seed."""
    cached = ctx.run.load_tensors("original.safetensors")
    if cached is not None:
        return cached
    target = ctx.target
    if not target.train_prompts:
        raise ValueError("The attack target has no training prompts for textual inversion.")
    if config.source == "render":
        latents = _rendered_latents(ctx)
    else:
        prompts = [p for p in target.train_prompts for _ in target.train_seeds]
        seeds = [s for _ in target.train_prompts for s in target.train_seeds]
        latents = ctx.latents(ctx.embed(prompts, truncate=True), seeds, [None] * len(seeds), "original")
    tensors = {"latents": latents}
    ctx.run.save_tensors("original.safetensors", tensors)
    return tensors


def _rendered_latents(ctx: AttackContext):
    import numpy as np

    import hirm.world as world

    if not ctx.target.train_cells:
        raise ValueError("source='render' draws MiniCanvas cells; this target is not a canvas concept.")
    images = np.stack(
        [
            world.render(style, obj, seed=int(seed), size=ctx.sampler.height or 32)
            for style, obj in ctx.target.train_cells
            for seed in ctx.target.train_seeds
        ]
    )
    return encode_images(ctx.pipe, images)


def _initial_vector(ctx: AttackContext, config: EmbeddingAttackConfig) -> Tensor:
    word = config.initializer or DEFAULT_INITIALIZER.get(ctx.target.kind, "object")
    ids = word_ids(ctx.tokenizer, word)
    if not ids:
        raise ValueError(f"The initializer word {word!r} has no tokens.")
    table = token_embedding(ctx.encoder).weight.detach()
    return table[ids].float().mean(dim=0)


def prepare(ctx: AttackContext, config: EmbeddingAttackConfig, original: dict[str, Tensor]) -> Tensor:
    """Fit the vectors (k, D) on the erased model; resumes from and writes ``checkpoint.safetensors``."""
    done = ctx.run.load_tensors("embedding.safetensors")
    if done is not None:
        return done["vectors"]
    x0 = original["latents"].to(ctx.device)
    slot = slot_id(ctx.tokenizer)
    rows = [
        with_slots(ctx.tokenizer, c, config.placeholder, config.num_vectors, slot, truncate=True)
        for c in captions(ctx.target, config.placeholder)
    ]
    per_prompt = len(
        ctx.target.train_seeds
    )  # latents are prompt-major: prompt i's seeds are rows i*S .. i*S+S-1
    ids = as_batch([r[0] for r in rows], ctx.device).repeat_interleave(per_prompt, dim=0)
    mask = torch.tensor([r[1] for r in rows], device=ctx.device).repeat_interleave(per_prompt, dim=0)
    vectors = _initial_vector(ctx, config).repeat(config.num_vectors, 1).to(ctx.device).requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [vectors],
        lr=config.effective_lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator(device="cpu").manual_seed(ctx.item_seed(-1))
    meta = load_search(ctx.run, vectors, optimizer, generator)[0] or {"step": 0, "losses": []}
    start, losses = int(meta["step"]), list(meta["losses"])
    scheduler = training_scheduler(ctx.pipe)
    bar = tqdm(range(start, config.steps), desc="textual inversion", disable=not ctx.progress, leave=False)
    for step in bar:
        if ctx.budget.expired():
            save_search(ctx.run, vectors, optimizer, generator, {"step": step, "losses": losses})
            raise Interrupted(f"time limit reached at textual-inversion step {step}")
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(config.grad_accumulation):
            pick = torch.randint(len(x0), (config.batch_size,), generator=generator)
            noise = torch.randn((config.batch_size, *x0.shape[1:]), generator=generator).to(ctx.device)
            t = torch.randint(scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator)
            cond = encode(ctx.encoder, ids[pick], mask[pick], vectors.expand(config.batch_size, -1, -1))
            loss = denoising_loss(ctx.unet, scheduler, x0[pick], cond, t.to(ctx.device), noise)
            (loss / config.grad_accumulation).backward()
            total += loss.item() / config.grad_accumulation
        if not math.isfinite(total):
            raise FloatingPointError(f"Textual inversion loss became {total} at step {step}; lower the lr.")
        optimizer.step()
        losses.append(total)
        bar.set_postfix(loss=f"{total:.4g}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save_search(ctx.run, vectors, optimizer, generator, {"step": step + 1, "losses": losses})
    result = vectors.detach().cpu()
    ctx.run.save_tensors("embedding.safetensors", {"vectors": result})
    ctx.run.save_json("embedding.json", {"steps": config.steps, "losses": losses})
    clear_search(ctx.run)
    return result


def attack_batch(
    ctx: AttackContext,
    config: EmbeddingAttackConfig,
    original: Any,
    vectors: Tensor,
    indices: Sequence[int],
    items: Sequence[AttackItem],
    befores: Sequence[Any],
) -> list[ItemOutcome]:
    """Each item's prompt with the learned word in the concept's place, judged on the erased model."""
    texts = [attacked_prompt(item.prompt, ctx.target.concept, config.placeholder) for item in items]
    rows = [
        with_slots(
            ctx.tokenizer, t, config.placeholder, config.num_vectors, slot_id(ctx.tokenizer), truncate=True
        )
        for t in texts
    ]
    with torch.no_grad():
        cond = encode(
            ctx.encoder,
            as_batch([r[0] for r in rows], ctx.device),
            torch.tensor([r[1] for r in rows], device=ctx.device),
            vectors[None].to(ctx.device).expand(len(items), -1, -1),
        )
    images, verdicts = ctx.judged(cond, items)
    return [ItemOutcome(t, v, image) for t, v, image in zip(texts, verdicts, images, strict=True)]


def found(ctx: AttackContext, config: EmbeddingAttackConfig, vectors: Tensor | None, records: Sequence[dict]):
    """diffusers' textual-inversion file: ``{placeholder: (k, D)}``."""
    if vectors is None:
        return None
    info = {
        "placeholder": config.placeholder,
        "num_vectors": config.num_vectors,
        "use": f"pipe.load_textual_inversion('found.safetensors', token='{config.placeholder}') on the erased "
        f"pipeline, then prompts such as {attacked_prompt(ctx.target.items[0].prompt, ctx.target.concept, config.placeholder)!r}",
    }
    return {config.placeholder: vectors}, info


register(
    AttackSpec(
        name="embedding",
        config_cls=EmbeddingAttackConfig,
        description="Learned embedding (textual inversion on the erased model; Pham et al. 2023, arXiv 2308.01508)",
        original=original,
        prepare=prepare,
        attack_batch=attack_batch,
        found=found,
    )
)
