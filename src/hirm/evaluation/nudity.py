"""Nudity evaluation with NudeNet v3 (``hirm eval nudity``).

Generate one image per prompt of a CSV (I2P, UnlearnDiffAtk's nudity subset, MMA-Diffusion's
``adv_prompt``), honouring per-row ``evaluation_seed`` / ``evaluation_guidance`` when the CSV has them,
run NudeNet's 320n detector, and report the nude rate, per-class counts and the flagged rows. The class
list and the threshold are written next to every number.

NudeNet is an optional dependency (its bundled licence is AGPL-3.0): ``pip install 'hirm[nudity]'``.
It is imported only when a detector is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from hirm.evaluation.common import (
    EvaluationInputError,
    PromptRow,
    prepare_prompt_run,
    prompt_result,
    read_prompt_csv,
    resolve_device,
    write_result,
)
from hirm.evaluation.generation import Request, run_generation, scheduler_signature
from hirm.evaluation.metrics import NUDE_CLASSES, NUDE_THRESHOLD, nudity_flags

#: The UnlearnDiffAtk nudity prompts (142 rows of I2P) shipped with the package.
DEFAULT_PROMPTS = "unlearndiffatk_nudity.csv"


class Detector(Protocol):
    """``detect_batch(images) -> one list of {"class", "score", "box"} per image``; images are uint8 RGB (H, W, 3)."""

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]: ...


class NudeNetDetector:
    """NudeNet v3's detector (the bundled 320n ONNX model unless ``model_path`` is given)."""

    def __init__(self, model_path: str | None = None, *, batch_size: int = 8) -> None:
        try:
            from nudenet import NudeDetector
        except ImportError as err:
            raise ImportError(
                "hirm eval nudity needs NudeNet: pip install 'hirm[nudity]' (nudenet + onnxruntime). "
                "NudeNet's bundled licence is AGPL-3.0, which is why it is not a core dependency."
            ) from err
        self.detector = NudeDetector(model_path=model_path)
        self.batch_size = batch_size
        self.model = model_path or "nudenet 320n (bundled)"

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        # The published scripts call detect(png_path), where NudeNet reads the file with cv2.imread (BGR).
        # Handing it BGR arrays reproduces that input bit for bit (checked in the tests).
        bgr = [np.ascontiguousarray(img[..., ::-1]) for img in images]
        found = self.detector.detect_batch(bgr, batch_size=self.batch_size)
        return [
            [
                {"class": d["class"], "score": float(d["score"]), "box": [float(v) for v in d["box"]]}
                for d in dets
            ]
            for dets in found
        ]


@dataclass(frozen=True)
class NuditySettings:
    """Generation and detection settings (recorded in the result)."""

    prompt_column: str = "prompt"
    seed_column: str = "evaluation_seed"
    guidance_column: str = "evaluation_guidance"
    default_seed: int = 0
    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    classes: tuple[str, ...] = NUDE_CLASSES
    threshold: float = NUDE_THRESHOLD
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise EvaluationInputError("Give at least one NudeNet class.")
        if not 0.0 <= self.threshold <= 1.0:
            raise EvaluationInputError(f"threshold must be in [0, 1], got {self.threshold}.")


def requests_for(rows: Sequence[PromptRow], settings: NuditySettings) -> list[Request]:
    """One request per row: the row's seed, and its guidance when the CSV gives one."""
    return [
        Request(
            r.prompt,
            r.seed,
            settings.guidance_scale if r.guidance is None else r.guidance,
            settings.num_inference_steps,
            settings.height,
            settings.width,
        )
        for r in rows
    ]


def nudity_report(
    rows: Sequence[PromptRow], detections: Sequence[Sequence[dict]], settings: NuditySettings
) -> dict:
    """Aggregate detections into the result block: rate, per-class counts, flagged rows, all detections."""
    agg = nudity_flags(detections, classes=settings.classes, threshold=settings.threshold)
    wanted = set(settings.classes)
    flagged = [
        {
            "row": r.index,
            "case_number": r.case,
            "prompt": r.prompt,
            "seed": r.seed,
            "guidance": r.guidance,
            "detections": [d for d in dets if d["class"] in wanted and d["score"] > settings.threshold],
        }
        for r, dets, nude in zip(rows, detections, agg["nude"], strict=True)
        if nude
    ]
    return {
        "classes": agg["classes"],
        "threshold": agg["threshold"],
        "n_images": agg["n_images"],
        "n_nude": agg["n_nude"],
        "nude_rate": agg["nude_rate"],
        "per_class": agg["per_class"],
        "flagged": flagged,
        "rows": [
            {
                "row": r.index,
                "prompt": r.prompt,
                "seed": r.seed,
                "guidance": r.guidance,
                "nude": nude,
                "detections": [{"class": d["class"], "score": d["score"]} for d in dets],
            }
            for r, dets, nude in zip(rows, detections, agg["nude"], strict=True)
        ],
    }


def evaluate_nudity(
    model: str | os.PathLike = "minicanvas",
    *,
    prompts: str | os.PathLike | None = None,
    patches: Sequence[Any] = (),
    settings: NuditySettings | None = None,
    detector: Detector | None = None,
    device: str | torch.device | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    pipe: Any = None,
) -> dict[str, Any]:
    """Nude rate of ``model`` (+ ``patches``) on a prompt CSV (default: UnlearnDiffAtk's 142 nudity prompts).

    Works on any diffusers text-to-image pipeline. ``out``: a JSON file, written atomically by the main
    process. ``detector``: anything with ``detect_batch`` (default: :class:`NudeNetDetector`).
    """
    from hirm.evaluation.canvas import load_patches, open_model, patched

    settings, prompts_path = prepare_prompt_run(
        settings, NuditySettings, model, prompts, DEFAULT_PROMPTS, out=out, overwrite=overwrite
    )
    rows = read_prompt_csv(
        prompts_path,
        prompt_column=settings.prompt_column,
        seed_column=settings.seed_column,
        guidance_column=settings.guidance_column,
        default_seed=settings.default_seed,
        limit=settings.limit,
    )
    detector = detector or NudeNetDetector()
    dev = resolve_device(device)
    loaded, info = load_patches(patches)
    model_path = None
    if pipe is None:
        pipe, model_path = open_model(model, dev)

    def score(images: np.ndarray) -> list:
        return detector.detect_batch(list(images))

    with patched(pipe, loaded):
        detections, _, timing = run_generation(
            pipe,
            requests_for(rows, settings),
            score_fn=score,
            batch_size=settings.batch_size,
            progress=progress,
            desc="nudity",
        )
    recorded = {
        "detector": getattr(detector, "model", type(detector).__name__),
        "scheduler": scheduler_signature(pipe),
    }
    result = {
        **prompt_result("nudity", model, model_path, info, settings, prompts_path, rows, recorded),
        **nudity_report(rows, detections, settings),
        "timing": asdict(timing),
    }
    write_result(out, result, overwrite=overwrite)
    return result
