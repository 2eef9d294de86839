"""ESD for many concepts at once, each erased on its own (one patch per concept), in one batched run.

Benchmarks such as UnlearnCanvas and ``hirm compare`` erase every concept *separately* with ESD: 1000
steps per concept, each step sampling ``x_t`` with the model being trained (on average 25 guided U-Net
calls of batch 2). On a small U-Net such calls are far from filling a CPU or a GPU, so running the
concepts one after the other wastes most of the machine.

:func:`erase_each` trains one copy of ESD's trainable tensors per concept, stacked along a leading
dimension, and evaluates all the concepts' U-Nets in one call with :func:`torch.func.vmap` over
:func:`torch.func.functional_call` (the frozen tensors are shared, not copied). Each concept keeps
everything its own run has:

* its own random stream, seeded with ``config.seed`` and drawn in the order :func:`hirm.core.esd.erase`
  draws it (concept index, ``t_enc``, the initial latent), so concept ``c``'s patch is the one
  ``erase(model, [c], config)`` returns, up to floating point (batched kernels sum in another order;
  ``tests/test_esd_batched.py`` checks it);
* its own ``x_t``: the concepts are sampled in lock step and each leaves the batch after its own
  ``t_enc`` DDIM steps (only the concepts still sampling are evaluated);
* its own Adam: one Adam over the stacked tensors is the concepts' Adams side by side (Adam is
  elementwise and each concept's loss reaches only its own slice).

Attention runs through diffusers' classic ``AttnProcessor`` inside the vmapped calls (on a private copy
of the U-Net): functorch has no batching rule for the fused ``scaled_dot_product_attention`` kernels and
would fall back to a loop over the batch.

Memory: ``batch_size`` concepts hold their trainable tensors and two Adam moments each. ESD-x on SD 1.x
(cross-attention, about 20M parameters) takes about 240 MB per concept; ESD-u (about 840M) about 10 GB,
so on a real model give ESD-u a small ``batch_size``.

A long run can be resumed: with ``checkpoint`` (a file path) the stacked tensors, Adam's state, every
concept's random stream and losses are written there atomically every ``checkpoint_every`` steps; a
later call with the same model, concepts and config continues from it (bit for bit the run it
interrupted) and one with anything else is refused.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hirm.core.config import Concept
from hirm.core.esd import ESDConfig, _setup, esd_target
from hirm.core.hirm import NonFiniteLossError
from hirm.core.patch import Patch, canonical_name, component_parameters, fingerprint, make_patch
from hirm.io import write_atomic

CHECKPOINT_FORMAT = "hirm-esd-batched/1"


def unbatchable(config: ESDConfig) -> str | None:
    """What in ``config`` batched ESD cannot run (ours, one concept at a time only), or ``None`` for
    the authors' ESD: a preserve set (its retain terms) or an adversary."""
    if config.preserve:
        return "a preserve set"
    if config.adversary != "none":
        return "an adversary"
    return None


def erase_each(
    model,
    concepts: Sequence[Concept],
    config: ESDConfig = ESDConfig(),
    *,
    batch_size: int | None = None,
    components: Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> list[Patch]:
    """ESD on each concept of ``concepts`` separately; returns one patch per concept, in order.

    Concept ``c``'s patch equals ``hirm.core.esd.erase(model, [c], config)`` up to floating point. The
    concepts run ``batch_size`` at a time (default: all at once). Each patch's ``seconds`` is its
    batch's wall time divided by the batch's concepts; ``batched`` records the batch.
    ``checkpoint``: a file to resume from / save to (one batch: give it only with
    ``batch_size >= len(concepts)``).
    """
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    reason = unbatchable(config)
    if reason:
        raise ValueError(
            f"Batched ESD runs the authors' ESD, without {reason}; erase one concept at a time "
            "(hirm.core.esd.erase) for it."
        )
    texts = [c.text for c in concepts]
    if len(set(texts)) != len(texts):
        raise ValueError(f"Concepts given twice: {sorted({t for t in texts if texts.count(t) > 1})}.")
    size = len(concepts) if batch_size is None else batch_size
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}.")
    if checkpoint is not None and size < len(concepts):
        raise ValueError(
            "A checkpoint holds one batch: give batch_size >= the number of concepts, or no checkpoint."
        )
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, not {checkpoint_every!r}.")
    patches: list[Patch] = []
    for first in range(0, len(concepts), size):
        chunk = concepts[first : first + size]
        patches += _Batch(model, chunk, config, components, checkpoint, checkpoint_every).run(progress)
    return patches


class _Batch:
    """One batch of concepts trained side by side (see the module docstring)."""

    def __init__(
        self, model, concepts, config: ESDConfig, components, checkpoint, checkpoint_every: int
    ) -> None:
        from diffusers.models.attention_processor import AttnProcessor

        self.start = time.perf_counter()
        self.model, self.config = model, config
        self.setup = setup = _setup(model, concepts, config, components)
        self.concepts = setup.concepts
        unet = setup.unet
        own = {canonical_name(name): name for name, _ in unet.named_parameters()}
        self.own_names = [own[n] for n in setup.names]
        params = dict(unet.named_parameters())
        trained = set(self.own_names)
        # the vmapped U-Net: a private copy with a vmap-friendly attention; the caller's U-Net stays theta*
        self.shell = copy.deepcopy(unet).eval().requires_grad_(False)
        self.shell.set_attn_processor(AttnProcessor())
        self.frozen = {n: p.detach() for n, p in params.items() if n not in trained}
        self.buffers = {n: b for n, b in unet.named_buffers()}
        count = len(self.concepts)
        self.stacked = {
            n: params[n].detach().unsqueeze(0).repeat(count, *[1] * params[n].dim()).requires_grad_(True)
            for n in self.own_names
        }
        self.optimizer = torch.optim.Adam(list(self.stacked.values()), lr=config.lr)
        self.generators = [torch.Generator(device="cpu").manual_seed(config.seed) for _ in self.concepts]
        self.losses: list[list[float]] = [[] for _ in self.concepts]
        self.step = 0
        self.resumed_seconds = 0.0  # wall time of the run(s) a checkpoint continues
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = checkpoint_every
        self.identity = {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "concepts": [asdict(c) for c in self.concepts],  # as checkpoints have always recorded them
            "base": model.base_info(),
            "unet": fingerprint({n: params[n] for n in self.own_names}),
        }
        if self.checkpoint is not None and self.checkpoint.exists():
            self._load()

    # ------------------------------------------------------------------------------- U-Net calls

    def _forward(self, tensors: dict[str, Tensor], x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """One concept's U-Net (its trained tensors + the shared frozen ones) on its own batch."""
        from torch.func import functional_call

        return functional_call(
            self.shell, ({**self.frozen, **tensors}, self.buffers), (x, t), {"encoder_hidden_states": emb}
        ).sample

    def _autocast(self):
        return torch.autocast(
            self.setup.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"
        )

    @torch.no_grad()
    def _sample(self, noise: Tensor, t_enc: list[int]) -> Tensor:
        """Each concept's ``x_t``: ``t_enc[i]`` guided DDIM steps with its current tensors, in lock step."""
        from torch.func import vmap

        s = self.setup
        latents = noise.clone()
        active: list[int] = []
        tensors: dict[str, Tensor] = {}
        forward = vmap(self._forward)
        for step, t in enumerate(s.scheduler.timesteps[: max(t_enc)]):
            now = [i for i, steps in enumerate(t_enc) if steps > step]
            if now != active:  # the batch only shrinks: gather the still-sampling concepts' tensors
                active = now
                index = torch.tensor(active, device=s.device)
                tensors = {n: p.detach().index_select(0, index) for n, p in self.stacked.items()}
                emb = torch.stack(
                    [s.emb_0[0].expand(len(active), -1, -1), s.emb_concepts.index_select(0, index)], dim=1
                )  # (A, 2, L, D): as erase's torch.cat([emb_0, emb_c])
            x = latents.index_select(0, index)
            with self._autocast():
                both = forward(tensors, torch.stack([x, x], dim=1), t.expand(len(active)), emb)
            uncond, cond = both.float().unbind(1)
            guided = uncond + self.config.start_guidance * (cond - uncond)
            latents[index] = s.scheduler.step(guided, t, x).prev_sample
        return latents

    def _train_step(self) -> None:
        from torch.func import grad_and_value, vmap

        s, cfg = self.setup, self.config
        count = len(self.concepts)
        t_enc, noise = [], []
        for g in self.generators:  # the draws erase() makes, in its order, from each concept's stream
            torch.randint(1, (1,), generator=g)  # erase()'s concept index (a single concept)
            t_enc.append(int(torch.randint(cfg.ddim_steps, (1,), generator=g)))
            noise.append(torch.randn((1, s.channels, *s.size), generator=g))
        noise = torch.cat(noise).to(s.device) * s.scheduler.init_noise_sigma
        x_t = self._sample(noise, t_enc).float()
        t = s.scheduler.timesteps[torch.tensor(t_enc, device=s.scheduler.timesteps.device)].to(s.device)
        with torch.no_grad(), self._autocast():
            both = s.unet(
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                encoder_hidden_states=torch.cat([s.emb_0.expand(count, -1, -1), s.emb_concepts]),
            ).sample
        empty, concept = both.float().chunk(2)
        target = esd_target(empty, concept, cfg.negative_guidance)

        def loss(tensors, x, t_i, emb, goal):
            with self._autocast():
                prediction = self._forward(tensors, x[None], t_i, emb[None])
            return nn.functional.mse_loss(prediction.float(), goal[None])

        grads, values = vmap(grad_and_value(loss))(
            {n: p.detach() for n, p in self.stacked.items()}, x_t, t, s.emb_concepts, target
        )
        for i, value in enumerate(values.tolist()):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"Loss for {self.concepts[i].text!r} became {value} at step {self.step}; lower the "
                    "learning rate. Nothing was saved."
                )
            self.losses[i].append(value)
        self.optimizer.zero_grad(set_to_none=True)
        for n, p in self.stacked.items():
            p.grad = grads[n]
        self.optimizer.step()
        self.step += 1

    # ---------------------------------------------------------------------------------- the run

    def run(self, progress: bool) -> list[Patch]:
        names = ", ".join(c.text for c in self.concepts)
        bar = tqdm(
            total=self.config.steps,
            initial=self.step,
            desc=f"ESD {self.config.variant} x {len(self.concepts)}",
            disable=not progress,
            leave=False,
        )
        while self.step < self.config.steps:
            self._train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{sum(x[-1] for x in self.losses) / len(self.losses):.4g}")
            if self.checkpoint is not None and (
                self.step % self.checkpoint_every == 0 or self.step == self.config.steps
            ):
                self._save()
        bar.close()
        seconds = time.perf_counter() - self.start + self.resumed_seconds
        originals = component_parameters(self.setup.unet)
        patches = []
        for i, concept in enumerate(self.concepts):
            edited = {n: self.stacked[own][i].detach() for n, own in zip(self.setup.names, self.own_names)}
            patches.append(
                make_patch(
                    method=self.config.variant,
                    originals={f"unet/{n}": originals[n].detach() for n in self.setup.names},
                    edited={f"unet/{n}": v for n, v in edited.items()},
                    config=self.config.to_dict(),
                    concepts=[concept.record(target=False)],
                    base=self.model.base_info(),
                    extra={
                        "seconds": seconds / len(self.concepts),
                        "batched": {"concepts": len(self.concepts), "seconds": seconds, "with": names},
                        "losses": {"unet": self.losses[i]},
                        "final_loss": {"unet": self.losses[i][-1]},
                    },
                )
            )
        return patches

    # ----------------------------------------------------------------------------- checkpoints

    def _save(self) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {}
        for n, p in self.stacked.items():
            tensors[f"param/{n}"] = p.detach().cpu().contiguous()
            state = self.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"adam/{key}/{n}"] = state[key].detach().cpu().contiguous()
            if "step" in state:
                tensors[f"adam/step/{n}"] = torch.as_tensor(state["step"]).detach().cpu().reshape(1).float()
        for i, g in enumerate(self.generators):
            tensors[f"generator/{i}"] = g.get_state()
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "identity": json.dumps(self.identity, sort_keys=True),
            "step": str(self.step),
            "losses": json.dumps(self.losses),
            "seconds": repr(time.perf_counter() - self.start + self.resumed_seconds),
        }
        write_atomic(
            self.checkpoint, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite=True
        )

    def _load(self) -> None:
        from safetensors import safe_open

        path = self.checkpoint
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception:
            raise ValueError(
                f"{path} is not an ESD checkpoint hirm wrote; choose another checkpoint path."
            ) from None
        if metadata.get("identity") != json.dumps(self.identity, sort_keys=True):
            raise ValueError(
                f"{path} is the checkpoint of another ESD run (model, concepts or settings differ); "
                "choose another checkpoint path."
            )
        device = self.setup.device
        with torch.no_grad():
            for n, p in self.stacked.items():
                p.copy_(tensors[f"param/{n}"].to(device))
                if f"adam/exp_avg/{n}" in tensors:
                    self.optimizer.state[p] = {
                        "step": tensors[f"adam/step/{n}"].reshape(()),
                        "exp_avg": tensors[f"adam/exp_avg/{n}"].to(device),
                        "exp_avg_sq": tensors[f"adam/exp_avg_sq/{n}"].to(device),
                    }
        for i, g in enumerate(self.generators):
            g.set_state(tensors[f"generator/{i}"])
        self.step = int(metadata["step"])
        self.losses = json.loads(metadata["losses"])
        self.resumed_seconds = float(metadata["seconds"])
        self.start = time.perf_counter()
