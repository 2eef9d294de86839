"""The diffusion side of an attack: images from conditioning embeddings, and the denoising loss.

Attacks condition the pipeline on embeddings they computed themselves (a learned vector, a token
search), so images are made with ``prompt_embeds`` / ``negative_prompt_embeds`` instead of prompt
strings; everything else is the pipeline's own sampler. One CPU generator per image, seeded with the
image's seed, so an image depends only on its conditioning, seed and settings (as in
:mod:`hirm.evaluation.generation`). Latents are returned as they leave the sampler and decoded here,
so the images an attack *learns from* (the original model's) need no lossy VAE round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hirm.evaluation.common import EvaluationInputError


@dataclass(frozen=True)
class Sampler:
    """Sampler settings of every image an attack makes (``None`` size = the pipeline's default).

    ``guidance_scale`` applies unless an attacked prompt carries its own (a CSV's
    ``evaluation_guidance``). Defaults are Stable Diffusion's; :meth:`for_model` gives the miniature
    world's own settings for ``minicanvas``.
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise EvaluationInputError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}.")
        if self.batch_size < 1:
            raise EvaluationInputError(f"batch_size must be >= 1, got {self.batch_size}.")

    @classmethod
    def for_model(cls, model: str, **overrides: Any) -> Sampler:
        """The world's sampler (DDIM 25 steps, guidance 6, 32x32) for ``minicanvas``, else SD's defaults."""
        base: dict[str, Any] = {}
        if str(model) == "minicanvas":
            import hirm.world as world

            gen = world.GENERATION_DEFAULTS
            base = dict(
                num_inference_steps=int(gen["num_inference_steps"]),
                guidance_scale=float(gen["guidance_scale"]),
                height=gen.get("height"),
                width=gen.get("width"),
                batch_size=32,
            )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _groups(guidance: Sequence[float], batch_size: int) -> list[list[int]]:
    """Indices grouped by guidance scale (first-seen order), cut into chunks of ``batch_size``."""
    groups: dict[float, list[int]] = {}
    for i, g in enumerate(guidance):
        groups.setdefault(float(g), []).append(i)
    return [idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]


@torch.no_grad()
def sample_latents(
    pipe: Any,
    cond: Tensor,
    seeds: Sequence[int],
    sampler: Sampler,
    *,
    uncond: Tensor,
    guidance: Sequence[float | None] | None = None,
) -> Tensor:
    """Final latents (B, C, h, w) of the pipeline's sampler conditioned on ``cond`` (B, L, D).

    ``uncond`` (1, L, D) is the negative (empty-prompt) conditioning; ``guidance`` per image
    (``None`` = ``sampler.guidance_scale``).
    """
    if len(seeds) != cond.shape[0]:
        raise ValueError(f"{cond.shape[0]} conditionings but {len(seeds)} seeds.")
    scales = [sampler.guidance_scale if g is None else float(g) for g in (guidance or [None] * len(seeds))]
    out: list[Tensor | None] = [None] * len(seeds)
    for chunk in _groups(scales, sampler.batch_size):
        kwargs: dict[str, Any] = dict(
            prompt_embeds=cond[chunk].to(pipe.device, pipe.dtype),
            negative_prompt_embeds=uncond.expand(len(chunk), -1, -1).to(pipe.device, pipe.dtype),
            generator=[torch.Generator(device="cpu").manual_seed(int(seeds[i])) for i in chunk],
            guidance_scale=scales[chunk[0]],
            num_inference_steps=sampler.num_inference_steps,
            output_type="latent",
        )
        if sampler.height is not None:
            kwargs["height"] = sampler.height
        if sampler.width is not None:
            kwargs["width"] = sampler.width
        latents = pipe(**kwargs).images
        for j, i in enumerate(chunk):
            out[i] = latents[j].float().cpu()
    return torch.stack(out)  # type: ignore[arg-type]


@torch.no_grad()
def decode_latents(pipe: Any, latents: Tensor, *, batch_size: int = 16) -> np.ndarray:
    """Latents (B, C, h, w) -> uint8 images (B, H, W, 3), exactly as the pipeline's ``output_type="np"``."""
    vae = pipe.vae
    images = []
    for start in range(0, len(latents), batch_size):
        z = latents[start : start + batch_size].to(vae.device, vae.dtype) / vae.config.scaling_factor
        x = vae.decode(z, return_dict=False)[0].float()
        x = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        images.append((x * 255.0).round().astype(np.uint8))
    return np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8)


@torch.no_grad()
def encode_images(pipe: Any, images: np.ndarray) -> Tensor:
    """uint8 images (N, H, W, 3) -> latents (N, C, h, w): the VAE posterior mean times the scaling factor."""
    vae = pipe.vae
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    z = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean
    return (z * vae.config.scaling_factor).float().cpu()


def training_scheduler(pipe: Any):
    """A DDPM scheduler with the pipeline's noise schedule (the training-time ``add_noise``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def denoising_loss(
    unet: nn.Module,
    scheduler,
    x0: Tensor,
    cond: Tensor,
    t: Tensor,
    noise: Tensor,
    *,
    per_sample: bool = False,
) -> Tensor:
    """The standard diffusion loss: MSE between the U-Net's prediction on ``x_t`` and its target
    (the noise for epsilon-prediction, the velocity for v-prediction). Shapes: x0, noise (B, C, h, w);
    cond (B, L, D); t (B,) integer timesteps. ``per_sample``: each sample's own mean, (B,)."""
    x_t = scheduler.add_noise(x0, noise, t)
    pred = unet(x_t, t, encoder_hidden_states=cond).sample
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:
        raise ValueError(f"Unsupported prediction type {kind!r} (epsilon or v_prediction).")
    if per_sample:
        return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return nn.functional.mse_loss(pred.float(), target.float())
