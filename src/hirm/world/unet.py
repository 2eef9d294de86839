"""Stage 6: the MiniSD denoiser, a diffusers ``UNet2DConditionModel`` on 16x16x4 latents.

It is conditioned by cross-attention on the frozen MiniCLIP text encoder's ``last_hidden_state`` over all
77 positions, exactly as SD 1.x. Training is SD's: DDPM noise (1000 steps, scaled-linear betas), epsilon
prediction, the empty prompt ``""`` replaces the caption with probability ``p_uncond`` (classifier-free
guidance), plus Min-SNR-5 loss weighting and an EMA of the weights (the EMA is what is saved).

**Reading the prompt tokens, not the padding.** A causal text encoder copies the whole prompt into every
padding row, and a small denoiser trained on such rows learns to read the concept from the ~70 padding
rows rather than from the word (the first MiniCanvas did: swapping only the padding rows flipped 100 % of
the images). Stable Diffusion's U-Net largely ignores the padding (Toker et al., "Padding Tone", NAACL
2025) and takes the content from the prompt tokens (why Prompt-to-Prompt word swaps and last-token
closed-form edits work). Three conditioning augmentations give MiniSD that behaviour:

- *padding substitution* (always): the rows after the end token are never the caption's own; they are
  the empty prompt's rows at those positions ("clean pads", probability ``p_clean_pads``) or another
  caption's padding rows. Padding then carries no information the denoiser could rely on;
- *end-token substitution* (probability ``p_eot_swap``): the end token's row is another caption's row at
  that position (its end token or one of its padding rows, which a causal encoder makes near-copies of
  it). Without it the denoiser reads the whole prompt from the end token and, because padding rows look
  like end tokens, keeps reading them when the prompt rows are gone (measured on a pilot build: with
  the prompt rows replaced by the empty prompt's, 78 % of the images still had the prompted style);
- *concept-row swap* (probability ``p_swap``): the conditioning of a caption naming concept ``x`` with
  the rows of the concept word replaced by the rows of the same caption written with ``c`` (same token
  count; every other row, including the end token, still from the ``x`` caption) is paired with an image
  of ``c``. The denoiser learns to take a concept from its word's rows, as SD does, rather than from the
  end token, which a causal encoder fills with the whole prompt.

All three are measured, not assumed: ``benchmarks/world_fidelity.py`` runs the padding and token-swap tests.
Text rows (start token through end token) of a fixed table of training captions are computed once with the
frozen encoder (:class:`TextConditioning`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from ._train import autocast, lr_at, run_steps, step_rng
from .captions import add_distractors, caption, object_words, sample_caption, style_words, template_kind
from .concepts import OBJECTS, STYLES, TRAIN_TEMPLATES


@dataclass(frozen=True)
class UnetConfig:
    """Sizes and schedule of the denoiser (defaults = the shipped model)."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_num_groups: int = 16
    batch_size: int = 128
    steps: int = 8000
    lr_horizon: int | None = None  # length of the cosine schedule; None = steps
    lr: float = 6e-4
    warmup: int = 200
    p_uncond: float = 0.1
    p_distract: float = 0.3  # share of table captions with inserted distractor words
    captions_per_pair: int = 96  # size of the caption table per (style, object) pair
    swaps_per_pair: int = 4  # concept-row swap entries per pair and domain
    pad_donors: int = 2048  # captions whose padding rows are used for padding substitution
    p_clean_pads: float = 0.5
    p_eot_swap: float = 1.0
    p_swap: float = 0.5
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    precision: str = "fp32"  # "bf16" = autocast (on CPU not faster for these small convolutions)


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


# ----------------------------------------------------------------------------- text conditioning
def _ids(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    return tokenizer(
        texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_rows(
    text_encoder: CLIPTextModel,
    tokenizer,
    texts: list[str],
    *,
    device: torch.device,
    length: int | None = None,
    batch: int = 256,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``last_hidden_state`` rows of ``texts`` in fp16 and the end-token index of each.

    ``length=None`` keeps the start token through the longest end token only (N, Lmax, D): the encoder is
    causal, so these rows do not depend on what follows. ``length=77`` gives full rows including padding.
    Computed in fp32, the arithmetic the pipeline uses at inference.
    """
    eot = torch.tensor([len(tokenizer(t, truncation=True).input_ids) - 1 for t in texts])
    width = int(eot.max()) + 1 if length is None else length
    out = []
    for i in tqdm(range(0, len(texts), batch), desc="text rows", disable=not progress, mininterval=5):
        ids = _ids(tokenizer, texts[i : i + batch], width).to(device)
        out.append(text_encoder(ids).last_hidden_state.half().cpu())
    return torch.cat(out), eot


@dataclass
class TextConditioning:
    """The denoiser's training conditioning, precomputed with the frozen text encoder.

    Attributes:
        rows: (N, L, D) fp16 rows of the caption table (only start..end token are read).
        eot: (N,) end-token index of each table caption.
        pair_entries: (S * O, K) table indices of the captions of pair ``s * len(OBJECTS) + o``.
        swap_base, swap_donor: (S * O, M) table indices; the conditioning of ``swap_base`` with the rows
            where its tokens differ from ``swap_donor``'s replaced by ``swap_donor``'s rows shows pair
            ``(s, o)`` (the donor's); -1 where no swap exists.
        ids: (N, L) token ids of the table captions (to find a swap's differing positions).
        donor_pads: (P, 77, D) fp16 full rows of other captions (padding source).
        donor_eot: (P,) their end-token indices, sorted ascending.
        empty: (77, D) fp16 rows of the empty prompt (the clean pads and the unconditional input).
    """

    rows: torch.Tensor
    eot: torch.Tensor
    ids: torch.Tensor
    pair_entries: np.ndarray
    swap_base: np.ndarray
    swap_donor: np.ndarray
    donor_pads: torch.Tensor
    donor_eot: torch.Tensor
    empty: torch.Tensor

    def save(self, path: Path) -> None:
        tensors = {k: torch.as_tensor(v).contiguous() for k, v in asdict(self).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TextConditioning:
        t = load_file(str(path))
        return cls(
            **{
                k: (v.numpy() if k in ("pair_entries", "swap_base", "swap_donor") else v)
                for k, v in t.items()
            }
        )

    def batch(
        self, rng: np.random.Generator, s: np.ndarray, o: np.ndarray, *, cfg: UnetConfig
    ) -> torch.Tensor:
        """Conditioning (B, 77, D) fp32 for images of styles ``s`` and objects ``o`` (see module docstring)."""
        n_obj = len(OBJECTS)
        length, width = self.empty.shape
        cond = self.empty.float().expand(len(s), length, width).clone()
        for b, (si, oi) in enumerate(zip(s, o, strict=True)):
            pair = int(si) * n_obj + int(oi)
            if rng.random() < cfg.p_uncond:
                continue  # the empty prompt, as SD's classifier-free-guidance dropout
            swaps = np.flatnonzero(self.swap_base[pair] >= 0)
            if len(swaps) and rng.random() < cfg.p_swap:
                k = swaps[rng.integers(len(swaps))]
                base, donor = int(self.swap_base[pair, k]), int(self.swap_donor[pair, k])
                e = int(self.eot[base])
                cond[b, : e + 1] = self.rows[base, : e + 1].float()
                diff = torch.nonzero(self.ids[base] != self.ids[donor]).flatten()
                cond[b, diff] = self.rows[donor, diff].float()
            else:
                entry = int(self.pair_entries[pair, rng.integers(self.pair_entries.shape[1])])
                e = int(self.eot[entry])
                cond[b, : e + 1] = self.rows[entry, : e + 1].float()
            eligible = int(torch.searchsorted(self.donor_eot, e, right=True))  # donors ending at or before e
            if eligible and rng.random() < cfg.p_eot_swap:  # another caption's row at the end position
                cond[b, e] = self.donor_pads[int(rng.integers(eligible)), e].float()
            if eligible and rng.random() >= cfg.p_clean_pads:  # another caption's padding rows
                d = int(rng.integers(eligible))
                cond[b, e + 1 :] = self.donor_pads[d, e + 1 :].float()
        return cond


def _swap_partner(
    rng: np.random.Generator, tokenizer, template: str, s: int, o: int, sw: int, ow: int, domain: str
) -> tuple[str, str] | None:
    """(base caption naming another concept, donor caption naming (s, o)) differing only in the concept
    word of ``domain`` and with equal token counts; ``None`` if no such partner was found."""
    donor, _ = caption(template, s, o, style_word=sw, object_word=ow)
    n = len(tokenizer(donor).input_ids)
    names = STYLES if domain == "style" else OBJECTS
    for _ in range(12):
        x = int(rng.integers(len(names)))
        if x == (s if domain == "style" else o):
            continue
        if domain == "style":
            w = int(rng.integers(len(style_words(STYLES[x]))))
            base, _ = caption(template, x, o, style_word=w, object_word=ow)
        else:
            w = int(rng.integers(len(object_words(OBJECTS[x]))))
            base, _ = caption(template, s, x, style_word=sw, object_word=w)
        if len(tokenizer(base).input_ids) == n:
            return base, donor
    return None


def make_text_conditioning(
    text_encoder: CLIPTextModel,
    tokenizer,
    *,
    cfg: UnetConfig,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> TextConditioning:
    """Sample the caption table (seeded), the swap pairs and the padding donors; encode them all."""
    rng = np.random.default_rng([seed, 61])
    n_obj = len(OBJECTS)
    texts: list[str] = []
    pair_entries = np.zeros((len(STYLES) * n_obj, cfg.captions_per_pair), dtype=np.int64)
    for s in range(len(STYLES)):
        for o in range(n_obj):
            for k in range(cfg.captions_per_pair):
                pair_entries[s * n_obj + o, k] = len(texts)
                texts.append(add_distractors(rng, sample_caption(rng, s, o)[0], p=cfg.p_distract))
    both = [t for t in TRAIN_TEMPLATES if template_kind(t) == "both"]
    m = 2 * cfg.swaps_per_pair
    swap_base = np.full((len(STYLES) * n_obj, m), -1, dtype=np.int64)
    swap_donor = np.full_like(swap_base, -1)
    for s in range(len(STYLES)):
        for o in range(n_obj):
            for k in range(m):
                domain = "style" if k % 2 == 0 else "object"
                template = both[int(rng.integers(len(both)))]
                sw = int(rng.integers(len(style_words(STYLES[s]))))
                ow = int(rng.integers(len(object_words(OBJECTS[o]))))
                found = _swap_partner(rng, tokenizer, template, s, o, sw, ow, domain)
                if found is not None:
                    swap_base[s * n_obj + o, k] = len(texts)
                    swap_donor[s * n_obj + o, k] = len(texts) + 1
                    texts.extend(found)
    rows, eot = encode_rows(text_encoder, tokenizer, texts, device=device, progress=progress)
    ids = _ids(tokenizer, texts, rows.shape[1])
    donors = [texts[int(i)] for i in rng.choice(len(texts), size=cfg.pad_donors, replace=False)]
    pads, pad_eot = encode_rows(text_encoder, tokenizer, donors, device=device, length=77, progress=progress)
    order = torch.argsort(pad_eot, stable=True)
    empty, _ = encode_rows(text_encoder, tokenizer, [""], device=device, length=77, progress=False)
    return TextConditioning(
        rows=rows,
        eot=eot,
        ids=ids,
        pair_entries=pair_entries,
        swap_base=swap_base,
        swap_donor=swap_donor,
        donor_pads=pads[order],
        donor_eot=pad_eot[order],
        empty=empty[0],
    )


# ----------------------------------------------------------------------------- training
def train_unet(
    out_dir: Path,
    *,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    scaling_factor: float,
    style_idx: np.ndarray,
    object_idx: np.ndarray,
    text: TextConditioning,
    cfg: UnetConfig,
    seed: int,
    device: torch.device,
    ckpt_dir: Path | None = None,
    progress: bool = True,
) -> UNet2DConditionModel:
    """Train the denoiser on posterior samples of the pooled latents; save the EMA weights to ``out_dir``."""
    torch.manual_seed(seed)
    unet = make_unet(
        cfg,
        cross_attention_dim=text.empty.shape[-1],
        latent_channels=latent_mean.shape[1],
        sample_size=latent_mean.shape[-1],
    ).to(device)
    # Plain matrix-product attention for training: on CPU, bf16 scaled-dot-product attention's backward
    # dominates the step. The saved model is unaffected (processors are not part of its weights/config).
    unet.set_attn_processor(AttnProcessor())
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
        cond = text.batch(rng, style_idx[idx], object_idx[idx], cfg=cfg)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = sched.add_noise(z0, noise, t)
        with autocast(device, cfg.precision):
            pred = unet(zt.to(device), t.to(device), cond.to(device)).sample
        w = (torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]).to(device)
        loss = (w * F.mse_loss(pred.float(), noise.to(device), reduction="none").mean(dim=(1, 2, 3))).mean()
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
