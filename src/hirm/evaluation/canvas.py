"""UnlearnCanvas-protocol evaluation of one erased concept (``hirm eval canvas``).

Generate the style x object grid with the erased model (and, once, with the original model: those
images are cached on disk), judge every image with the style and the object judge, and report UA, IRA,
CRA and AA (see :func:`hirm.evaluation.metrics.canvas_metrics`) on the grid, plus UA on held-out
templates and on prompts that add the super-category word.

Library use::

    from hirm.evaluation import evaluate_canvas
    result = evaluate_canvas("minicanvas", target="Neon Lines", patches=["neon.safetensors"], out="runs/neon")
    result["summary"]["erased"]        # {"UA": ..., "IRA": ..., "CRA": ..., "AA": ..., "UA_heldout": ..., ...}

For another pipeline pass ``canvas=Canvas(styles, objects)`` and ``judges={"style": ..., "object": ...}``
(any objects following :class:`hirm.evaluation.judges.Judge`) and :class:`CanvasSettings`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hirm.evaluation.canvas_grid import SUPER_TEMPLATES, Canvas, Item, build_items
from hirm.evaluation.common import (
    RESULT_FILE,
    EvaluationInputError,
    concept_key,
    patch_digest,
    patch_info,
    resolve_device,
    run_metadata,
)
from hirm.evaluation.generation import (
    ImageCache,
    Request,
    Timing,
    cache_extra,
    default_cache_dir,
    model_fingerprint,
    run_generation,
)
from hirm.evaluation.judges import Judge, class_columns, judge_probabilities
from hirm.evaluation.metrics import canvas_metrics, per_concept_accuracy, summary_metrics

#: UnlearnCanvas's prompt template and seeds.
UNLEARNCANVAS_TEMPLATE = "A {object} image in {style} style."
UNLEARNCANVAS_SEEDS: tuple[int, ...] = (188, 288, 588, 688, 888)


@dataclass(frozen=True)
class CanvasSettings:
    """What is generated and how. Recorded in every result file.

    Attributes:
        templates: grid templates (each names ``{style}`` and ``{object}``).
        heldout_templates: templates never used in training (UA on the target's prompts).
        super_templates: templates adding the super-category word (UA on the target's prompts).
        seeds: one image per prompt and seed (UnlearnCanvas: 188, 288, 588, 688, 888).
        num_inference_steps, guidance_scale, height, width: sampler settings (``None`` size = pipeline default).
        batch_size: images per generation batch (also the unit of work shared between processes).
        judge_batch_size: images per judge call.
        samples: how many retained concepts of the target's domain have their grid images kept for the
            report of a single evaluation (``None``: every concept; the target's own images, every seed and
            every held-out / super-category prompt are always kept). Sweeps keep the target's grid rows only.
        thumbnail: kept images larger than this (px, longest side) are downscaled for the report.
        precision: ``"fp32"`` or ``"bf16"`` (bfloat16 autocast while sampling: faster only where the
            hardware has native bf16, e.g. CPUs with AMX / AVX-512-BF16; emulated and about 12x slower on
            an AVX2-only CPU, ``benchmarks/precision_speed.py``; on MiniCanvas the judged accuracy was the
            same, see docs/world.md).
    """

    templates: tuple[str, ...] = (UNLEARNCANVAS_TEMPLATE,)
    heldout_templates: tuple[str, ...] = ()
    super_templates: tuple[str, ...] = SUPER_TEMPLATES
    seeds: tuple[int, ...] = UNLEARNCANVAS_SEEDS
    num_inference_steps: int = 100
    guidance_scale: float = 9.0
    height: int | None = None
    width: int | None = None
    batch_size: int = 32
    judge_batch_size: int = 256
    samples: int | None = 2
    thumbnail: int = 128
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from hirm.checks import check_template
        from hirm.evaluation.generation import PRECISIONS

        if self.num_inference_steps < 1 or self.batch_size < 1 or self.judge_batch_size < 1:
            raise EvaluationInputError("steps and batch sizes must be >= 1.")
        if self.samples is not None and self.samples < 0:
            raise EvaluationInputError(f"samples must be >= 0 or None (every concept), got {self.samples}.")
        if self.thumbnail < 8:
            raise EvaluationInputError(f"thumbnail must be >= 8 px, got {self.thumbnail}.")
        if not self.seeds:
            raise EvaluationInputError("Give at least one seed.")
        if self.precision not in PRECISIONS:
            raise EvaluationInputError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}."
            )
        fields = {"style", "object", "style_super", "object_super"}
        for template in self.templates:
            check_template(template, allowed=fields, required={"style", "object"}, what="Grid template")
        for template in self.heldout_templates + self.super_templates:
            check_template(template, allowed=fields, what="Template")

    @classmethod
    def for_world(cls, **overrides: Any) -> CanvasSettings:
        """The miniature world's defaults: its sampler settings and held-out templates."""
        import hirm.world as world

        gen = world.GENERATION_DEFAULTS
        base = cls(
            templates=(world.CANVAS_TEMPLATE,),
            heldout_templates=tuple(world.HELDOUT_TEMPLATES),
            num_inference_steps=int(gen["num_inference_steps"]),
            guidance_scale=float(gen["guidance_scale"]),
            height=gen.get("height"),
            width=gen.get("width"),
            batch_size=64,
            samples=None,  # 32x32 images: keep every concept's row for the report
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def item_key(item: Item) -> str:
    return f"{item.split}|{item.template}|{item.style}|{item.object}|{item.seed}"


@contextmanager
def patched(pipe: Any, patches: Sequence[Any]) -> Iterator[Any]:
    """Apply ``patches`` to ``pipe`` for the duration of the block; the original tensors are restored after."""
    if not patches:
        yield pipe
        return
    from hirm.core.patch import apply_patches, remove_patch

    apply_patches(pipe, list(patches))
    try:
        yield pipe
    finally:
        remove_patch(pipe)


class CanvasEvaluator:
    """Judges grid images of one pipeline; the original model's full grid is judged once and kept."""

    def __init__(
        self,
        pipe: Any,
        *,
        canvas: Canvas,
        judges: Mapping[str, Judge],
        settings: CanvasSettings,
        cache: ImageCache | None = None,
        progress: bool = True,
    ) -> None:
        for role in ("style", "object"):
            if role not in judges:
                raise EvaluationInputError(f"judges must have a {role!r} judge; got {sorted(judges)}.")
            class_columns(judges[role], canvas.names(role), role=f"{role} judge")
        self.pipe, self.canvas, self.judges, self.settings = pipe, canvas, judges, settings
        self.cache, self.progress = cache, progress
        self.cache_extra = cache_extra(pipe)
        self._baseline: tuple[list[dict], dict[str, np.ndarray]] | None = None
        self.timing = Timing()

    # ---------------------------------------------------------------------------------------- items
    def items(self, target: str | None) -> list[Item]:
        s = self.settings
        return build_items(
            self.canvas,
            templates=s.templates,
            heldout_templates=s.heldout_templates,
            super_templates=s.super_templates,
            seeds=s.seeds,
            target=target,
        )

    def sample_items(self, target: str, items: Sequence[Item], *, keep: str = "target") -> list[int]:
        """Indices of the images kept for the report, every seed.

        ``keep="target"``: the target's rows of the grid (first template). ``keep="report"``: also
        ``settings.samples`` retained rows of the target's domain (``None``: all of them) and every
        held-out and super-category image (those splits only hold the target's prompts).
        """
        domain = self.canvas.domain(target)
        rows = {target}
        if keep == "report":
            others = [n for n in self.canvas.names(domain) if n != target]
            rows.update(others if self.settings.samples is None else others[: self.settings.samples])
        t0 = self.settings.templates[0]
        return [
            i
            for i, it in enumerate(items)
            if (it.split == "grid" and it.template == t0 and it.label(domain) in rows)
            or (keep == "report" and it.split != "grid")
        ]

    # -------------------------------------------------------------------------------------- judging
    def _score(self, images: np.ndarray) -> list[tuple[str, float, str, float]]:
        out = []
        probs = {
            r: judge_probabilities(
                self.judges[r], images, batch_size=self.settings.judge_batch_size, role=f"{r} judge"
            )
            for r in ("style", "object")
        }
        classes = {r: tuple(self.judges[r].classes) for r in probs}
        for j in range(len(images)):
            s, o = int(probs["style"][j].argmax()), int(probs["object"][j].argmax())
            out.append(
                (
                    classes["style"][s],
                    float(probs["style"][j, s]),
                    classes["object"][o],
                    float(probs["object"][j, o]),
                )
            )
        return out

    def _requests(self, items: Sequence[Item]) -> list[Request]:
        """One generation request per item with the evaluator's sampler settings."""
        s = self.settings
        return [
            Request(
                it.prompt,
                it.seed,
                s.guidance_scale,
                s.num_inference_steps,
                s.height,
                s.width,
                precision=s.precision,
            )
            for it in items
        ]

    def judge_items(
        self,
        items: Sequence[Item],
        *,
        cache: ImageCache | None,
        keep: Sequence[int] = (),
        desc: str = "generate",
    ) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
        s = self.settings
        requests = self._requests(items)
        scores, kept, timing = run_generation(
            self.pipe,
            requests,
            score_fn=self._score,
            batch_size=s.batch_size,
            cache=cache,
            cache_extra=self.cache_extra,
            keep=keep,
            progress=self.progress,
            desc=desc,
            thumbnail=s.thumbnail,
        )
        for name in ("generate", "score", "generated", "cached"):
            setattr(self.timing, name, getattr(self.timing, name) + getattr(timing, name))
        rows = [
            {
                "split": it.split,
                "template": it.template,
                "style": it.style,
                "object": it.object,
                "seed": it.seed,
                "prompt": it.prompt,
                "pred_style": sc[0],
                "p_style": sc[1],
                "pred_object": sc[2],
                "p_object": sc[3],
            }
            for it, sc in zip(items, scores, strict=True)
        ]
        return rows, kept

    def baseline(self) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """The original model's rows on the full item list (every split, every concept), judged once.

        Images of the first grid template are kept, every seed (keyed by :func:`item_key`).
        """
        if self._baseline is None:
            items = self.items(None)
            keep = [
                i
                for i, it in enumerate(items)
                if it.split == "grid" and it.template == self.settings.templates[0]
            ]
            rows, kept = self.judge_items(items, cache=self.cache, keep=keep, desc="original")
            self._baseline = (rows, {item_key(items[i]): img for i, img in kept.items()})
        return self._baseline

    def original_images(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        """The original model's images of ``items`` (read from the disk cache, generated when absent).

        Used for kept images the baseline did not keep (held-out and super-category prompts); not
        judged and not counted in :attr:`timing`.
        """
        s = self.settings
        requests = self._requests(items)
        _, kept, _ = run_generation(
            self.pipe,
            requests,
            score_fn=lambda images: [None] * len(images),
            batch_size=s.batch_size,
            cache=self.cache,
            cache_extra=self.cache_extra,
            keep=range(len(items)),
            progress=self.progress,
            desc="original (images)",
            thumbnail=s.thumbnail,
        )
        return {item_key(items[i]): image for i, image in kept.items()}

    def evaluate(
        self,
        target: str,
        *,
        patches: Sequence[Any] = (),
        baseline: bool = True,
        cache_patched: bool = False,
        keep: str = "target",
    ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
        """Metrics for ``target`` with ``patches`` applied (none: the original model). Returns (result, images).

        ``keep`` chooses the images returned for the report (see :meth:`sample_items`).
        """
        if keep not in ("target", "report"):
            raise EvaluationInputError(f"keep must be 'target' or 'report', got {keep!r}.")
        target = self.canvas.erasable(target)
        domain = self.canvas.domain(target)
        items = self.items(target)
        keys = [item_key(it) for it in items]
        samples = self.sample_items(target, items, keep=keep)
        images: dict[str, dict[str, np.ndarray]] = {"erased": {}, "original": {}}
        result: dict[str, Any] = {
            "target": target,
            "domain": domain,
            "metrics": {},
            "summary": {},
            "per_concept": {},
            "rows": {},
        }
        runs: dict[str, list[dict]] = {}
        if baseline or not patches:
            base_rows, base_imgs = self.baseline()
            by_key = {item_key(it): row for it, row in zip(self.items(None), base_rows, strict=True)}
            runs["original"] = [by_key[k] for k in keys]
            images["original"] = {k: base_imgs[k] for k in (keys[i] for i in samples) if k in base_imgs}
            missing = [items[i] for i in samples if keys[i] not in images["original"]]
            if missing:
                images["original"].update(self.original_images(missing))
        if patches:
            with patched(self.pipe, patches):
                cache = self.cache if cache_patched else None
                if cache is not None:
                    cache = ImageCache(cache.root.parent, _patched_key(cache.model_key, patches))
                rows, kept = self.judge_items(items, cache=cache, keep=samples, desc=f"erased[{target}]")
            runs["erased"] = rows
            images["erased"] = {keys[i]: img for i, img in kept.items()}
        else:
            runs["erased"] = runs["original"]
            images["erased"] = images["original"]
        for name, rows in runs.items():
            per_split = canvas_metrics(
                rows, target=target, domain=domain, ira_excluded=self.canvas.ira_excluded
            )
            result["metrics"][name] = per_split
            result["summary"][name] = summary_metrics(per_split)
            result["per_concept"][name] = {
                d: per_concept_accuracy(rows, domain=d) for d in ("style", "object")
            }
            result["rows"][name] = rows
        result["samples"] = [
            {
                "key": keys[i],
                "split": items[i].split,
                "template": items[i].template,
                "style": items[i].style,
                "object": items[i].object,
                "seed": items[i].seed,
                "prompt": items[i].prompt,
            }
            for i in samples
        ]
        return result, images


def _patched_key(model_key: str, patches: Sequence[Any]) -> str:
    import hashlib

    digest = hashlib.sha256("|".join(patch_digest(p) for p in patches).encode()).hexdigest()[:16]
    return f"{model_key}-patched-{digest}"


# -------------------------------------------------------------------------------------- top level


def load_patches(patches: Sequence[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Load patch files (or take Patch objects) and describe them for the result file."""
    from hirm.core.patch import Patch, check_composable

    loaded, info = [], []
    for p in patches:
        patch = p if isinstance(p, Patch) else Patch.load(p)
        loaded.append(patch)
        info.append(patch_info(patch, None if isinstance(p, Patch) else p))
    check_composable(loaded)  # duplicates / overlaps refused before any generation
    return loaded, info


def open_model(model: str | os.PathLike, device: torch.device) -> tuple[Any, Path]:
    """Load a diffusers pipeline the way every hirm command does; returns (pipeline, its directory)."""
    from hirm.adapters.loading import load_model

    handle = load_model(model, device=device)
    return handle.pipeline(), handle.path


def default_canvas_and_judges(
    model: str | os.PathLike, canvas: Canvas | None, judges: Mapping[str, Judge] | None, device: torch.device
) -> tuple[Canvas, Mapping[str, Judge]]:
    from hirm.adapters.loading import EMBEDDED

    if (canvas is None or judges is None) and str(model) != EMBEDDED:
        raise EvaluationInputError(
            f"For {model!r} pass the concept lists and judges (canvas=..., judges=...): only the embedded "
            "'minicanvas' world ships its own judges."
        )
    if canvas is None:
        canvas = Canvas.from_world()
    if judges is None:
        import hirm.world as world

        judges = world.load_judges(device=device)
    return canvas, judges


def make_cache(cache_dir: str | os.PathLike | None, model_path: Path, use_cache: bool) -> ImageCache | None:
    if not use_cache:
        return None
    return ImageCache(cache_dir or default_cache_dir(), model_fingerprint(model_path))


def evaluate_canvas(
    model: str | os.PathLike = "minicanvas",
    *,
    target: str,
    patches: Sequence[Any] = (),
    settings: CanvasSettings | None = None,
    canvas: Canvas | None = None,
    judges: Mapping[str, Judge] | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    baseline: bool = True,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate erasing ``target`` (any spelling) from ``model`` with ``patches``; see the module docstring.

    ``out``: a directory receiving ``result.json`` and the sample images (written atomically by the
    main process; an existing one is refused unless ``overwrite``).
    """
    from hirm.evaluation.judge_models import judge_name
    from hirm.io import check_writable

    if out is not None:
        check_writable(out, overwrite=overwrite, directory=True)
    dev = resolve_device(device)
    canvas, judges = default_canvas_and_judges(model, canvas, judges, dev)
    target = canvas.erasable(target)
    if settings is None:
        settings = CanvasSettings.for_world() if str(model) == "minicanvas" else CanvasSettings()
    loaded, info = load_patches(patches)
    erased = {concept_key(c) for p in info for c in p["concepts"] if c}
    if loaded and concept_key(target) not in erased:
        logging.getLogger(__name__).warning(
            "The patches erase %s, not the evaluated target %r.", sorted(erased) or "unknown concepts", target
        )
    pipe, path = open_model(model, dev)
    evaluator = CanvasEvaluator(
        pipe,
        canvas=canvas,
        judges=judges,
        settings=settings,
        cache=make_cache(cache_dir, path, use_cache),
        progress=progress,
    )
    result, images = evaluator.evaluate(target, patches=loaded, baseline=baseline, keep="report")
    result = {
        "kind": "canvas",
        "complete": True,
        "meta": run_metadata(
            model=str(model),
            model_path=path,
            patches=info,
            settings={
                **settings.to_dict(),
                "scheduler": evaluator.cache_extra["scheduler"],
                "cache": None if evaluator.cache is None else str(evaluator.cache.root),
            },
            seeds=settings.seeds,
        ),
        **result,
        "judges": {role: judge_name(judges[role]) for role in ("style", "object")},
        "ira_excluded": list(canvas.ira_excluded),
        "timing": asdict(evaluator.timing),
    }
    if out is not None and _is_main():
        write_canvas_dir(out, result, images, overwrite=overwrite)
    return result


def _is_main() -> bool:
    from hirm.evaluation.generation import distributed_state

    return distributed_state().is_main_process


def save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def write_canvas_dir(
    out: str | os.PathLike,
    result: Mapping[str, Any],
    images: Mapping[str, Mapping[str, np.ndarray]],
    *,
    overwrite: bool = False,
) -> Path:
    """``out/result.json`` + ``out/sheets/{original,erased}/*.png`` (see :func:`contact_sheets`), atomically."""
    from hirm.io import atomic_path

    with atomic_path(out, overwrite=overwrite, directory=True, kind="canvas") as tmp:
        fill_canvas_dir(tmp, result, images)
    return Path(out)


def contact_sheets(
    result: Mapping[str, Any], images: Mapping[str, Mapping[str, np.ndarray]]
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The kept images as one picture per (run, split, template, seed): ``(index entry, (R*h, C*w, 3) uint8)``.

    Rows are concepts of the target's domain (the target first), columns the other domain's concepts in
    the order of the grid (``None`` for a template naming only the target's domain). A cell without an
    image is mid-grey and listed in the entry's ``missing`` as ``[row, column]``. The entry records
    ``run``, ``split``, ``template``, ``seed``, ``rows``, ``cols``, the cell size ``cell`` = ``[h, w]`` and
    the ``file`` name (relative to the result directory).
    """
    import hashlib

    domain = result["domain"]
    other = "object" if domain == "style" else "style"
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for sample in result.get("samples", []):
        if "split" in sample:  # results of hirm < 0.2 kept single images; they have no sheets
            groups.setdefault((sample["split"], sample["template"], sample["seed"]), []).append(sample)
    sheets = []
    for (split, template, seed), group in groups.items():
        rows = sorted(dict.fromkeys(g[domain] for g in group), key=lambda n: n != result["target"])
        cols = list(dict.fromkeys(g[other] for g in group))
        where = {(g[domain], g[other]): g["key"] for g in group}
        for run in ("original", "erased"):
            found = [images.get(run, {}).get(k) for k in where.values()]
            shapes = {img.shape for img in found if img is not None}
            if not shapes:
                continue
            h, w, _ = max(shapes)
            picture = np.full((len(rows) * h, len(cols) * w, 3), 128, np.uint8)
            missing = []
            for r, row in enumerate(rows):
                for c, col in enumerate(cols):
                    image = images.get(run, {}).get(where.get((row, col), ""))
                    if image is None or image.shape != (h, w, 3):
                        missing.append([r, c])
                        continue
                    picture[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
            tag = hashlib.sha1(template.encode()).hexdigest()[:8]
            entry = {
                "run": run,
                "split": split,
                "template": template,
                "seed": int(seed),
                "rows": rows,
                "cols": cols,
                "cell": [int(h), int(w)],
                "missing": missing,
                "file": f"sheets/{run}/{split}-{tag}-s{seed}.png",
            }
            sheets.append((entry, picture))
    return sheets


def fill_canvas_dir(
    directory: Path, result: Mapping[str, Any], images: Mapping[str, Mapping[str, np.ndarray]]
) -> None:
    """Write the contact sheets of the kept images and ``result.json`` (with the sheets' index) into ``directory``."""
    from hirm.evaluation.common import dump_json

    index = []
    for entry, picture in contact_sheets(result, images):
        save_png(directory / entry["file"], picture)
        index.append(entry)
    (directory / RESULT_FILE).write_text(dump_json({**result, "sheets": index}), encoding="utf-8")
