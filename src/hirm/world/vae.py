"""Stage 4: a small diffusers ``AutoencoderKL`` (32x32x3 <-> 16x16x4 latents).

Loss: MSE + L1 reconstruction + a weak KL term, as in latent diffusion's first stage without the
adversarial and perceptual parts. After training, ``scaling_factor`` is set to 1 / std of the latents
so that scaled latents have unit variance (the role SD's 0.18215 plays).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ._train import lr_at, run_steps, step_rng, to_float_images


@dataclass(frozen=True)
class VaeConfig:
    """Sizes and schedule of the autoencoder (defaults = the shipped model)."""

    block_out_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    norm_num_groups: int = 16
    batch_size: int = 64
    steps: int = 600
    lr: float = 1e-3
    kl_weight: float = 1e-6


def make_vae(cfg: VaeConfig) -> AutoencoderKL:
    """Randomly initialised AutoencoderKL; ``len(block_out_channels) - 1`` downsamplings."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=32,
    )


def train_vae(
    out_dir: Path,
    *,
    images: np.ndarray,
    cfg: VaeConfig,
    seed: int,
    device: torch.device,
    ckpt_dir: Path | None = None,
    progress: bool = True,
) -> AutoencoderKL:
    """Train on uint8 images (N, 32, 32, 3), set ``scaling_factor`` and ``save_pretrained`` into ``out_dir``."""
    torch.manual_seed(seed)
    vae = make_vae(cfg).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    x_all = to_float_images(images).mul_(2).sub_(1)

    def step_fn(step: int) -> float:
        rng, gen = step_rng(seed, step, stream=5)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base_lr=cfg.lr, warmup=50, total=cfg.steps, final_frac=0.05)
        x = x_all[rng.integers(len(images), size=cfg.batch_size)].to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return loss.item()

    vae.train()
    run_steps(
        name="VAE",
        steps=cfg.steps,
        step_fn=step_fn,
        ckpt_dir=ckpt_dir,
        modules={"vae": vae},
        opt=opt,
        progress=progress,
    )
    vae.eval()
    with torch.no_grad():
        sample = x_all[: min(2048, len(x_all))].to(device)
        lat = torch.cat(
            [vae.encode(sample[i : i + 256]).latent_dist.mean for i in range(0, len(sample), 256)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()), shift_factor=None)
    vae.save_pretrained(str(out_dir))
    (out_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return vae


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, images: np.ndarray, *, device: torch.device, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, C, h, w) of uint8 images, *unscaled*."""
    x = to_float_images(images).mul_(2).sub_(1)
    means, stds = [], []
    for i in range(0, len(x), batch):
        post = vae.encode(x[i : i + batch].to(device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, scaled_latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> float images (N, 3, 32, 32) in [0, 1]."""
    x = vae.decode(scaled_latents / vae.config.scaling_factor).sample
    return (x / 2 + 0.5).clamp(0, 1)
