"""HiRM: High-Level Representation Misdirection (Kim, Hwang, Lee, 2026, arXiv 2602.19631).

Fine-tune only the early blocks of a CLIP text encoder so that the high-level representation of a
concept, read at a late layer, moves to a designated vector (a fixed random direction for HiRM-R,
a super-category's representation for HiRM-S)::

    theta_early* = argmin  sum_c || h_late(c; theta_early) - t_c ||^2 / (N L D)
                 (+ lambda * sum_p || h_late(p; theta_early) - h_late(p; theta_early_0) ||^2 / (M L D))

``h_late`` is the reading point's output over all L positions (BOS, tokens, EOT, padding), ``t_c``
the target of concept ``c``; the optional second term keeps ``preserve`` prompts in place
(lambda = 0 by default, as in the reference). All concepts are trained jointly on this one objective.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hirm.core.config import Concept, HiRMConfig
from hirm.core.encoder import (
    frozen_linear_casts,
    layers,
    named_parameters,
    read_representation,
    reading_module,
    tokenize,
)
from hirm.core.patch import Patch, make_patch, merge_patches
from hirm.core.registry import MethodSpec, register
from hirm.core.targets import build_target

logger = logging.getLogger(__name__)

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
_MLP = ("mlp.fc1", "mlp.fc2")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; nothing was saved and the encoder is unchanged."""


@dataclass(frozen=True)
class HiRMResult:
    """What :func:`erase_encoder` returns: the patch and the loss curve."""

    patch: Patch
    losses: tuple[float, ...]
    final_loss: float
    trainable: tuple[str, ...]


def trainable_names(encoder: nn.Module, config: HiRMConfig) -> list[str]:
    """Canonical names of the tensors ``config.trainable`` selects, by exact name."""
    available = named_parameters(encoder)
    if config.trainable == "params":
        missing = [name for name in config.params if name not in available]
        if missing:
            raise ValueError(f"Unknown parameter names {missing}; e.g. {sorted(available)[:4]}.")
        return list(config.params)
    modules = {"first-attn": _ATTN + _MLP, "attn-only": _ATTN, "mlp-only": _MLP, "first-k": _ATTN + _MLP}
    n_blocks = config.k if config.trainable == "first-k" else 1
    if n_blocks > len(layers(encoder)):
        raise ValueError(f"first-k with k={n_blocks}, but the encoder has {len(layers(encoder))} blocks.")
    names = [
        f"encoder.layers.{i}.{module}.{kind}"
        for i in range(n_blocks)
        for module in modules[config.trainable]
        for kind in ("weight", "bias")
    ]
    return [name for name in names if name in available]


def resolve_precision(config: HiRMConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``config.precision`` on ``device`` (``None`` = plain float32)."""
    if config.precision == "fp32":
        return None
    if config.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return None


def _prompts(concepts: Sequence[Concept], templates: Sequence[str]) -> tuple[list[str], list[int]]:
    """Training prompts and, for each, the index of its concept."""
    prompts, owners = [], []
    for i, concept in enumerate(concepts):
        for text in [t.format(concept=concept.text) for t in templates] or [concept.text]:
            prompts.append(text)
            owners.append(i)
    return prompts, owners


def erase_encoder(
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: HiRMConfig = HiRMConfig(),
    *,
    component: str = "text_encoder",
    base: dict | None = None,
    progress: bool = True,
) -> HiRMResult:
    """Erase ``concepts`` from a CLIP ``encoder`` with HiRM and return a patch of the changed tensors.

    The encoder is trained in place on its own device and restored afterwards: the caller's model is
    unchanged; apply the returned patch (``hirm.apply_patch``) to get the erased encoder.

    Args:
        encoder: ``CLIPTextModel`` or ``CLIPTextModelWithProjection``.
        tokenizer: its ``CLIPTokenizer`` (padding to ``model_max_length`` as in SD).
        concepts: one or more concepts, each with its own target.
        config: see :class:`HiRMConfig`.
        component: the pipeline component name written into the patch keys.
        base: description of the base model recorded in the patch (source, family, ...).
        progress: show a progress bar with the loss.
    """
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    device = next(encoder.parameters()).device
    point = config.read
    prompts, owners = _prompts(concepts, config.templates)
    ids = tokenize(tokenizer, prompts + list(config.preserve), device=device)  # (N + M, L)
    names = trainable_names(encoder, config)
    params = named_parameters(encoder)
    originals = {name: params[name].detach().clone() for name in names}
    steps, lr = config.resolved_steps(concepts), config.resolved_lr(concepts)
    autocast_dtype = resolve_precision(config, device)
    logger.info(
        "HiRM trains %d tensors (%d parameters): %s",
        len(names),
        sum(p.numel() for p in originals.values()),
        names,
    )

    was_training = encoder.training
    grad_flags = {name: p.requires_grad for name, p in params.items()}
    encoder.eval()
    try:
        with torch.no_grad():
            reading_module(encoder, point)  # validates the reading point before any work
            # Every reading site has the encoder's width; L is the padded prompt length.
            seq_len, width = ids.shape[1], encoder.config.hidden_size
            # Read-outs of the preserved prompts on the original encoder (M, L, D); none by default.
            preserved = (
                read_representation(encoder, ids[len(prompts) :], point).float() if config.preserve else None
            )
            targets = torch.cat(
                [
                    build_target(
                        c.target,
                        encoder=encoder,
                        tokenizer=tokenizer,
                        point=point,
                        seq_len=seq_len,
                        width=width,
                    )
                    for c in concepts
                ]
            ).to(device)[owners]  # (N, L, D)

        encoder.requires_grad_(False)
        trained = [params[name] for name in names]
        for p in trained:
            p.requires_grad_(True)
        torch.manual_seed(config.seed)
        # Under autocast the fused AdamW kernel (the same update rule in one pass over the tensors) is
        # used; in float32 the default implementation keeps the loop bit-identical to the reference code.
        optimizer = torch.optim.AdamW(
            trained,
            lr=lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
            fused=True if autocast_dtype is not None and device.type in ("cpu", "cuda") else None,
        )

        # Frozen linear layers cast once to the autocast dtype (bit-identical to autocast's per-call cast).
        casts = (
            frozen_linear_casts(encoder, autocast_dtype, set(names)) if autocast_dtype is not None else None
        )

        def objective() -> Tensor:
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
            ):
                reads = read_representation(encoder, ids, point, casts)
            reads = reads.float()
            loss = nn.functional.mse_loss(reads[: len(prompts)], targets)
            if config.preserve_weight > 0:
                loss = loss + config.preserve_weight * nn.functional.mse_loss(
                    reads[len(prompts) :], preserved
                )
            return loss

        losses: list[float] = []
        bar = tqdm(range(steps), desc=f"HiRM {component}", disable=not progress, leave=False)
        for _ in bar:
            optimizer.zero_grad(set_to_none=True)
            loss = objective()
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"Loss became {value} at step {len(losses)}; lower the learning rate or check the target. "
                    "Nothing was saved."
                )
            losses.append(value)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{value:.4g}")

        with torch.no_grad():
            final = nn.functional.mse_loss(
                read_representation(encoder, ids[: len(prompts)], point).float(), targets
            )
        final_loss = final.item()
        if not math.isfinite(final_loss) or not all(torch.isfinite(params[n]).all() for n in names):
            raise NonFiniteLossError("Training produced non-finite weights or loss. Nothing was saved.")
        edited = {f"{component}/{n}": params[n].detach().clone() for n in names}
    finally:
        with torch.no_grad():
            for name, value in originals.items():
                params[name].copy_(value)
        for name, flag in grad_flags.items():
            params[name].requires_grad_(flag)
        encoder.train(was_training)

    patch = make_patch(
        method="hirm",
        originals={f"{component}/{n}": v for n, v in originals.items()},
        edited=edited,
        config=config.to_dict(),
        concepts=[asdict(c) for c in concepts],
        base=dict(base or {}),
        extra={
            "final_loss": {component: final_loss},
            "losses": {component: losses},
            "steps": steps,
            "lr": lr,
            "precision": str(autocast_dtype or torch.float32).replace("torch.", ""),
        },
    )
    return HiRMResult(patch=patch, losses=tuple(losses), final_loss=final_loss, trainable=tuple(names))


def erase(
    model,
    concepts: Sequence[Concept],
    config: HiRMConfig = HiRMConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """HiRM on every CLIP text encoder of ``model`` (a ``ModelHandle``), or only on ``components``.

    SDXL/SD3 have two CLIP encoders: both are erased by default, each with its own read-out and
    target; T5 encoders are never touched. Returns one patch covering all edited encoders.
    """
    selected = list(components or model.family.encoders)
    unknown = [c for c in selected if c not in model.family.encoders]
    if unknown:
        raise ValueError(
            f"{unknown} are not CLIP text encoders of this {model.family.name} model: {model.family.encoders}."
        )
    if model.family.untouched:
        logger.warning("HiRM leaves %s (T5) unchanged; only %s are erased.", model.family.untouched, selected)
    patches = [
        erase_encoder(
            model.text_encoder(name),
            model.tokenizer(name),
            concepts,
            config,
            component=name,
            base={**model.base_info(), "untouched": list(model.family.untouched)},
            progress=progress,
        ).patch
        for name in selected
    ]
    return merge_patches(patches)


register(
    MethodSpec(
        name="hirm",
        config_cls=HiRMConfig,
        erase=erase,
        edits="CLIP text encoder, early blocks (block 0 attention + MLP by default)",
        description="HiRM: High-Level Representation Misdirection (Kim, Hwang, Lee, 2026, arXiv 2602.19631)",
    )
)
