"""Naive text-encoder fine-tuning: the HiRM paper's preliminary experiment (arXiv 2602.19631).

The same early blocks as HiRM are trained with the same optimizer, but the loss supervises the
encoder's *final* output (``last_hidden_state``, all L positions) toward the final output of an
anchor prompt on the original encoder (default: the empty prompt)::

    min_theta_early  || h_final(c; theta_early) - h_final(anchor; theta_early_0) ||^2 / (L D)

This is HiRM with ``read=ReadingPoint(site="final")`` and the anchor as the target, so it runs
:func:`hirm.core.hirm.erase_encoder`; only the patch metadata says ``naive``. Each concept's own
``target`` is ignored (the anchor replaces it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from hirm.core.config import Concept, HiRMConfig, Precision, PromptTarget, ReadingPoint, TrainableSet, VectorTarget
from hirm.core.encoder import read_representation
from hirm.core.hirm import erase_encoder
from hirm.core.patch import Patch, merge_patches
from hirm.core.registry import MethodSpec, register
from hirm.core.uce import prompt_ids

logger = logging.getLogger(__name__)

FINAL = ReadingPoint(site="final")


@dataclass(frozen=True)
class NaiveConfig:
    """Naive fine-tuning settings; everything but ``anchor`` means what it means in :class:`HiRMConfig`.

    Attributes:
        anchor: prompt whose final output (on the original encoder) the concept is pulled to;
            default the empty prompt ``""``.
        trainable, k, params: which tensors are trained (default HiRM's ``first-attn``: block 0
            attention + MLP).
        steps, lr: ``None`` = HiRM's reference values for a prompt target and the concepts' kind.
        betas, eps, weight_decay: AdamW settings (HiRM's reference values).
        seed: seeds anything random in training.
        precision: ``fp32``, ``bf16`` or ``auto`` (as in HiRM).
    """

    anchor: str = ""
    trainable: TrainableSet = "first-attn"
    k: int = 1
    params: tuple[str, ...] = ()
    steps: int | None = None
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 1e-8
    seed: int = 0
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.anchor, str):
            raise TypeError(f"anchor must be a prompt string, got {type(self.anchor).__name__}.")
        if self.anchor and not self.anchor.strip():
            raise ValueError("anchor is only whitespace; use '' for the empty prompt.")
        if self.lr is not None and not math.isfinite(self.lr):
            raise ValueError(f"lr must be finite, got {self.lr}.")
        self.hirm_config()  # validates the shared fields

    def hirm_config(self) -> HiRMConfig:
        """The equivalent HiRM config: same fields, read at the final layer norm output."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "anchor"}
        return HiRMConfig(read=FINAL, **fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def anchor_output(encoder: nn.Module, tokenizer, anchor: str) -> torch.Tensor:
    """The anchor's ``last_hidden_state`` (1, L, D) on ``encoder``, float32 on CPU."""
    ids, _ = prompt_ids(tokenizer, [anchor], device=next(encoder.parameters()).device)
    return read_representation(encoder, ids, FINAL).float().cpu()


def erase_one(encoder: nn.Module, tokenizer, concepts: Sequence[Concept], config: NaiveConfig, *, component: str, base: dict, progress: bool) -> Patch:
    """Naive fine-tuning of one text encoder; the caller's encoder is restored by ``erase_encoder``."""
    with tempfile.TemporaryDirectory(prefix="hirm-naive-") as tmp:
        # The anchor goes in as a vector target: HiRM's prompt target refuses the empty prompt.
        path = Path(tmp) / "anchor.safetensors"
        save_file({"target": anchor_output(encoder, tokenizer, config.anchor).contiguous()}, str(path))
        anchored = [dataclasses.replace(c, target=VectorTarget(path=str(path))) for c in concepts]
        result = erase_encoder(
            encoder, tokenizer, anchored, config.hirm_config(), component=component, base=base, progress=progress
        )
    metadata = {
        **result.patch.metadata,
        "method": "naive",
        "config": config.to_dict(),
        "concepts": [asdict(dataclasses.replace(c, target=PromptTarget(config.anchor))) for c in concepts],
        "hirm_config": config.hirm_config().to_dict(),
    }
    return Patch(tensors=result.patch.tensors, metadata=metadata)


def erase(
    model,
    concepts: Sequence[Concept],
    config: NaiveConfig = NaiveConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """Naive fine-tuning of every CLIP text encoder of ``model`` (a ``ModelHandle``), or only ``components``."""
    start = time.perf_counter()
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    selected = list(components or model.family.encoders)
    unknown = [c for c in selected if c not in model.family.encoders]
    if unknown:
        raise ValueError(f"{unknown} are not CLIP text encoders of this {model.family.name} model: {model.family.encoders}.")
    patches = [
        erase_one(
            model.text_encoder(name), model.tokenizer(name), concepts, config,
            component=name, base=model.base_info(), progress=progress,
        )
        for name in selected
    ]
    patch = merge_patches(patches)
    patch.metadata["seconds"] = time.perf_counter() - start
    return patch


register(
    MethodSpec(
        name="naive",
        config_cls=NaiveConfig,
        erase=erase,
        edits="CLIP text encoder, early blocks (as HiRM), supervised at the final output",
        description="Naive fine-tuning toward an anchor's final output (HiRM paper's preliminary experiment, arXiv 2602.19631)",
    )
)
