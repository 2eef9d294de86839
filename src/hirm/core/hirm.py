"""HiRM: High-Level Representation Misdirection (Kim, Hwang, Lee, 2026, arXiv 2602.19631).

Fine-tune only the early blocks of a CLIP text encoder so that the high-level representation of a
concept, read at a late layer, moves to a designated vector (a fixed random direction for HiRM-R,
a super-category's representation for HiRM-S)::

    theta_early* = argmin  sum_c || h_late(c; theta_early) - t_c ||^2 / (N L D)
                 (+ lambda * sum_p || h_late(p; theta_early) - h_late(p; theta_early_0) ||^2 / (M L D))

``h_late`` is the reading point's output over all L positions (BOS, tokens, EOT, padding), ``t_c``
the target of concept ``c``; the optional second term keeps ``preserve`` prompts in place
(lambda = 0 by default, as in the reference). All concepts are trained jointly on this one objective
(``concept_weighting="balanced"`` divides each concept's term by its starting value). The paper's
multi-concept recipe (separately trained encoders, weights averaged) and others are in
:mod:`hirm.core.multi`.

With ``precision="fp32"`` the training loop is the authors' ``train.py`` loop (hook at the reading
point, MSE to the target, AdamW step; a test checks it bit for bit); the defaults differ from their
run only as listed in :class:`hirm.core.config.HiRMConfig`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hirm.checks import native_bf16
from hirm.core.config import (
    REFERENCE_READ,
    Concept,
    HiRMConfig,
    RandomTarget,
    ReadingPoint,
    family_read,
    render,
)
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


def _block_modules(i: int, parts: tuple[str, ...]) -> list[str]:
    return [f"encoder.layers.{i}.{module}" for module in parts]


def trainable_names(encoder: nn.Module, config: HiRMConfig) -> list[str]:
    """Canonical names of the tensors ``config.trainable`` selects, by exact name (see :class:`HiRMConfig`).

    The authors select by substring (``"0.mlp.fc"``, ``".self_attn."``, ``"11.self_attn."``); on SD's
    12-block CLIP-L those match block 0, every block and the last block exactly as resolved here.
    """
    available = named_parameters(encoder)
    if config.trainable == "params":
        missing = [name for name in config.params if name not in available]
        if missing:
            raise ValueError(f"Unknown parameter names {missing}; e.g. {sorted(available)[:4]}.")
        return list(config.params)
    if config.trainable == "all":
        return list(available)
    n = len(layers(encoder))
    if config.trainable == "first-k" and config.k > n:
        raise ValueError(f"first-k with k={config.k}, but the encoder has {n} blocks.")
    first_mlp, first_attn, last_attn = (
        _block_modules(0, _MLP),
        _block_modules(0, _ATTN),
        _block_modules(n - 1, _ATTN),
    )
    every_attn = [m for i in range(n) for m in _block_modules(i, _ATTN)]
    modules = {
        "first-attn": first_attn + first_mlp,
        "attn-only": every_attn,
        "mlp-only": first_mlp,
        "mlp-attn": first_mlp + every_attn,
        "final-attn": last_attn,
        "mlp-final-attn": first_mlp + last_attn,
        "mix-attn": first_attn + first_mlp + last_attn,
        "block0-attn": first_attn,
        "first-k": [m for i in range(config.k) for m in _block_modules(i, _ATTN + _MLP)],
    }[config.trainable]
    names = [f"{module}.{kind}" for module in dict.fromkeys(modules) for kind in ("weight", "bias")]
    return [name for name in names if name in available]


def resolve_precision(config: HiRMConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``config.precision`` on ``device`` (``None`` = plain float32)."""
    if config.precision == "fp32":
        return None
    if config.precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else None


@dataclass(frozen=True)
class TrainingPrompts:
    """The prompts HiRM trains on: ``texts[i]`` renders ``templates[i]`` for concept ``owners[i]``."""

    texts: tuple[str, ...]
    owners: tuple[int, ...]
    templates: tuple[str, ...]


def training_prompts(concepts: Sequence[Concept], templates: Sequence[str]) -> TrainingPrompts:
    """Every concept in every template (or the raw concept string when there are no templates)."""
    texts, owners, used = [], [], []
    for i, concept in enumerate(concepts):
        for template in templates or ["{concept}"]:
            texts.append(render(template, concept.text))
            owners.append(i)
            used.append(template)
    return TrainingPrompts(tuple(texts), tuple(owners), tuple(used))


@torch.no_grad()
def build_targets(
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    prompts: TrainingPrompts,
    ids: Tensor,
    point: ReadingPoint,
) -> Tensor:
    """The target of every training prompt, (N, L, D) float32 on the encoder's device (original encoder);
    ``ids`` (N, L) are the training prompts' token ids.

    A prompt target is read in the training prompt's own template; a read-out-scaled random target
    takes the RMS of its concept's read-outs over all of its prompts.
    """
    device = ids.device
    seq_len, width = ids.shape[1], encoder.config.hidden_size  # every reading site has the encoder's width
    needs_reads = any(
        isinstance(c.target, RandomTarget) and c.target.scale == "readout-rms" for c in concepts
    )
    reads = read_representation(encoder, ids, point).float() if needs_reads else None  # (N, L, D)
    owners = torch.tensor(prompts.owners, device=device)
    out = []
    for owner, template in zip(prompts.owners, prompts.templates, strict=True):
        concept = concepts[owner]
        readout = reads[owners == owner] if reads is not None else None
        out.append(
            build_target(
                concept.target,
                encoder=encoder,
                tokenizer=tokenizer,
                point=point,
                seq_len=seq_len,
                width=width,
                template=template,
                readout=readout,
            )
        )
    return torch.cat(out).to(device)


def per_concept_mse(reads: Tensor, targets: Tensor, owners: Tensor, n_concepts: int) -> Tensor:
    """Each concept's MSE over its prompts, all positions and channels: (N, L, D) x 2 -> (C,)."""
    per_prompt = (reads - targets).pow(2).mean(dim=(1, 2))
    sums = torch.zeros(n_concepts, dtype=per_prompt.dtype, device=per_prompt.device).index_add(
        0, owners, per_prompt
    )
    return sums / torch.bincount(owners, minlength=n_concepts).to(per_prompt.dtype)


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
        config: see :class:`HiRMConfig`; ``read=None`` here means the reference reading point
            (:func:`erase` resolves it per model family first).
        component: the pipeline component name written into the patch keys.
        base: description of the base model recorded in the patch (source, family, ...).
        progress: show a progress bar with the loss.
    """
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    if config.read is None:
        config = replace(config, read=REFERENCE_READ)
    device = next(encoder.parameters()).device
    point = config.read
    prompts = training_prompts(concepts, config.templates)
    n_train = len(prompts.texts)
    ids = tokenize(tokenizer, [*prompts.texts, *config.preserve], device=device)  # (N + M, L)
    owners = torch.tensor(prompts.owners, device=device)
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
    # The reference seeds the global generator before training; ours does too, inside a fork, so the
    # caller's random stream is the same after erasing as before.
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    rng.__enter__()
    encoder.eval()
    try:
        with torch.no_grad():
            reading_module(encoder, point)  # validates the reading point before any work
            # Read-outs of the preserved prompts on the original encoder (M, L, D); none by default.
            preserved = (
                read_representation(encoder, ids[n_train:], point).float() if config.preserve else None
            )
            targets = build_targets(encoder, tokenizer, concepts, prompts, ids[:n_train], point)  # (N, L, D)
            weights = None
            if config.concept_weighting == "balanced":
                start = per_concept_mse(
                    read_representation(encoder, ids[:n_train], point).float(), targets, owners, len(concepts)
                )
                # w_c = mean(start) / (C * start_c): equal pull per concept, same total as the mean at step 0.
                weights = start.mean() / (len(concepts) * start.clamp_min(torch.finfo(start.dtype).tiny))

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
            if weights is None:
                loss = nn.functional.mse_loss(reads[:n_train], targets)
            else:
                loss = (weights * per_concept_mse(reads[:n_train], targets, owners, len(concepts))).sum()
            if config.preserve_weight > 0:
                loss = loss + config.preserve_weight * nn.functional.mse_loss(reads[n_train:], preserved)
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
                read_representation(encoder, ids[:n_train], point).float(), targets
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
        rng.__exit__(None, None, None)

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
    target; T5 encoders are never touched. ``config.read=None`` takes the family's reading point
    (:data:`hirm.core.config.FAMILY_READ`), recorded in the patch. Returns one patch covering all
    edited encoders.
    """
    if config.read is None:
        config = replace(config, read=family_read(model.family.name))
    selected = model.selected_encoders(components)
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
        follows="the HiRM authors' train.py / utils.py (first-attn, last block out_proj, seed 42 x 5000)",
        uses_target=True,
    )
)
