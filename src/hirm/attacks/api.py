"""``run_attack``: one attack on one erased concept, resumable, with its result and images on disk."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hirm.attacks.diffusion import Sampler
from hirm.attacks.judges import ClassJudge, ConceptJudge, NudityJudge
from hirm.attacks.registry import AttackSpec, get_attack
from hirm.attacks.run import (
    RESULT,
    AttackContext,
    AttackRun,
    Budget,
    Interrupted,
    ItemOutcome,
    grid_image,
    manifest_for,
    summarise,
)
from hirm.attacks.targets import AttackTarget, canvas_target, prompt_target
from hirm.evaluation.common import EvaluationInputError, read_result


def default_target(
    model: str,
    concept: str,
    kind: str | None = None,
    seeds: Sequence[int] | None = None,
    train_seeds: Sequence[int] | None = None,
) -> AttackTarget:
    """The miniature world's grid prompts for one of its concepts; elsewhere generic captions of ``kind``."""
    given = {k: tuple(v) for k, v in (("seeds", seeds), ("train_seeds", train_seeds)) if v}
    if str(model) == "minicanvas":
        from hirm.evaluation.canvas_grid import Canvas

        return canvas_target(Canvas.from_world(), concept, **given)
    return prompt_target(concept, kind or "object", **given)


def default_judge(model: str, target: AttackTarget, device: torch.device) -> ConceptJudge:
    """The world's style/object judge for a world concept, NudeNet for nudity; otherwise give one."""
    if target.kind == "nudity":
        return NudityJudge()
    if str(model) == "minicanvas":
        import hirm.world as world

        return ClassJudge(world.load_judges(device=device)[target.kind], target.concept)
    raise EvaluationInputError(
        f"No default judge for a {target.kind} concept on {model}: pass judge=ClassJudge(your_classifier, "
        "concept) (any hirm.evaluation.judges.Judge), or attack nudity (NudeNet)."
    )


def run_attack(
    attack: str,
    model: str | os.PathLike = "minicanvas",
    target: AttackTarget | str = "",
    *,
    out: str | os.PathLike,
    patches: Sequence[Any] = (),
    judge: ConceptJudge | None = None,
    config: Any = None,
    sampler: Sampler | None = None,
    kind: str | None = None,
    seeds: Sequence[int] | None = None,
    train_seeds: Sequence[int] | None = None,
    seed: int = 0,
    time_limit: float | None = None,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    pipe: Any = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``attack`` against ``model`` with ``patches`` applied; returns the result dict.

    Args:
        attack: ``embedding``, ``unlearndiffatk``, ``ringabell`` or ``prompts`` (``hirm.attacks.attacks()``).
        model: ``minicanvas`` or a Stable Diffusion 1.x/2.x pipeline directory / hub id.
        target: an :class:`AttackTarget`, or a concept name (world concept; elsewhere with ``kind``).
        out: the run directory (resumed when it holds the same run).
        patches: the erasure (patch files or :class:`hirm.Patch` objects, composed).
        judge: decides whether an image shows the concept (default: the world's judge / NudeNet).
        config: the attack's config (default: its CPU-budget defaults).
        sampler: sampler settings of every image (default: the model's protocol settings).
        seeds: evaluation seeds when ``target`` is a name.
        train_seeds: seeds of the original-model images textual inversion learns from (``target`` a name).
        seed: seeds the attack's own randomness.
        time_limit: seconds for this call; the run stops cleanly (``complete: false``) and resumes later.
        limit: attack only the first N prompts.
        pipe: an already loaded pipeline of ``model`` (reused, e.g. by the benchmark; restored after).
        cache_dir: where searches that never see the erasure (Ring-A-Bell's) are shared between runs.
    """
    from hirm.adapters.loading import load_model
    from hirm.evaluation.canvas import load_patches, patched

    spec = get_attack(attack)
    config = spec.config_cls() if config is None else config
    if not isinstance(config, spec.config_cls):
        raise TypeError(f"Attack {attack!r} takes a {spec.config_cls.__name__}, got {type(config).__name__}.")
    device = torch.device(device)
    handle = load_model(model, device=device)
    if handle.family.name != "sd" or handle.family.denoiser != "unet":
        raise EvaluationInputError(
            f"Attacks run on Stable Diffusion 1.x/2.x pipelines (one CLIP text encoder + U-Net); {model} is "
            f"a {handle.family.name!r} model."
        )
    if isinstance(target, str):
        if not target:
            raise EvaluationInputError("Give the erased concept to attack (--concept).")
        target = default_target(str(model), target, kind, seeds, train_seeds)
    target = target.limit(limit)
    sampler = sampler or Sampler.for_model(str(model))
    judge = judge or default_judge(str(model), target, device)
    loaded, _ = load_patches(patches)
    pipe = pipe if pipe is not None else handle.pipeline()
    manifest = manifest_for(
        spec.name, config, model=str(model), model_path=handle.path, patches=loaded, target=target,
        sampler=sampler, judge=judge, seed=seed,
    )  # fmt: skip
    run = AttackRun(out, manifest, overwrite=overwrite)
    ctx = AttackContext(pipe, target, judge, sampler, run, Budget(time_limit), seed, progress)
    ctx.cache_dir = None if cache_dir is None else Path(cache_dir)
    timing = run.load_json("timing.json") or {"original": 0.0, "prepare": 0.0, "items": 0.0}
    message, prepared = None, None
    frozen = _freeze(pipe)
    try:
        with _timed(timing, "original"):
            original = spec.original(ctx, config)
        with patched(pipe, loaded):
            with _timed(timing, "prepare"):
                prepared = spec.prepare(ctx, config, original)
            with _timed(timing, "items"):
                _attack_items(ctx, spec, config, original, prepared)
    except Interrupted as stop:
        message = f"{stop}; re-run the same command to resume"
    finally:
        run.save_json("timing.json", timing)
        for param, flag in frozen:
            param.requires_grad_(flag)
    return _finish(ctx, spec, config, manifest, prepared, timing, message)


def _freeze(pipe: Any) -> list[tuple[torch.nn.Parameter, bool]]:
    """Turn gradients off for the pipeline's weights (attacks only differentiate their own inputs);
    returns the flags to restore."""
    flags = []
    for name in ("text_encoder", "unet", "vae"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            for param in module.parameters():
                flags.append((param, param.requires_grad))
                param.requires_grad_(False)
    return flags


class _timed:
    def __init__(self, timing: dict[str, float], key: str) -> None:
        self.timing, self.key = timing, key

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timing[self.key] = self.timing.get(self.key, 0.0) + time.perf_counter() - self.start


def _attack_items(ctx: AttackContext, spec: AttackSpec, config: Any, original: Any, prepared: Any) -> None:
    """Attack every unfinished item; batchable attacks take ``sampler.batch_size`` items at a time."""
    items = ctx.target.items
    todo = [i for i in range(len(items)) if ctx.run.finished(i) is None]
    size = ctx.sampler.batch_size if spec.attack_batch is not None else 1
    bar = tqdm(total=len(todo), desc=f"{spec.name} attack", disable=not ctx.progress)
    for start in range(0, len(todo), size):
        if ctx.budget.expired():
            bar.close()
            done = len(items) - len(todo) + start
            raise Interrupted(f"time limit reached after {done} of {len(items)} prompts")
        _attack_chunk(ctx, spec, config, original, prepared, todo[start : start + size])
        bar.update(len(todo[start : start + size]))
    bar.close()


def _attack_chunk(
    ctx: AttackContext, spec: AttackSpec, config: Any, original: Any, prepared: Any, indices: list[int]
) -> None:
    start = time.perf_counter()
    items = [ctx.target.items[i] for i in indices]
    before_images, befores = [None] * len(items), [None] * len(items)
    if spec.judge_before:
        # the erased pipeline's image of the plain prompt (a prompt longer than the encoder reads is cut
        # as the pipeline cuts it)
        images, verdicts = ctx.judged(ctx.embed([item.prompt for item in items], truncate=True), items)
        before_images, befores = list(images), list(verdicts)
    outcomes: dict[int, ItemOutcome] = {}
    for i, index in enumerate(indices):
        if befores[i] and spec.stop_if_before:
            outcomes[index] = ItemOutcome(None, None, info={"skipped": "recognised before the attack"})
    rest = [i for i, index in enumerate(indices) if index not in outcomes]
    if spec.attack_batch is not None and rest:
        made = spec.attack_batch(
            ctx, config, original, prepared, [indices[i] for i in rest], [items[i] for i in rest],
            [befores[i] for i in rest],
        )  # fmt: skip
        outcomes.update({indices[i]: outcome for i, outcome in zip(rest, made, strict=True)})
    seconds = (time.perf_counter() - start) / len(indices)
    for i, index in enumerate(indices):
        item_start = time.perf_counter()
        if index not in outcomes:
            outcomes[index] = spec.attack(ctx, config, original, prepared, index, items[i], befores[i])
        outcome, item = outcomes[index], items[i]
        record = {
            "index": index,
            "prompt": item.prompt,
            "seed": item.seed,
            "guidance": item.guidance,
            "benign": item.benign,
            "attacked_prompt": outcome.attacked_prompt,
            "before": befores[i],
            "after": outcome.success,
            "success": bool(befores[i]) or bool(outcome.success),
            "seconds": seconds + time.perf_counter() - item_start,
            **outcome.info,
        }
        images = {"before": before_images[i], "after": outcome.image}
        ctx.run.save_item(index, record, images, outcome.tensors)


def _finish(
    ctx: AttackContext,
    spec: AttackSpec,
    config: Any,
    manifest: dict,
    prepared: Any,
    timing: dict,
    message: str | None,
) -> dict[str, Any]:
    run, n = ctx.run, len(ctx.target.items)
    records = [r for r in (run.finished(i) for i in range(n)) if r is not None]
    found = spec.found(ctx, config, prepared, records) if spec.found else _found_tokens(records)
    if found is not None:
        tensors, info = found
        run.save_tensors("found.safetensors", tensors)
        run.save_json("found.json", info)
    picture = grid_image(run, records)
    if picture is not None:
        picture.save(run.out / "grid.png")
    result = {
        "kind": "attack",
        "attack": spec.name,
        "description": spec.description,
        "complete": len(records) == n,
        "message": message,
        "meta": manifest["meta"],
        "config": config.to_dict(),
        "target": {"concept": ctx.target.concept, "kind": ctx.target.kind, "n_items": n},
        "judge": ctx.judge.describe(),
        "sampler": ctx.sampler.to_dict(),
        **summarise(records, n),
        "seconds": {**timing, "total": sum(timing.values())},
        "items": records,
    }
    run.save_json(RESULT, result)
    run.mark()
    return result


def _found_tokens(records):
    rows = [r for r in records if r.get("tokens") is not None]
    if not rows:
        return None
    tensors = {f"item_{r['index']:05d}": torch.tensor(r["tokens"], dtype=torch.long) for r in rows}
    info = [
        {k: r.get(k) for k in ("index", "prompt", "seed", "attacked_prompt", "tokens", "success")}
        for r in rows
    ]
    return tensors, info


def read_attack(path: str | os.PathLike) -> dict[str, Any]:
    """Read an attack's ``result.json`` (a run directory or the file)."""
    path = Path(path)
    data = read_result(path / RESULT if path.is_dir() else path)
    if data.get("kind") != "attack":
        raise EvaluationInputError(f"{path} is a {data.get('kind')!r} result, not an attack result.")
    return data


__all__ = ["default_judge", "default_target", "read_attack", "run_attack"]
