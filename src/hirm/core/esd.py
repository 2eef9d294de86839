"""ESD: Erasing Concepts from Diffusion Models (Gandikota, Materzyńska, Fiotto-Kaufman, Bau, ICCV 2023).

Fine-tune the U-Net ``theta`` so that, for the concept prompt ``c``, its noise prediction follows the
frozen original ``theta*`` guided *away* from ``c`` (negative guidance, eq. 4)::

    eps_theta(x_t, c, t)  <-  eps_theta*(x_t, t) - eta * (eps_theta*(x_t, c, t) - eps_theta*(x_t, t))

(``eps(x_t, t)`` = the empty-prompt prediction), with an MSE loss. As in the paper, ``x_t`` is made by
partially denoising a random latent with the *current* model: DDIM with ``ddim_steps`` steps and
classifier-free guidance ``start_guidance`` on the concept prompt, stopped after a random number
``t_enc`` of steps; the loss is taken at the timestep the latent is at, ``scheduler.timesteps[t_enc]``
(as the authors' diffusers script ``esd_sd.py`` does; their first CompVis script instead draws a DDPM
timestep from ``[t_enc, t_enc + 1) * 1000 / ddim_steps``).

Which tensors, as the CompVis script ``train-esd.py`` (rohitgandikota/erasing, before its diffusers
rewrite) selects them: ``esd-x`` = its ``xattn``, every parameter inside a cross-attention (``attn2``)
module (to_q, to_k, to_v, to_out); ``esd-u`` = its ``noxattn``, every parameter except cross-attention,
the output block (CompVis ``out.*`` = diffusers ``conv_norm_out`` and ``conv_out``) and the time
embedding (CompVis ``time_embed`` = diffusers ``time_embedding``; the residual blocks' own time
projections, CompVis ``emb_layers`` = diffusers ``time_emb_proj``, do train). The diffusers rewrite
``esd_sd.py`` differs (it trains only Linear/Conv2d layers, and ``esd-u`` there includes the output conv
and the time embedding's linears); we follow the script behind the paper.

Conventions: ``negative_guidance`` is the paper's eta (the target above); ``esd_sd.py`` writes the
target as ``eps(c) - eta' (eps(c) - eps())``, i.e. eta' = eta + 1 (its default 2 = our 1). With a
v-prediction scheduler the same linear target is formed in v space.

Departures, all ours, off by default and named: ``ESDConfig.preserve`` adds a retain term that keeps
the original U-Net's predictions for other prompts, ``preserve_nearest`` (and ``nearest_latents``) the
same term on the preserve prompts nearest each concept (see their attributes), ``adversary`` trains
against a learned word embedding (AdvUnlearn's attack-and-unlearn loop on ESD's tensors, see
:class:`EmbeddingAdversary`), :func:`erase`'s ``trained_on`` trains with another U-Net patch in
place, and its ``retain_through`` takes the retain terms through the patches that will ship with ESD's
(the adversary too with ``adversary_through``); without them every step is the authors'.

:func:`erase` with several concepts trains one U-Net on all of them (a random concept per step). To
erase each concept *separately* (one patch per concept), many at a time in one batched run, see
:func:`hirm.core.esd_batched.erase_each`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from hirm.core.config import (
    Concept,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_prompts,
    check_seed,
)
from hirm.core.hirm import NonFiniteLossError
from hirm.core.patch import Patch, apply_patches, component_parameters, make_patch
from hirm.core.registry import MethodSpec, register
from hirm.core.uce import prompt_embeddings

logger = logging.getLogger(__name__)

ESDVariant = Literal["esd-x", "esd-u"]


@dataclass(frozen=True)
class ESDConfig:
    """ESD settings; defaults are the paper's (1000 Adam steps, lr 1e-5, eta 1, start guidance 3, DDIM 50).

    Attributes:
        variant: ``esd-x`` = train only cross-attention (``attn2``) parameters (for styles);
            ``esd-u`` = every U-Net parameter except cross-attention, the time embedding and the output
            block (CompVis ``noxattn``; for nudity, objects).
        steps: optimizer steps (one latent and one concept per step).
        lr: Adam learning rate.
        negative_guidance: ``eta``, how far the target moves away from the concept.
        start_guidance: classifier-free guidance used when sampling ``x_t`` with the current model.
        ddim_steps: DDIM steps of the sampling schedule ``x_t`` is drawn from.
        seed: seeds the latents, ``t_enc`` and the concept drawn at each step.
        precision: ``fp32`` (the authors') or ``bf16`` = the U-Net forwards (sampling, targets, the
            trained prediction) under bfloat16 autocast; weights, Adam state, latents and the loss stay
            float32. For running the published 1000 steps where fp32 is too slow.
        preserve: prompts whose predictions the trained U-Net should keep (ours; ``()``, the default, is
            the authors' ESD). Each step also draws one of them, ``p``, and adds ``preserve_weight *
            ||eps_theta(x_t, p, t) - eps_theta*(x_t, p, t)||^2`` at the same ``x_t`` and ``t`` (the
            concept's latent: no second sampling), the retain term AdvUnlearn and UCE's preserve set
            stand for. The patch's ``losses`` are then the sum, ``retain_losses`` the term alone. Not
            in the paper's ESD; one concept at a time (:mod:`hirm.core.esd_batched` refuses it); a
            prompt that is also an erased concept is refused.
        preserve_weight: the retain term's weight (> 0).
        preserve_nearest: ``k`` (ours; 0, the default, = off). Besides the uniform draw, each step also adds
            ``preserve_weight`` times the retain term on the ``k`` preserve prompts nearest the step's
            concept, batched at the same ``x_t`` and ``t``. Nearness is ranked once before training
            (:func:`nearest_preserved`): the mean over :data:`NEAREST_PROBES` latents of ``||eps*(x_t, p, t)
            - eps*(x_t, c, t)||^2``, the latents sampled as the training's are, from a generator of its own
            (so the training's random stream is unchanged). Meant for the few neighbours an ESD-u erasure
            drags along (an object's closest object). Needs a preserve set of at least ``k`` prompts.
        nearest_latents: where the ``preserve_nearest`` term is evaluated (ours). ``concept``: at the step's
            ``x_t`` (the concept's latent, like the uniform term). ``own``: at each nearest prompt's own
            latents, a bank of :data:`NEAREST_BANK` per prompt sampled once before training by the frozen
            U-Net with the prompt in the concept's place (:func:`nearest_bank`), one entry per prompt
            drawn each step from the bank's generator. At the concept's latent the kept predictions keep
            the U-Net able to denoise the concept's images under a neighbour's conditioning, a path a
            learned embedding can take; the neighbour's own images come from its own latents.
        adversary: ``embedding`` (ours; ``none``, the default, = the authors' ESD): ESD trained against a
            learned word embedding, as AdvUnlearn trains its text encoder against one (Zhang et al.,
            NeurIPS 2024; their paper weighs the loop on the U-Net and prefers the text encoder). One
            vector per concept, started at the concept word's embedding (the mean of its tokens), stands
            in the concept's place in the concept prompt and is encoded by the original text encoder. At
            every step but the first (where the trained U-Net is still the original) it takes one Adam
            step (``adversary_lr``) toward recovering the concept,
            ``||eps_theta(x_t, E(v), t) - eps*(x_t, c, t)||^2`` at the step's own ``x_t`` and ``t``, and
            ESD's loss adds ``adversary_weight`` times ESD's term at that input,
            ``||eps_theta(x_t, E(v), t) - target||^2`` (the concept's target): free adversarial training,
            one attacker step per training step, the attacker kept from step to step (textual inversion's
            threat: a word the erased model still draws the concept from). No random draw, so the
            training's stream is unchanged. The patch records both terms (``adversary_losses``,
            ``adversary_recovery``) and each concept's last vector (``adversary_vectors``).
        adversary_lr: the adversary's Adam learning rate (> 0; 2e-2 = the textual-inversion attack's
            effective rate at its CPU defaults, 5e-3 x batch 4).
        adversary_weight: the weight of ESD's term at the adversary's input (> 0).
        adversary_through: the adversary attacks the model as it will ship (ours; ``False``, the default,
            = the trained U-Net alone with the original text encoder). Needs :func:`erase`'s
            ``retain_through`` patch (the parts that ship with ESD's): the vector is encoded by the text
            encoder carrying the patch's encoder tensors and read by the trained U-Net carrying the patch's
            U-Net tensors in that forward only, both for its recovery step and for ESD's term at its
            input, so ESD is trained against what an attacker of the shipped model finds. The attacker
            also steps at the first step (the shipped parts have erased something to recover already).
    """

    variant: ESDVariant = "esd-x"
    steps: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0
    start_guidance: float = 3.0
    ddim_steps: int = 50
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    preserve: tuple[str, ...] = ()
    preserve_weight: float = 1.0
    preserve_nearest: int = 0
    nearest_latents: Literal["concept", "own"] = "concept"
    adversary: Literal["none", "embedding"] = "none"
    adversary_lr: float = 2e-2
    adversary_weight: float = 1.0
    adversary_through: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_prompts(owner, "preserve", self.preserve)
        check_float(owner, "preserve_weight", self.preserve_weight, positive=True)
        if self.preserve_weight != 1.0 and not self.preserve:
            raise ValueError(f"{owner}.preserve_weight is set without a preserve set; add preserve prompts.")
        check_int(owner, "preserve_nearest", self.preserve_nearest, minimum=0)
        if self.preserve_nearest > len(self.preserve):
            raise ValueError(
                f"{owner}.preserve_nearest is {self.preserve_nearest} but the preserve set has "
                f"{len(self.preserve)} prompts; lower it or add preserve prompts."
            )
        check_choice(owner, "nearest_latents", self.nearest_latents, ("concept", "own"))
        if self.nearest_latents != "concept" and not self.preserve_nearest:
            raise ValueError(
                f"{owner}.nearest_latents is set without preserve_nearest; set preserve_nearest."
            )
        check_choice(owner, "adversary", self.adversary, ("none", "embedding"))
        check_float(owner, "adversary_lr", self.adversary_lr, positive=True)
        check_float(owner, "adversary_weight", self.adversary_weight, positive=True)
        if self.adversary == "none" and (self.adversary_lr != 2e-2 or self.adversary_weight != 1.0):
            raise ValueError(
                f"{owner}: adversary_lr or adversary_weight is set without an adversary; "
                "set adversary='embedding'."
            )
        check_bool(owner, "adversary_through", self.adversary_through)
        if self.adversary_through and self.adversary == "none":
            raise ValueError(
                f"{owner}.adversary_through is set without an adversary; set adversary='embedding'."
            )
        check_choice(owner, "variant", self.variant, get_args(ESDVariant))
        check_int(owner, "steps", self.steps, minimum=1)
        check_float(owner, "lr", self.lr, positive=True)
        check_float(owner, "negative_guidance", self.negative_guidance, minimum=0.0)
        check_float(owner, "start_guidance", self.start_guidance, minimum=0.0)
        check_int(owner, "ddim_steps", self.ddim_steps, minimum=1)
        check_seed(owner, "seed", self.seed)
        check_choice(owner, "precision", self.precision, ("fp32", "bf16"))

    def to_dict(self) -> dict[str, Any]:
        """The settings; the preserve set's only when one is given, ``preserve_nearest`` only when on and
        ``nearest_latents`` only when not the default and the adversary's only when on (``adversary_through``
        only when set), so the authors' ESD (and ESD with a uniform retain term) keeps the record (and the
        batched runs' cache keys) it had before the options existed."""
        out = asdict(self)
        if not self.preserve:
            del out["preserve"], out["preserve_weight"]
        if not self.preserve_nearest:
            del out["preserve_nearest"]
        if self.nearest_latents == "concept":
            del out["nearest_latents"]
        if self.adversary == "none":
            del out["adversary"], out["adversary_lr"], out["adversary_weight"]
        if not self.adversary_through:
            del out["adversary_through"]
        return out


@dataclass(frozen=True)
class ESDXConfig(ESDConfig):
    """ESD-x: cross-attention only (the paper's choice for artistic styles). The config of ``esd-x``."""

    variant: ESDVariant = "esd-x"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant != "esd-x":
            raise ValueError("ESDXConfig is the esd-x config; use ESDUConfig (or ESDConfig) for esd-u.")


@dataclass(frozen=True)
class ESDUConfig(ESDConfig):
    """ESD-u: everything but cross-attention (the paper's choice for nudity and objects). The config of ``esd-u``."""

    variant: ESDVariant = "esd-u"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant != "esd-u":
            raise ValueError("ESDUConfig is the esd-u config; use ESDXConfig (or ESDConfig) for esd-x.")


#: Top-level diffusers U-Net modules that CompVis ``noxattn`` freezes besides cross-attention: the time
#: embedding (CompVis ``time_embed``) and the output block (CompVis ``out.0`` / ``out.2``).
NOXATTN_FROZEN: tuple[str, ...] = ("time_embedding", "conv_norm_out", "conv_out")


def trainable_names(unet: nn.Module, variant: ESDVariant) -> list[str]:
    """U-Net parameter names ESD trains, by exact module name: every parameter inside an ``attn2``
    module (esd-x = CompVis ``xattn``), or every parameter outside ``attn2`` and outside
    :data:`NOXATTN_FROZEN` (esd-u = CompVis ``noxattn``)."""
    names = list(component_parameters(unet))
    in_xattn = [n for n in names if "attn2" in n.split(".")]
    if not in_xattn:
        raise ValueError(
            f"{type(unet).__name__} has no cross-attention (attn2) modules; ESD needs a text-conditioned U-Net."
        )
    if variant == "esd-x":
        return in_xattn
    return [n for n in names if n not in set(in_xattn) and n.split(".")[0] not in NOXATTN_FROZEN]


def esd_target(eps_empty: Tensor, eps_concept: Tensor, negative_guidance: float) -> Tensor:
    """``eps*(x_t, t) - eta (eps*(x_t, c, t) - eps*(x_t, t))`` from the frozen model's two predictions."""
    return eps_empty - negative_guidance * (eps_concept - eps_empty)


@torch.no_grad()
def sample_until(
    unet: nn.Module, scheduler, latents: Tensor, emb_c: Tensor, emb_0: Tensor, t_enc: int, guidance: float
) -> Tensor:
    """Run ``t_enc`` DDIM steps of classifier-free guided sampling from ``latents`` (no grad)."""
    for t in scheduler.timesteps[:t_enc]:
        both = unet(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([emb_0, emb_c])).sample
        uncond, cond = both.float().chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    return latents


def draw_latent(
    unet: nn.Module,
    scheduler,
    emb_c: Tensor,
    emb_0: Tensor,
    config: ESDConfig,
    generator: torch.Generator,
    channels: int,
    size: tuple[int, int],
) -> tuple[Tensor, int]:
    """One ESD training latent: ``t_enc`` and a start noise drawn from ``generator`` (in that order), then
    ``t_enc`` guided DDIM steps (:func:`sample_until`, the config's start guidance) on ``emb_c``. Returns
    ``x_t`` (float32) and ``t_enc``."""
    t_enc = int(torch.randint(config.ddim_steps, (1,), generator=generator))
    noise = (
        torch.randn((1, channels, *size), generator=generator).to(emb_0.device) * scheduler.init_noise_sigma
    )
    return sample_until(unet, scheduler, noise, emb_c, emb_0, t_enc, config.start_guidance).float(), t_enc


#: Probe latents per concept that rank the preserve prompts for ``ESDConfig.preserve_nearest``.
NEAREST_PROBES = 8


@torch.no_grad()
def nearest_preserved(
    unet: nn.Module,
    scheduler,
    emb_0: Tensor,
    emb_concepts: Tensor,
    emb_keep: Tensor,
    config: ESDConfig,
    *,
    channels: int,
    size: tuple[int, int],
) -> list[list[int]]:
    """Per concept, the indices of the ``config.preserve_nearest`` preserve prompts whose noise predictions
    (the frozen ``unet``'s) are nearest the concept's, nearest first. For each of :data:`NEAREST_PROBES`
    probes a ``t_enc`` and a start noise are drawn from a generator of its own seeded with ``config.seed``,
    ``x_t`` is sampled as ESD samples its training latents (:func:`sample_until` with the start guidance)
    and each prompt's squared distance ``mean((eps(x_t, p, t) - eps(x_t, c, t))^2)`` is added up; ties keep
    the preserve set's order. Runs under the config's precision, as the training does."""
    device = emb_0.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    chunk = 16  # preserve prompts per forward
    out = []
    for k in range(emb_concepts.shape[0]):
        emb_c = emb_concepts[k : k + 1]
        distance = torch.zeros(emb_keep.shape[0], dtype=torch.float64)
        for _ in range(NEAREST_PROBES):
            with autocast:
                x_t, t_enc = draw_latent(unet, scheduler, emb_c, emb_0, config, generator, channels, size)
                t = scheduler.timesteps[t_enc]
                eps_c = unet(x_t, t, encoder_hidden_states=emb_c).sample.float()
                for i in range(0, emb_keep.shape[0], chunk):
                    keep = emb_keep[i : i + chunk]
                    eps_p = unet(x_t.expand(keep.shape[0], -1, -1, -1), t, encoder_hidden_states=keep).sample
                    distance[i : i + chunk] += (
                        (eps_p.float() - eps_c).pow(2).flatten(1).mean(1).double().cpu()
                    )
        order = sorted(range(len(distance)), key=lambda j: (float(distance[j]), j))
        out.append(order[: config.preserve_nearest])
    return out


#: Latents per nearest prompt in the bank of ``ESDConfig.nearest_latents = "own"``.
NEAREST_BANK = 32


@torch.no_grad()
def nearest_bank(
    unet: nn.Module,
    scheduler,
    emb_0: Tensor,
    emb_prompts: Tensor,
    config: ESDConfig,
    generator: torch.Generator,
    *,
    channels: int,
    size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """For each prompt of ``emb_prompts`` (P, L, D), :data:`NEAREST_BANK` latents sampled by the frozen
    ``unet`` as ESD samples its training latents, the prompt in the concept's place: ``t_enc`` and a start
    noise drawn from ``generator`` (the training's bank generator, seeded with ``config.seed + 1``), then
    :func:`sample_until` with the start guidance. Returns the latents (P, B, C, H, W) and their ``t_enc``
    indices (P, B)."""
    autocast = torch.autocast(emb_0.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    latents, steps = [], []
    for p in range(emb_prompts.shape[0]):
        for _ in range(NEAREST_BANK):
            with autocast:
                x_t, t_enc = draw_latent(
                    unet, scheduler, emb_prompts[p : p + 1], emb_0, config, generator, channels, size
                )
            latents.append(x_t)
            steps.append(t_enc)
    shape = (emb_prompts.shape[0], NEAREST_BANK)
    return torch.cat(latents).reshape(*shape, channels, *size), torch.tensor(steps).reshape(shape)


class EmbeddingAdversary:
    """The attacker of ``ESDConfig.adversary = "embedding"`` (ours): one word-embedding vector (1, D) per
    concept, started at the mean of the concept's token embeddings, in the one slot of ``[start] <slot>
    [end]`` (the concept prompt with the vector in the concept's place), encoded by the frozen original
    text encoder (``encoder``: the shipped one, ``ESDConfig.adversary_through``); each vector has an Adam
    optimizer of its own (``adversary_lr``)."""

    def __init__(
        self,
        model,
        concepts: Sequence[Concept],
        config: ESDConfig,
        device: torch.device,
        encoder: nn.Module | None = None,
    ) -> None:
        # the attacks' prompt helpers: the same slot mechanics textual inversion uses (imported here, as
        # hirm.core.advunlearn does, so that hirm.core loads without hirm.attacks)
        from hirm.attacks.text import as_batch, slot_id, token_embedding, with_slots, word_ids

        self.encoder = model.text_encoder("text_encoder") if encoder is None else encoder
        tokenizer = model.tokenizer("text_encoder")
        ids, mask = with_slots(tokenizer, "<adversary>", "<adversary>", 1, slot_id(tokenizer))
        self.ids, self.mask = as_batch([ids], device), torch.tensor([mask], device=device)
        table = token_embedding(self.encoder).weight.detach()
        self.vectors = [
            table[word_ids(tokenizer, c.text)].float().mean(dim=0, keepdim=True).clone().requires_grad_(True)
            for c in concepts
        ]
        self.optimizers = [torch.optim.Adam([v], lr=config.adversary_lr) for v in self.vectors]

    def embed(self, k: int) -> Tensor:
        """Concept ``k``'s adversarial input, encoded (1, L, D); differentiable in its vector."""
        from hirm.attacks.text import encode

        return encode(self.encoder, self.ids, self.mask, self.vectors[k][None])

    def step(self, k: int, grad: Tensor) -> None:
        """One Adam step of concept ``k``'s vector down ``grad`` (the recovery loss's gradient)."""
        self.vectors[k].grad = grad
        self.optimizers[k].step()


def _check_model(model, components: Sequence[str] | None, unet: nn.Module) -> None:
    if model.family.name != "sd" or model.family.denoiser != "unet":
        raise ValueError(
            f"ESD is implemented for Stable Diffusion 1.x/2.x (one CLIP text encoder + U-Net); "
            f"{model.source} is a {model.family.name!r} model."
        )
    if components is not None and list(components) != ["unet"]:
        raise ValueError(f"ESD edits only the 'unet' component; got components={list(components)}.")
    dtype = next(unet.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"ESD trains in float32; load the model with dtype=torch.float32 (it is {dtype}).")


@dataclass
class _Setup:
    """What every ESD run needs from the model: the frozen U-Net, the prompts' embeddings, the schedule."""

    unet: nn.Module
    device: torch.device
    concepts: list[Concept]
    emb_0: Tensor  # (1, L, D): the empty prompt
    emb_concepts: Tensor  # (N, L, D)
    scheduler: Any
    channels: int
    size: tuple[int, int]
    names: list[str]


def _setup(model, concepts: Sequence[Concept], config: ESDConfig, components: Sequence[str] | None) -> _Setup:
    from diffusers import DDIMScheduler

    unet = model.component("unet")
    _check_model(model, components, unet)
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    device = next(unet.parameters()).device
    hidden, _ = prompt_embeddings(
        model.text_encoder("text_encoder"), model.tokenizer("text_encoder"), ["", *[c.text for c in concepts]]
    )
    scheduler = DDIMScheduler.from_config(model.component("scheduler").config)
    scheduler.set_timesteps(config.ddim_steps, device=device)
    size = unet.config.sample_size
    return _Setup(
        unet=unet,
        device=device,
        concepts=concepts,
        emb_0=hidden[:1].to(device),
        emb_concepts=hidden[1:].to(device),
        scheduler=scheduler,
        channels=unet.config.in_channels,
        size=(size, size) if isinstance(size, int) else tuple(size),
        names=trainable_names(unet, config.variant),
    )


def _check_trained_on(patch: Patch, names: Sequence[str]) -> None:
    """``erase``'s ``trained_on`` must change U-Net tensors only, none that ESD trains."""
    others = sorted({key.split("/", 1)[0] for key in patch.tensors} - {"unet"})
    if others:
        raise ValueError(f"ESD: trained_on changes {others}, not only the U-Net; give a U-Net patch.")
    both = sorted(set(names) & {key.split("/", 1)[1] for key in patch.tensors})
    if both:
        raise ValueError(
            f"ESD: trained_on changes {len(both)} tensors that ESD trains (e.g. {both[0]!r}); "
            "give a patch of other tensors or merge the two patches instead."
        )


@dataclass(frozen=True)
class _Shipped:
    """What ``erase``'s ``retain_through`` changes in the retain terms' trained prediction: the kept
    prompts as the shipped text encoder encodes them, the shipped U-Net tensors (own names) on ``device``."""

    emb_keep: Tensor  # (P, L, D)
    unet: dict[str, Tensor]
    encoder: nn.Module  # the text encoder carrying the patch's encoder tensors (frozen)


def _shipped(
    model, patch: Patch, names: Sequence[str], prompts: Sequence[str], trained: nn.Module
) -> _Shipped:
    """``erase``'s ``retain_through``: checked (text-encoder and U-Net tensors only, none that ESD trains),
    the kept prompts encoded by a copy of the text encoder carrying the patch's encoder tensors."""
    others = sorted(set(patch.components) - {"unet", "text_encoder"})
    if others:
        raise ValueError(
            f"ESD: retain_through changes {others}; give a patch of text_encoder and U-Net tensors only."
        )
    both = sorted(set(names) & {k.split("/", 1)[1] for k in patch.tensors if k.startswith("unet/")})
    if both:
        raise ValueError(
            f"ESD: retain_through changes {len(both)} tensors that ESD trains (e.g. {both[0]!r}); "
            "give a patch of other tensors."
        )
    device = next(trained.parameters()).device
    encoder = model.text_encoder("text_encoder")
    if "text_encoder" in patch.components:
        encoder = copy.deepcopy(encoder)
        apply_patches(encoder, [patch], component="text_encoder", keep_originals=False)
    emb_keep = prompt_embeddings(encoder, model.tokenizer("text_encoder"), list(prompts))[0].to(device)
    dtypes = {n: p.dtype for n, p in trained.named_parameters()}
    unet = (
        {n: v.to(device, dtypes[n]) for n, v in patch.state_dict("unet", trained).items()}
        if "unet" in patch.components
        else {}
    )
    return _Shipped(emb_keep=emb_keep, unet=unet, encoder=encoder)


def _retain_term(
    trained: nn.Module,
    unet: nn.Module,
    x_t: Tensor,
    t,
    emb: Tensor,
    *,
    shipped_emb: Tensor | None = None,
    shipped_unet: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``mean ||eps_theta(x_t, p, t) - eps_theta*(x_t, p, t)||^2`` over the rows of ``emb`` (ours: the
    retain terms of ``ESDConfig.preserve`` and ``preserve_nearest``). With ``shipped_emb`` (the same
    prompts through the shipped encoder) and ``shipped_unet`` (tensors in the trained U-Net's place for
    this forward only): the original model against the trained U-Net as it will ship."""
    with torch.no_grad():
        keep = unet(x_t, t, encoder_hidden_states=emb).sample
    if shipped_emb is None:
        kept = trained(x_t, t, encoder_hidden_states=emb).sample
    else:
        kept = _as_shipped(trained, shipped_unet or {}, x_t, t, shipped_emb)
    return nn.functional.mse_loss(kept.float(), keep.float())


def _as_shipped(trained: nn.Module, tensors: Mapping[str, Tensor], x_t: Tensor, t, emb: Tensor) -> Tensor:
    """The trained U-Net's prediction with ``tensors`` (the shipped parts' U-Net tensors) in place for this
    forward only (``torch.func.functional_call``: no tensor is swapped under autograd)."""
    return functional_call(
        trained, dict(tensors), (x_t, t), {"encoder_hidden_states": emb}, strict=False
    ).sample


def _through(shipped: _Shipped, rows: Sequence[int]) -> dict[str, Any]:
    """``_retain_term``'s keywords for the kept prompts ``rows`` as they ship."""
    return {"shipped_emb": shipped.emb_keep[list(rows)], "shipped_unet": shipped.unet}


def erase(
    model,
    concepts: Sequence[Concept],
    config: ESDConfig = ESDConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
    trained_on: Patch | None = None,
    retain_through: Patch | None = None,
) -> Patch:
    """ESD on the U-Net of ``model`` (a ``ModelHandle``); returns a patch of the trained tensors.

    A copy of the U-Net is trained; the caller's U-Net serves as the frozen ``theta*`` and is never
    modified (gradients are not even enabled on it).

    ``trained_on`` (ours; ``None`` = the authors' ESD): a patch of U-Net tensors that ESD does not train
    (e.g. KV-Proj's cross-attention edit for ``esd-u``), applied to the trained copy only, so the U-Net is
    trained with the weights it will run with (every ``x_t`` it samples and every prediction of the trained
    U-Net see the patch) while ESD's target and the retain term's predictions still come from the caller's
    U-Net. The returned patch holds only ESD's tensors (merge it with ``trained_on`` to get the model it was
    trained for) and records ``trained_on``'s method and digest; it is refused where it touches a tensor
    ESD trains or another component.

    ``retain_through`` (ours; ``None`` = the retain terms as above): the patch of the parts that will ship
    with ESD's (text-encoder and U-Net tensors, none that ESD trains; e.g. HiRM's and KV-Proj's merged).
    The retain terms (``ESDConfig.preserve``, ``preserve_nearest``; one is needed) then compare the
    original model's prediction for a kept prompt with the trained U-Net's as it will run: the prompt
    encoded by the text encoder carrying the patch's encoder tensors, the trained U-Net carrying the
    patch's U-Net tensors in that forward only. ESD's own term and its ``x_t`` draws see the trained U-Net
    alone, as without; the adversary too, unless ``ESDConfig.adversary_through`` (which needs this patch).
    The patch records ``retain_through``'s method and digest.
    """
    start = time.perf_counter()
    setup = _setup(model, concepts, config, components)
    unet, device, emb_0, emb_concepts = setup.unet, setup.device, setup.emb_0, setup.emb_concepts
    scheduler, channels, size, names = setup.scheduler, setup.channels, setup.size, setup.names
    concepts = setup.concepts
    trained = copy.deepcopy(unet).eval().requires_grad_(False)
    if trained_on is not None:  # ours: the weights the trained U-Net will run with, frozen
        _check_trained_on(trained_on, names)
        apply_patches(trained, [trained_on], component="unet", keep_originals=False)
    params = component_parameters(trained)
    for name in names:
        params[name].requires_grad_(True)
    trainable = [params[n] for n in names]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    logger.info(
        "ESD (%s) trains %d tensors (%d parameters).",
        config.variant,
        len(names),
        sum(params[n].numel() for n in names),
    )

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    emb_keep = None
    both = sorted({c.text for c in concepts} & set(config.preserve))
    if both:
        raise ValueError(f"ESD: {both} are both erased and preserved; remove them from preserve.")
    if config.preserve:
        emb_keep = prompt_embeddings(
            model.text_encoder("text_encoder"), model.tokenizer("text_encoder"), list(config.preserve)
        )[0].to(device)
    shipped = None
    if retain_through is not None:  # ours: the retain terms through the parts that ship with ESD's
        if emb_keep is None:
            raise ValueError(
                "ESD: retain_through acts on the retain term; give a preserve set (ESDConfig.preserve)."
            )
        shipped = _shipped(model, retain_through, names, config.preserve, trained)
    if config.adversary_through and shipped is None:
        raise ValueError(
            "ESD: adversary_through attacks the model through erase's retain_through patch; give one "
            "(the parts that ship with ESD's)."
        )
    nearest = None
    if config.preserve_nearest:  # ours (ESDConfig.preserve_nearest): ranked once, with a generator of its own
        nearest = nearest_preserved(
            unet, scheduler, emb_0, emb_concepts, emb_keep, config, channels=channels, size=size
        )
        for concept, picked in zip(concepts, nearest, strict=True):
            logger.info("ESD keeps %r nearest %r.", [config.preserve[j] for j in picked], concept.text)
    banks, bank_generator = None, None
    if config.preserve_nearest and config.nearest_latents == "own":  # ours: the nearest prompts' own latents
        # one generator of its own: first every concept's bank, then the training's draws from the banks
        bank_generator = torch.Generator(device="cpu").manual_seed(config.seed + 1)
        banks = [
            nearest_bank(
                unet, scheduler, emb_0, emb_keep[picked], config, bank_generator, channels=channels, size=size
            )
            for picked in nearest
        ]
    adversary = None
    if config.adversary == "embedding":  # ours (ESDConfig.adversary)
        adversary = EmbeddingAdversary(
            model, concepts, config, device, encoder=shipped.encoder if config.adversary_through else None
        )
    losses: list[float] = []
    retained: list[float] = []
    retained_nearest: list[float] = []
    adversarial: list[float] = []
    recovered: list[float] = []
    bar = tqdm(range(config.steps), desc=f"ESD {config.variant}", disable=not progress, leave=False)
    for step in bar:
        k = int(torch.randint(len(concepts), (1,), generator=generator))
        emb_c = emb_concepts[k : k + 1]
        with autocast:
            x_t, t_enc = draw_latent(trained, scheduler, emb_c, emb_0, config, generator, channels, size)
            t = scheduler.timesteps[t_enc]
            with torch.no_grad():
                both = unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=torch.cat([emb_0, emb_c])).sample
                eps_empty, eps_concept = both.float().chunk(2)
                target = esd_target(eps_empty, eps_concept, config.negative_guidance)
            optimizer.zero_grad(set_to_none=True)
            prediction = trained(x_t, t, encoder_hidden_states=emb_c).sample
        loss = nn.functional.mse_loss(prediction.float(), target)
        if emb_keep is not None:  # ours (ESDConfig.preserve): drawn after the authors' draws, so without a
            # preserve set the random stream and every step are the authors'
            j = int(torch.randint(len(config.preserve), (1,), generator=generator))
            with autocast:
                retain = _retain_term(
                    trained,
                    unet,
                    x_t,
                    t,
                    emb_keep[j : j + 1],
                    **({} if shipped is None else _through(shipped, [j])),
                )
            retained.append(retain.item())
            loss = loss + config.preserve_weight * retain
        if nearest is not None:  # ours (ESDConfig.preserve_nearest): the concept's nearest, no random draw
            emb_near = emb_keep[nearest[k]]
            x_near, t_near = x_t.expand(emb_near.shape[0], -1, -1, -1), t
            if banks is not None:  # one bank entry per nearest prompt, at its own timestep
                bank, bank_steps = banks[k]
                b = torch.randint(NEAREST_BANK, (emb_near.shape[0],), generator=bank_generator)
                rows = torch.arange(emb_near.shape[0])
                x_near = bank[rows, b].to(device)
                t_near = scheduler.timesteps[bank_steps[rows, b].to(scheduler.timesteps.device)]
            with autocast:
                near = _retain_term(
                    trained,
                    unet,
                    x_near,
                    t_near,
                    emb_near,
                    **({} if shipped is None else _through(shipped, nearest[k])),
                )
            retained_nearest.append(near.item())
            loss = loss + config.preserve_weight * near
        attacker_grad = None
        if adversary is not None:  # ours (ESDConfig.adversary): no random draw, the stream is unchanged
            emb_adv = adversary.embed(k)
            with autocast:
                if config.adversary_through:
                    attacked = _as_shipped(trained, shipped.unet, x_t, t, emb_adv).float()
                else:
                    attacked = trained(x_t, t, encoder_hidden_states=emb_adv).sample.float()
            recovery = nn.functional.mse_loss(attacked, eps_concept)
            erased = nn.functional.mse_loss(attacked, target)
            # at the first step the trained U-Net is the original: nothing to recover but rounding, unless
            # the shipped parts stand in the way
            if step or config.adversary_through:
                (attacker_grad,) = torch.autograd.grad(recovery, adversary.vectors[k], retain_graph=True)
            recovered.append(recovery.item())
            adversarial.append(erased.item())
            loss = loss + config.adversary_weight * erased
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"Loss became {value} at step {len(losses)}; lower the learning rate. Nothing was saved."
            )
        losses.append(value)
        loss.backward(inputs=trainable)  # only ESD's tensors (not the adversary's vector, not the encoder)
        optimizer.step()
        if attacker_grad is not None:  # the attacker moves after the step it was trained against
            adversary.step(k, attacker_grad)
        bar.set_postfix(loss=f"{value:.4g}")

    originals = dict(component_parameters(unet))
    patch = make_patch(
        method=config.variant,
        originals={f"unet/{n}": originals[n].detach() for n in names},
        edited={f"unet/{n}": params[n].detach() for n in names},
        config=config.to_dict(),
        concepts=[c.record(target=False) for c in concepts],
        base=model.base_info(),
        extra={
            "seconds": time.perf_counter() - start,
            "losses": {"unet": losses},
            "final_loss": {"unet": losses[-1]},
            **({"retain_losses": {"unet": retained}} if retained else {}),
            **(
                {
                    "adversary_losses": {"unet": adversarial},
                    "adversary_recovery": {"unet": recovered},
                    "adversary_vectors": {
                        c.text: v.detach().reshape(-1).tolist() for c, v in zip(concepts, adversary.vectors)
                    },
                }
                if adversary is not None
                else {}
            ),
            **(
                {"trained_on": {"method": trained_on.metadata.get("method"), "digest": trained_on.digest}}
                if trained_on is not None
                else {}
            ),
            **(
                {
                    "retain_through": {
                        "method": retain_through.metadata.get("method"),
                        "digest": retain_through.digest,
                    }
                }
                if retain_through is not None
                else {}
            ),
            **(
                {
                    "retain_nearest_losses": {"unet": retained_nearest},
                    "nearest": {
                        c.text: [config.preserve[j] for j in picked] for c, picked in zip(concepts, nearest)
                    },
                }
                if nearest is not None
                else {}
            ),
        },
    )
    del trained, optimizer
    return patch


def _erase_as(variant: ESDVariant):
    """``erase`` for one registered name: refuses a config of the other variant instead of running it."""

    def erase_variant(
        model, concepts: Sequence[Concept], config: ESDConfig | None = None, **kwargs: Any
    ) -> Patch:
        config = ESDConfig(variant=variant) if config is None else config
        if config.variant != variant:
            raise ValueError(
                f"Method {variant!r} got a config with variant={config.variant!r}; use method {config.variant!r}."
            )
        return erase(model, concepts, config, **kwargs)

    erase_variant.__name__ = f"erase_{variant.replace('-', '_')}"
    erase_variant.__doc__ = f"ESD with variant {variant!r}; see :func:`erase`."
    return erase_variant


def _register(name: ESDVariant, config_cls: type, edits: str) -> None:
    register(
        MethodSpec(
            name=name,
            config_cls=config_cls,
            erase=_erase_as(name),
            edits=edits,
            description="ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023, arXiv 2303.07345)",
            follows="CompVis/rohitgandikota erasing train-esd.py ("
            + ("xattn" if name == "esd-x" else "noxattn")
            + ")",
        )
    )


_register("esd-x", ESDXConfig, "U-Net cross-attention (attn2) parameters, fine-tuned with negative guidance")
_register(
    "esd-u",
    ESDUConfig,
    "U-Net parameters outside cross-attention, the time embedding and the output block (CompVis noxattn), "
    "fine-tuned with negative guidance",
)
