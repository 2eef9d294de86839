"""Stage 5: the MiniSD denoiser, a diffusers ``UNet2DConditionModel`` on 16x16x4 latents.

It is conditioned by cross-attention on the frozen MiniCLIP text encoder's ``last_hidden_state`` over
all 77 positions. Training is SD's: DDPM noise (1000 steps, scaled-linear betas), epsilon prediction,
the empty prompt ``""`` replaces the caption with probability ``p_uncond`` (classifier-free guidance),
plus Min-SNR-5 loss weighting and an EMA of the weights (the EMA is what is saved).
Text embeddings of every possible training caption are computed once and cached.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from ._train import lr_at, run_steps, step_rng
from .captions import add_distractors, all_captions, sample_caption


@dataclass(frozen=True)
class UnetConfig:
    """Sizes and schedule of the denoiser (defaults = the shipped model)."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_num_groups: int = 16
    batch_size: int = 128
    steps: int = 4000
    lr_horizon: int | None = None  # length of the cosine schedule; None = steps
    lr: float = 6e-4
    warmup: int = 100
    p_uncond: float = 0.1
    p_distract: float = 0.3  # share of captions with inserted pseudo-words (captions.add_distractors)
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0


def ddpm_scheduler() -> DDPMScheduler:
    """SD 1.x's training noise schedule."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def ddim_scheduler():
    """SD 1.x's DDIM sampler over the same schedule (the pipeline's scheduler)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def make_unet(
    cfg: UnetConfig, *, cross_attention_dim: int, latent_channels: int = 4, sample_size: int = 16
) -> UNet2DConditionModel:
    """Randomly initialised UNet; the first level is convolutional, the deeper levels use cross-attention."""
    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_num_groups,
    )


@torch.no_grad()
def text_embedding_cache(
    text_encoder: CLIPTextModel,
    tokenizer,
    texts: list[str],
    *,
    device: torch.device,
    batch: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """``last_hidden_state`` (N, 77, D) in fp16 of ``texts`` padded to 77 tokens (SD's text conditioning)."""
    out = []
    for i in tqdm(range(0, len(texts), batch), desc="text cache", disable=not progress, mininterval=5):
        ids = tokenizer(
            texts[i : i + batch],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        out.append(text_encoder(ids).last_hidden_state.half().cpu())
    return torch.cat(out)


def load_or_make_cache(
    path: Path, text_encoder: CLIPTextModel, tokenizer, *, device: torch.device, progress: bool = True
) -> tuple[list[str], torch.Tensor]:
    """All training captions plus ``""`` (index 0) and their cached embeddings (safetensors at ``path``)."""
    texts = [""] + all_captions()
    if path.exists():
        emb = load_file(str(path))["emb"]
        if emb.shape[0] == len(texts):
            return texts, emb
    emb = text_embedding_cache(text_encoder, tokenizer, texts, device=device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb": emb}, str(path))
    return texts, emb


def cached_encoder(
    texts: list[str],
    emb: torch.Tensor,
    fallback: Callable[[list[str]], torch.Tensor] | None = None,
) -> Callable[[list[str]], torch.Tensor]:
    """``encode_text`` backed by a cache (``emb[i]`` is the embedding of ``texts[i]``).

    Captions missing from the cache (e.g. with inserted pseudo-words) go to ``fallback`` in one batch;
    without a fallback they raise ``KeyError``.
    """
    lookup = {t: i for i, t in enumerate(texts)}

    def encode(captions: list[str]) -> torch.Tensor:
        missing = [i for i, c in enumerate(captions) if c not in lookup]
        if missing and fallback is None:
            raise KeyError(f"caption not in the text cache: {captions[missing[0]]!r}")
        out = emb[[lookup.get(c, 0) for c in captions]].clone()
        if missing:
            out[missing] = fallback([captions[i] for i in missing]).to(out.dtype)
        return out

    return encode


def direct_encoder(
    text_encoder: CLIPTextModel, tokenizer, device: torch.device
) -> Callable[[list[str]], torch.Tensor]:
    """``encode_text`` that runs the frozen text encoder on every call (for tiny builds)."""

    @torch.no_grad()
    def encode(captions: list[str]) -> torch.Tensor:
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return text_encoder(ids).last_hidden_state.cpu()

    return encode


def train_unet(
    out_dir: Path,
    *,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    scaling_factor: float,
    style_idx: np.ndarray,
    object_idx: np.ndarray,
    encode_text: Callable[[list[str]], torch.Tensor],
    cfg: UnetConfig,
    seed: int,
    device: torch.device,
    ckpt_dir: Path | None = None,
    progress: bool = True,
) -> UNet2DConditionModel:
    """Train the denoiser on posterior samples of the pooled latents; save the EMA weights to ``out_dir``.

    ``encode_text(captions) -> (B, 77, D)`` gives the frozen text encoder's ``last_hidden_state``
    (a cache lookup, see :func:`cached_encoder`, or a direct call).
    """
    torch.manual_seed(seed)
    width = encode_text([""]).shape[-1]
    unet = make_unet(
        cfg,
        cross_attention_dim=width,
        latent_channels=latent_mean.shape[1],
        sample_size=latent_mean.shape[-1],
    ).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = ddpm_scheduler()
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    n = len(latent_mean)

    def step_fn(step: int) -> float:
        rng, gen = step_rng(seed, step, stream=6)
        for g in opt.param_groups:
            g["lr"] = lr_at(
                step, base_lr=cfg.lr, warmup=cfg.warmup, total=cfg.lr_horizon or cfg.steps, final_frac=0.1
            )
        idx = rng.integers(n, size=cfg.batch_size)
        eps_post = torch.randn(latent_mean[idx].shape, generator=gen)
        z0 = (latent_mean[idx] + latent_std[idx] * eps_post) * scaling_factor
        caps = [
            "" if rng.random() < cfg.p_uncond else sample_caption(rng, int(s), int(o))[0]
            for s, o in zip(style_idx[idx], object_idx[idx], strict=True)
        ]
        caps = [add_distractors(rng, c, p=cfg.p_distract) for c in caps]
        cond = encode_text(caps).float()
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = sched.add_noise(z0, noise, t)
        pred = unet(zt.to(device), t.to(device), cond.to(device)).sample
        w = (torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]).to(device)
        loss = (w * F.mse_loss(pred, noise.to(device), reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        return loss.item()

    unet.train()
    run_steps(
        name="UNet",
        steps=cfg.steps,
        step_fn=step_fn,
        ckpt_dir=ckpt_dir,
        modules={"unet": unet, "ema": ema},
        opt=opt,
        progress=progress,
        ckpt_every=250,
    )
    ema.eval()
    ema.save_pretrained(str(out_dir))
    (out_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return ema
