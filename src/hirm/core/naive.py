"""Naive text-encoder fine-tuning: the HiRM paper's preliminary experiment (arXiv 2602.19631).

The same early blocks as HiRM are trained with the same optimizer, but the loss supervises the
encoder's *output as the denoiser reads it* (all L positions) toward the same output of an anchor
prompt on the original encoder (default: the empty prompt)::

    min_theta_early  || h_out(c; theta_early) - h_out(anchor; theta_early_0) ||^2 / (L D)

``h_out`` is ``last_hidden_state`` on SD 1.x/2.x and Flux, and the penultimate hidden state on SDXL
and SD3 (what those pipelines feed the denoiser; :data:`hirm.core.config.DENOISER_READ`). This is HiRM
with that reading point and the anchor as every concept's target, so it runs
:func:`hirm.core.hirm.erase`; only the patch metadata says ``naive``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hirm.core.config import (
    Concept,
    HiRMConfig,
    Precision,
    PromptTarget,
    TrainableSet,
    check_prompt,
    check_training,
    denoiser_read,
)
from hirm.core.hirm import erase as hirm_erase
from hirm.core.patch import Patch
from hirm.core.registry import MethodSpec, register


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
        check_prompt("NaiveConfig", "anchor", self.anchor, empty=True)
        check_training("NaiveConfig", self)

    def hirm_config(self, family: str | None = None) -> HiRMConfig:
        """The equivalent HiRM config: same fields, read where ``family``'s denoiser reads the encoder
        (``None``: ``last_hidden_state``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "anchor"}
        return HiRMConfig(read=denoiser_read(family), **fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def erase(
    model,
    concepts: Sequence[Concept],
    config: NaiveConfig = NaiveConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """Naive fine-tuning of every CLIP text encoder of ``model`` (a ``ModelHandle``), or only ``components``.

    Runs :func:`hirm.core.hirm.erase` with every concept's target replaced by the anchor prompt and the
    reading point moved to the output the denoiser reads; only the patch metadata differs.
    """
    start = time.perf_counter()
    anchored = [dataclasses.replace(c, target=PromptTarget(config.anchor)) for c in concepts]
    hirm_config = config.hirm_config(model.family.name)
    patch = hirm_erase(model, anchored, hirm_config, components=components, progress=progress)
    metadata = {
        **patch.metadata,
        "method": "naive",
        "config": config.to_dict(),
        "hirm_config": hirm_config.to_dict(),
        "seconds": time.perf_counter() - start,
    }
    return Patch(tensors=patch.tensors, metadata=metadata)


register(
    MethodSpec(
        name="naive",
        config_cls=NaiveConfig,
        erase=erase,
        edits="CLIP text encoder, early blocks (as HiRM), supervised at the final output",
        description="Naive fine-tuning toward an anchor's final output (HiRM paper's preliminary experiment, arXiv 2602.19631)",
        follows="the HiRM paper's preliminary experiment (no public script)",
    )
)
