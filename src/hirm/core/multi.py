"""Erasing many concepts with HiRM: strategies that each return one patch.

* ``joint`` — one HiRM run on all concepts (one objective: the mean of their MSEs).
* ``per-concept`` — one HiRM run per concept; the patches' deltas are added to the base
  (``base + sum_i (W_i - base)``: what applying separately trained patches together does).
* ``average`` — the paper's recipe: separately trained encoders merged by weight averaging
  (``mean_i W_i = base + mean_i (W_i - base)``).
* ``balanced`` — joint, each concept's MSE divided by its value at step 0
  (``HiRMConfig(concept_weighting="balanced")``), so concepts that start far from their target do not
  drown the others (ours).
* ``anchored`` — joint, plus a preservation term on the concepts' target prompts (the super-categories,
  in the same templates): the destinations stay where they were while everything is pushed toward
  them, which also holds the neighbourhood the retained concepts of those categories live in (ours;
  needs prompt targets).
* ``balanced-anchored`` — both.
* ``preserved`` — joint, plus a preservation term on the concepts to keep (``keep``, in the same
  templates, or bare): the preserve set UCE's original script uses when it erases one artist and keeps
  the others, given to HiRM's optional preservation MSE (ours; the reference HiRM has no such term).

Any strategy can train each concept in context: ``HiRMConfig(templates=CONTEXT_TEMPLATES)`` puts the concept
into generic caption frames with words after it, and a HiRM-S target is then the same frame with the
super-category in the concept's place, so the words that follow the concept are trained to read as they
would after the super-category (what a prompt like "A Cats image in Pastel style." needs to keep its style).

The per-concept and averaged patches are ordinary patches of the same tensors (their metadata names the
strategy), so they apply with :func:`hirm.apply_patch` like any other.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Literal, get_args

import torch
from torch import Tensor

from hirm.core.config import (
    DEFAULT_PRESERVE_WEIGHT,
    Concept,
    HiRMConfig,
    PromptTarget,
    check_choice,
    check_float,
    render,
)
from hirm.core.hirm import erase as hirm_erase
from hirm.core.patch import Patch, component_parameters, make_patch

Strategy = Literal[
    "joint", "per-concept", "average", "balanced", "anchored", "balanced-anchored", "preserved"
]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


#: Generic caption frames for in-context erasure (ours): the concept followed by other words. Written to
#: share no word with the miniature world's concept names, synonyms or super-categories and to be none of
#: its caption templates (``tests/test_multi_concept.py``), so that training in them is not training
#: on the evaluation's prompts.
CONTEXT_TEMPLATES: tuple[str, ...] = (
    "{concept}",
    "a photo of {concept}",
    "{concept} on a wooden table next to a window",
    "a picture of {concept} in the park on a bright day",
    "an old photograph of {concept} with a plain background",
    "{concept}, close-up, high quality",
    "a poster showing {concept} in the middle of a busy street",
    "{concept} and a small boat near the river at night",
)


def base_tensors(model, keys: Sequence[str]) -> dict[str, Tensor]:
    """The model's current values of patch keys ``component/name`` (float32 copies on the CPU)."""
    out: dict[str, Tensor] = {}
    for key in keys:
        component, name = key.split("/", 1)
        out[key] = component_parameters(model.component(component))[name].detach().to("cpu", torch.float32)
    return out


def combine(
    patches: Sequence[Patch], base: Mapping[str, Tensor], weights: Sequence[float]
) -> dict[str, Tensor]:
    """``base + sum_i w_i (p_i - base)`` for every key any patch changes (float32)."""
    if len(patches) != len(weights):
        raise ValueError(f"{len(patches)} patches but {len(weights)} weights.")
    keys = sorted({k for p in patches for k in p.tensors})
    missing = [k for k in keys if k not in base]
    if missing:
        raise ValueError(f"No base value for {missing[:3]}.")
    out = {}
    for key in keys:
        delta = sum(
            w * (p.tensors[key] - base[key])
            for p, w in zip(patches, weights, strict=True)
            if key in p.tensors
        )
        out[key] = base[key] + delta
    return out


def anchor_prompts(concepts: Sequence[Concept], templates: Sequence[str]) -> tuple[str, ...]:
    """The concepts' prompt targets in every template (or bare), once each, none equal to a concept's text."""
    texts = {c.text for c in concepts}
    prompts = [
        render(t, c.target.prompt)
        for c in concepts
        if isinstance(c.target, PromptTarget)
        for t in (templates or ["{concept}"])
    ]
    return tuple(p for p in dict.fromkeys(prompts) if p not in texts)


def keep_prompts(
    keep: Sequence[str], templates: Sequence[str], concepts: Sequence[Concept]
) -> tuple[str, ...]:
    """The concepts to keep in every template (or bare), once each; refuses one that is also erased."""
    erased = {c.text.casefold() for c in concepts}
    clash = [k for k in keep if k.casefold() in erased]
    if clash:
        raise ValueError(f"erase_many: {clash} are both erased and kept; remove them from `keep`.")
    prompts = [render(t, k) for k in keep for t in (templates or ["{concept}"])]
    return tuple(dict.fromkeys(prompts))


def joint_config(
    config: HiRMConfig,
    concepts: Sequence[Concept],
    strategy: str,
    anchor_weight: float,
    keep: Sequence[str] = (),
) -> HiRMConfig:
    """The HiRM config a joint strategy trains with."""
    changes: dict = {}
    if strategy == "preserved":
        if not keep:
            raise ValueError(
                "Strategy 'preserved' preserves the concepts to keep; give them, e.g. keep=['Horses', 'Trees']."
            )
        changes["preserve"] = tuple(
            dict.fromkeys((*config.preserve, *keep_prompts(keep, config.templates, concepts)))
        )
        changes["preserve_weight"] = config.preserve_weight or anchor_weight
    if strategy in ("balanced", "balanced-anchored"):
        changes["concept_weighting"] = "balanced"
    if strategy in ("anchored", "balanced-anchored"):
        anchors = anchor_prompts(concepts, config.templates)
        if not anchors:
            raise ValueError(
                f"Strategy {strategy!r} preserves the concepts' target prompts; give the concepts PromptTargets "
                "(HiRM-S, e.g. hirm.concept('Cats', super_category='animal'))."
            )
        changes["preserve"] = tuple(dict.fromkeys((*config.preserve, *anchors)))
        changes["preserve_weight"] = config.preserve_weight or anchor_weight
    return dataclasses.replace(config, **changes)


def erase_many(
    model,
    concepts: Sequence[Concept],
    config: HiRMConfig = HiRMConfig(),
    *,
    strategy: Strategy = "joint",
    anchor_weight: float = DEFAULT_PRESERVE_WEIGHT,
    keep: Sequence[str] = (),
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """Erase ``concepts`` from ``model`` (a ``ModelHandle``) with HiRM and ``strategy``; one patch.

    Args:
        config: the HiRM settings every run uses.
        strategy: see the module docstring.
        anchor_weight: ``preserve_weight`` of the anchored and preserved strategies when ``config`` has none.
        keep: concept texts whose read-outs the ``preserved`` strategy keeps (only that strategy takes it).
    """
    check_choice("erase_many", "strategy", strategy, STRATEGIES)
    check_float("erase_many", "anchor_weight", anchor_weight, positive=True)
    if isinstance(keep, str) or not all(isinstance(k, str) and k.strip() for k in keep):
        raise TypeError(f"erase_many: keep must be a list of concept texts, e.g. ['Horses'], not {keep!r}.")
    if keep and strategy != "preserved":
        raise ValueError(f"erase_many: keep is used by strategy 'preserved' only, not {strategy!r}.")
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    start = time.perf_counter()
    if strategy not in ("per-concept", "average"):
        patch = hirm_erase(
            model,
            concepts,
            joint_config(config, concepts, strategy, anchor_weight, keep),
            components=components,
            progress=progress,
        )
        patch.metadata["multi"] = {"strategy": strategy, "runs": 1}
        patch.metadata["seconds"] = time.perf_counter() - start
        return patch
    parts = [hirm_erase(model, [c], config, components=components, progress=progress) for c in concepts]
    weights = [1.0] * len(parts) if strategy == "per-concept" else [1.0 / len(parts)] * len(parts)
    base = base_tensors(model, sorted({k for p in parts for k in p.tensors}))
    first = parts[0].metadata
    return make_patch(
        method="hirm",
        originals=base,
        edited=combine(parts, base, weights),
        config=first["config"],
        concepts=[asdict(c) for c in concepts],
        base={k: v for k, v in first["base"].items() if k not in ("fingerprints", "num_tensors")},
        extra={
            "multi": {"strategy": strategy, "runs": len(parts), "weights": weights},
            "final_loss_per_concept": [p.metadata.get("final_loss", {}) for p in parts],
            "seconds": time.perf_counter() - start,
        },
    )
