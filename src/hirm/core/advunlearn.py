"""AdvUnlearn: Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion
Models (Zhang, Chen, Jia, Zhang, Fan, Liu, Hong, Ding, Liu, NeurIPS 2024, arXiv 2405.15234; reference
script ``train-scripts/AdvUnlearn.py`` of OPTML-Group/AdvUnlearn).

The *text encoder* is fine-tuned with ESD's negatively guided target through the frozen U-Net, against
an attacker that keeps looking for word embeddings which bring the concept back, and with a retain
set that keeps other prompts' noise predictions::

    min_theta  E || eps(z_t, t, E_theta(adv prompt)) - [eps(z_t, t, E0("")) - eta (eps(z_t, t, E0(c)) - eps(z_t, t, E0("")))] ||^2
             + w  E || eps(z'_t, t, E_theta(r)) - eps(z'_t, t, E0(r)) ||^2            (r: retain prompts)

    adv prompt = k word embeddings put before the concept (``prefix_k``), found by
    max_adv -|| eps(z_t, t, E_theta(adv + c)) - eps(z_t, t, E0(c)) ||^2  (``attack_step`` Adam steps)

``z_t`` is a random latent partially denoised (DDIM, ``ddim_steps``, classifier-free guidance
``start_guidance``) by the U-Net conditioned on the concept for a random number ``t_enc`` of steps;
``E0`` is the original encoder, ``E_theta`` the trained one. For the first ``warmup_iter`` iterations
the concept prompt itself is used; afterwards the adversarial prompt is refreshed every
``adv_prompt_update_step`` iterations, from a random start (``attack_init="random"``, the authors'
README command; the script's argparse default ``latest`` continues from the previous one).
The result is a patch of the trained text-encoder tensors (a drop-in encoder, like HiRM's).

Reference defaults: ``--train_method text_encoder_full`` (every transformer block and the final layer
norm), 1000 iterations, Adam lr 1e-5, eta 1, start guidance 3, DDIM 50; attack: one prefix word
embedding (``word_embd``, ``prefix_k``), 30 Adam steps at lr 1e-3 (``pgd``; ``fast_at`` uses the
gradient's sign), refreshed every iteration after 200 warm-up iterations; retain: the README's
command (``--retain_train reg --retain_loss_w 0.3``, 5 prompts per step; COCO object captions).
Reference behaviours kept and named: the U-Net is queried at the DDPM timestep drawn from
``[t_enc, t_enc + 1) * 1000 / ddim_steps`` (``timestep="reference"``; ``"matched"`` uses the DDIM
timestep the latent is at), and the attacker's gradients accumulate over its steps (it never zeroes
them; ``attack_zero_grad=True`` does). Departure: the concept's length in tokens (not in words) decides
where the adversarial embeddings go.

CPU: the reference costs ~30 U-Net sampling runs per iteration. :meth:`AdvUnlearnConfig.cpu` scales
it down (``iterations``, ``warmup_iter``, ``attack_step``, ``adv_prompt_update_step``, ``ddim_steps``,
``retain_batch``) and raises the learning rate so that the shorter run moves the encoder.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hirm.core.config import Concept
from hirm.core.encoder import named_parameters
from hirm.core.esd import sample_until
from hirm.core.hirm import NonFiniteLossError
from hirm.core.patch import Patch, make_patch
from hirm.core.registry import MethodSpec, register

logger = logging.getLogger(__name__)

_LAYERS = re.compile(r"text_encoder_layer(\d+)")


@dataclass(frozen=True)
class AdvUnlearnConfig:
    """AdvUnlearn's settings; defaults are the reference script's (README command for the retain set).

    Attributes:
        train_method: ``text_encoder_full`` (every block + final layer norm) or ``text_encoder_layer``
            followed by block digits, e.g. ``text_encoder_layer0`` (block 0), ``text_encoder_layer01``.
        component: ``all``, ``attn`` (self-attention only) or ``ffn`` (MLP only) inside those blocks.
        norm_layer: also train the final layer norm with a ``layer`` method (``full`` + ``all`` always does).
        iterations, lr: Adam steps and learning rate of the encoder.
        negative_guidance, start_guidance, ddim_steps: ESD's eta, the sampling guidance and DDIM steps.
        retain_train: ``reg`` (retain loss added to every step) or ``iter`` (separate retain steps).
        retain_batch, retain_step, retain_loss_w: retain prompts per step, ``iter`` steps, ``reg`` weight.
        retain_prompts: the retain set; empty = the miniature world's prompts not naming the concept
            on ``minicanvas``, else the package's 1,000 COCO captions.
        adv_prompt_num: k adversarial word embeddings (prefix).
        attack_step, attack_lr, attack_method: the attacker's Adam steps, learning rate, ``pgd``/``fast_at``.
        attack_init: ``random`` (default, as the authors' README runs it) or ``latest`` (continue from
            the previous adversarial embeddings; the script's argparse default).
        warmup_iter, adv_prompt_update_step: iterations before the first attack; refresh period.
        timestep: ``reference`` or ``matched`` (see the module docstring).
        attack_zero_grad: zero the attacker's gradients each step (the reference does not).
        seed: seeds latents, timesteps, prompt choices and the attacker's initialisation.
    """

    train_method: str = "text_encoder_full"
    component: Literal["all", "attn", "ffn"] = "all"
    norm_layer: bool = False
    iterations: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0
    start_guidance: float = 3.0
    ddim_steps: int = 50
    retain_train: Literal["reg", "iter"] = "reg"
    retain_batch: int = 5
    retain_step: int = 1
    retain_loss_w: float = 0.3
    retain_prompts: tuple[str, ...] = ()
    adv_prompt_num: int = 1
    attack_step: int = 30
    attack_lr: float = 1e-3
    attack_method: Literal["pgd", "fast_at"] = "pgd"
    attack_init: Literal["latest", "random"] = "random"
    warmup_iter: int = 200
    adv_prompt_update_step: int = 1
    timestep: Literal["reference", "matched"] = "reference"
    attack_zero_grad: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        layers = _LAYERS.fullmatch(self.train_method)
        digits = [int(d) for d in layers.group(1)] if layers else []
        if self.train_method != "text_encoder_full" and (not layers or digits != sorted(set(digits))):
            raise ValueError(
                f"train_method must be 'text_encoder_full' or 'text_encoder_layer' + increasing block digits "
                f"(e.g. text_encoder_layer0, text_encoder_layer012), got {self.train_method!r}."
            )
        choices = {
            "component": ("all", "attn", "ffn"),
            "retain_train": ("reg", "iter"),
            "attack_method": ("pgd", "fast_at"),
            "attack_init": ("latest", "random"),
            "timestep": ("reference", "matched"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in (
            "iterations",
            "ddim_steps",
            "retain_batch",
            "adv_prompt_num",
            "attack_step",
            "adv_prompt_update_step",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("warmup_iter", "retain_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("lr", "attack_lr"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a positive finite number, got {getattr(self, name)}.")
        if isinstance(self.retain_prompts, str):
            raise TypeError("retain_prompts is a tuple of prompts, not one string.")

    @classmethod
    def cpu(cls, **overrides: Any) -> AdvUnlearnConfig:
        """A scaled-down run for the 2-core CPU and the miniature world (about a minute per concept):
        120 iterations (40 warm-up), the attack refreshed every 5 iterations with 5 steps, DDIM 10,
        2 retain prompts, encoder lr 1e-4. Not the paper's numbers; say so when reporting them."""
        base = dict(
            iterations=120, warmup_iter=40, attack_step=5, adv_prompt_update_step=5, ddim_steps=10,
            retain_batch=2, lr=1e-4,
        )  # fmt: skip
        return replace(cls(**base), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainable_names(encoder: nn.Module, config: AdvUnlearnConfig) -> list[str]:
    """Canonical parameter names the reference's ``param_choices`` selects (no embeddings, ever)."""
    names = list(named_parameters(encoder))
    if config.train_method == "text_encoder_full":
        blocks = None
    else:
        blocks = {int(d) for d in _LAYERS.fullmatch(config.train_method).group(1)}  # type: ignore[union-attr]
    chosen = []
    for name in names:
        parts = name.split(".")
        if name.startswith("final_layer_norm."):
            if (blocks is None and config.component == "all") or config.norm_layer:
                chosen.append(name)
        elif name.startswith("encoder.layers."):
            if blocks is not None and int(parts[2]) not in blocks:
                continue
            if (
                config.component == "all"
                or (config.component == "attn" and "self_attn" in parts)
                or (config.component == "ffn" and "mlp" in parts)
            ):
                chosen.append(name)
    if not chosen:
        raise ValueError(f"{config.train_method}/{config.component} selects no parameter of this encoder.")
    return chosen


def default_retain(model: Any, concepts: Sequence[Concept]) -> list[str]:
    """The world's grid prompts naming none of the concepts, or the package's COCO captions."""
    from hirm.evaluation.common import concept_key, package_data, read_prompt_csv

    if str(model.source) == "minicanvas":
        import hirm.world as world

        erased = {concept_key(c.text) for c in concepts}
        return [
            world.make_prompt(world.CANVAS_TEMPLATE, style=s, object=o)
            for s in world.STYLES
            for o in world.OBJECTS
            if concept_key(s) not in erased and concept_key(o) not in erased
        ]
    return [row.prompt for row in read_prompt_csv(package_data("coco_1k.csv"))]


class _PromptPool:
    """The reference's retain dataset: prompts drawn without replacement, refilled when too few remain."""

    def __init__(self, prompts: Sequence[str], generator: torch.Generator) -> None:
        if not prompts:
            raise ValueError("AdvUnlearn needs at least one retain prompt.")
        self.prompts, self.generator = list(prompts), generator
        self.unseen = list(range(len(self.prompts)))

    def draw(self, n: int) -> list[str]:
        if len(self.unseen) < n:
            self.unseen = list(range(len(self.prompts)))
        picks = torch.randperm(len(self.unseen), generator=self.generator)[
            : min(n, len(self.unseen))
        ].tolist()
        chosen = [self.unseen[i] for i in picks]
        self.unseen = [i for i in self.unseen if i not in set(chosen)]
        return [self.prompts[i] for i in chosen]


class _Trainer:
    """State of one AdvUnlearn run (the frozen U-Net, both encoders, schedulers, random streams)."""

    def __init__(self, model: Any, concepts: Sequence[Concept], config: AdvUnlearnConfig) -> None:
        from diffusers import DDIMScheduler

        self.config = config
        unet = model.component("unet")
        # The caller's U-Net is frozen in eval mode for the run and handed back as it came (restore()).
        self._unet_state = (unet.training, {n: p.requires_grad for n, p in unet.named_parameters()})
        self.unet = unet.eval().requires_grad_(False)
        self.original = model.text_encoder("text_encoder")
        self.tokenizer = model.tokenizer("text_encoder")
        self.trained = copy.deepcopy(self.original).requires_grad_(False)
        self.device = next(self.unet.parameters()).device
        self.ddim = DDIMScheduler.from_config(model.component("scheduler").config)
        self.ddim.set_timesteps(config.ddim_steps, device=self.device)
        self.num_train = self.ddim.config.num_train_timesteps
        size = self.unet.config.sample_size
        self.shape = (self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.words = [c.text for c in concepts]
        self.retain = _PromptPool(
            list(config.retain_prompts) or default_retain(model, concepts), self.generator
        )

    def restore(self) -> None:
        """Give the caller's U-Net back its train/eval mode and ``requires_grad`` flags."""
        training, flags = self._unet_state
        self.unet.train(training)
        for name, param in self.unet.named_parameters():
            param.requires_grad_(flags[name])

    # ------------------------------------------------------------------------------ helpers
    def ids(self, prompts: Sequence[str]) -> Tensor:
        from hirm.attacks.text import as_batch, pad, word_ids

        return as_batch([pad(self.tokenizer, word_ids(self.tokenizer, p)) for p in prompts], self.device)

    @torch.no_grad()
    def original_embed(self, prompts: Sequence[str]) -> Tensor:
        return self.original(input_ids=self.ids(prompts)).last_hidden_state

    def draw_timestep(self) -> tuple[int, Tensor]:
        """``t_enc`` (DDIM steps to sample) and the U-Net timestep the losses are taken at."""
        t_enc = int(torch.randint(self.config.ddim_steps, (1,), generator=self.generator))
        if self.config.timestep == "matched":
            return t_enc, self.ddim.timesteps[t_enc].reshape(1)
        low = round(t_enc / self.config.ddim_steps * self.num_train)
        high = max(low + 1, round((t_enc + 1) / self.config.ddim_steps * self.num_train))
        return t_enc, torch.randint(low, high, (1,), generator=self.generator).to(self.device)

    def sample(self, emb: Tensor, t_enc: int) -> Tensor:
        noise = torch.randn((emb.shape[0], *self.shape), generator=self.generator).to(self.device)
        noise = noise * self.ddim.init_noise_sigma
        empty = self.original_embed([""]).expand(emb.shape[0], -1, -1)
        return sample_until(self.unet, self.ddim, noise, emb, empty, t_enc, self.config.start_guidance)

    def eps(self, z: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        return self.unet(z, t.expand(z.shape[0]), encoder_hidden_states=emb).sample

    def adversarial_ids(self, word: str) -> tuple[Tensor, Tensor]:
        """Ids (1, L) and slot mask of ``[start] + k adversarial slots + word``."""
        from hirm.attacks.text import slot_id, with_prefix

        k = self.config.adv_prompt_num
        prefix = [slot_id(self.tokenizer)] * k
        ids = torch.tensor([with_prefix(self.tokenizer, word, prefix)], device=self.device)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, 1 : 1 + k] = True
        return ids, mask

    # ------------------------------------------------------------------------------- attack
    def attack(self, word: str, emb_p: Tensor, previous: Tensor | None) -> Tensor:
        """k word embeddings (1, k, D) that make the trained encoder + U-Net predict the concept's noise."""
        from hirm.attacks.text import encode, token_embedding, vocabulary_ids

        config = self.config
        if previous is not None and config.attack_init == "latest":
            adv = previous.detach().clone()
        else:
            vocab = vocabulary_ids(self.tokenizer, token_embedding(self.trained).num_embeddings)
            picks = vocab[torch.randint(len(vocab), (config.adv_prompt_num,), generator=self.generator)]
            adv = token_embedding(self.trained).weight.detach()[picks.to(self.device)][None].clone()
        adv.requires_grad_(True)
        optimizer = torch.optim.Adam([adv], lr=config.attack_lr)
        ids, mask = self.adversarial_ids(word)
        self.trained.eval()
        for _ in range(config.attack_step):
            if config.attack_zero_grad:
                optimizer.zero_grad(set_to_none=True)
            t_enc, t = self.draw_timestep()
            with torch.no_grad():
                z = self.sample(emb_p, t_enc)
                e_p = self.eps(z, t, emb_p)
            e_n = self.eps(z, t, encode(self.trained, ids, mask, adv))
            nn.functional.mse_loss(e_n, e_p).backward()
            if config.attack_method == "fast_at":
                adv.grad.sign_()
            optimizer.step()
        return adv.detach()

    # -------------------------------------------------------------------------------- train
    def unlearn_loss(self, word: str, emb_p: Tensor, emb_0: Tensor, adv: Tensor | None) -> Tensor:
        from hirm.attacks.text import encode

        t_enc, t = self.draw_timestep()
        with torch.no_grad():
            z = self.sample(emb_p, t_enc)
            e_0, e_p = self.eps(z, t, emb_0), self.eps(z, t, emb_p)
        if adv is None:
            emb_n = encode(self.trained, self.ids([word]))
        else:
            emb_n = encode(self.trained, *self.adversarial_ids(word), adv)
        target = e_0 - self.config.negative_guidance * (e_p - e_0)
        loss = nn.functional.mse_loss(self.eps(z, t, emb_n), target)
        if self.config.retain_train == "reg":
            loss = loss + self.config.retain_loss_w * self.retain_loss(t_enc, t)
        return loss

    def retain_loss(self, t_enc: int | None = None, t: Tensor | None = None) -> Tensor:
        from hirm.attacks.text import encode

        if t_enc is None or t is None:
            t_enc, t = self.draw_timestep()
        prompts = self.retain.draw(self.config.retain_batch)
        emb_r = self.original_embed(prompts)
        with torch.no_grad():
            z = self.sample(emb_r, t_enc)
            e_r = self.eps(z, t, emb_r)
        return nn.functional.mse_loss(self.eps(z, t, encode(self.trained, self.ids(prompts))), e_r)


def erase(
    model: Any,
    concepts: Sequence[Concept],
    config: AdvUnlearnConfig = AdvUnlearnConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """AdvUnlearn on the text encoder of ``model`` (a ``ModelHandle`` of an SD 1.x/2.x pipeline).

    The caller's encoder and U-Net are never modified: a copy of the encoder is trained.
    """
    start = time.perf_counter()
    if model.family.name != "sd" or model.family.denoiser != "unet":
        raise ValueError(
            f"AdvUnlearn needs a Stable Diffusion 1.x/2.x pipeline (text encoder + U-Net); {model.source} is not."
        )
    if components is not None and list(components) != ["text_encoder"]:
        raise ValueError(f"AdvUnlearn edits only 'text_encoder'; got components={list(components)}.")
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    trainer = _Trainer(model, concepts, config)
    params = named_parameters(trainer.trained)
    names = trainable_names(trainer.trained, config)
    for name in names:
        params[name].requires_grad_(True)
    optimizer = torch.optim.Adam([params[n] for n in names], lr=config.lr)
    logger.info(
        "AdvUnlearn trains %d tensors (%d parameters).", len(names), sum(params[n].numel() for n in names)
    )

    try:
        losses: list[float] = []
        adv: Tensor | None = None
        word, emb_0, emb_p = trainer.words[0], None, None
        bar = tqdm(range(config.iterations), desc="AdvUnlearn", disable=not progress, leave=False)
        for i in bar:
            if i % config.adv_prompt_update_step == 0:
                word = trainer.words[
                    int(torch.randint(len(trainer.words), (1,), generator=trainer.generator))
                ]
                emb_0, emb_p = trainer.original_embed([""]), trainer.original_embed([word])
                if i >= config.warmup_iter:
                    adv = trainer.attack(word, emb_p, adv)
            trainer.trained.train()
            optimizer.zero_grad(set_to_none=True)
            loss = trainer.unlearn_loss(word, emb_p, emb_0, adv if i >= config.warmup_iter else None)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"Loss became {value} at iteration {i}; lower the learning rate. Nothing was saved."
                )
            loss.backward()
            optimizer.step()
            losses.append(value)
            if config.retain_train == "iter":
                for _ in range(config.retain_step):
                    optimizer.zero_grad(set_to_none=True)
                    trainer.retain_loss().backward()
                    optimizer.step()
            bar.set_postfix(loss=f"{value:.4g}")
    finally:
        trainer.restore()
    trainer.trained.eval()

    originals = named_parameters(trainer.original)
    return make_patch(
        method="advunlearn",
        originals={f"text_encoder/{n}": originals[n].detach() for n in names},
        edited={f"text_encoder/{n}": params[n].detach() for n in names},
        config=config.to_dict(),
        concepts=[c.record(target=False) for c in concepts],
        base=model.base_info(),
        extra={
            "seconds": time.perf_counter() - start,
            "losses": {"text_encoder": losses},
            "final_loss": {"text_encoder": losses[-1]},
            "adversarial_embedding_norm": None if adv is None else float(adv.norm()),
        },
    )


register(
    MethodSpec(
        name="advunlearn",
        config_cls=AdvUnlearnConfig,
        erase=erase,
        edits="CLIP text encoder (all blocks + final layer norm by default), adversarially trained",
        description="AdvUnlearn: adversarial training of the text encoder (Zhang et al., NeurIPS 2024, arXiv 2405.15234)",
        follows="OPTML-Group/AdvUnlearn train-scripts/AdvUnlearn.py, as its README runs it",
    )
)
