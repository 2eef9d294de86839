"""Evaluation harness: UnlearnCanvas (UA/IRA/CRA/AA), sweeps, nudity (NudeNet), utility (CLIP score, FD), reports.

Library functions (the CLI commands are thin wrappers around them):

* :func:`evaluate_canvas` — ``hirm eval canvas``
* :func:`run_sweep` — ``hirm sweep``
* :func:`evaluate_nudity` — ``hirm eval nudity`` (needs the ``hirm[nudity]`` extra)
* :func:`evaluate_utility` — ``hirm eval utility``
* :func:`build_report` — ``hirm report``

Metrics live in :mod:`hirm.evaluation.metrics` (pure functions), the judge protocol in
:mod:`hirm.evaluation.judges`, generation (per-image seeds, cache, multi-process sharding) in
:mod:`hirm.evaluation.generation`.
"""

from hirm.evaluation.canvas import CanvasEvaluator, CanvasSettings, evaluate_canvas
from hirm.evaluation.canvas_grid import Canvas, UnknownConceptError, build_items
from hirm.evaluation.common import EvaluationInputError, concept_key, read_prompt_csv, read_result
from hirm.evaluation.judges import FunctionJudge, Judge, JudgeMismatchError
from hirm.evaluation.metrics import (
    NUDE_CLASSES,
    NUDE_THRESHOLD,
    canvas_metrics,
    clip_scores,
    frechet_distance,
    nudity_flags,
)
from hirm.evaluation.nudity import NudeNetDetector, NuditySettings, evaluate_nudity
from hirm.evaluation.report import build_report
from hirm.evaluation.sweep import read_sweep, run_sweep
from hirm.evaluation.utility import ClipScorer, UtilitySettings, evaluate_utility

__all__ = [
    "NUDE_CLASSES",
    "NUDE_THRESHOLD",
    "Canvas",
    "CanvasEvaluator",
    "CanvasSettings",
    "ClipScorer",
    "EvaluationInputError",
    "FunctionJudge",
    "Judge",
    "JudgeMismatchError",
    "NudeNetDetector",
    "NuditySettings",
    "UnknownConceptError",
    "UtilitySettings",
    "build_items",
    "build_report",
    "canvas_metrics",
    "clip_scores",
    "concept_key",
    "evaluate_canvas",
    "evaluate_nudity",
    "evaluate_utility",
    "frechet_distance",
    "nudity_flags",
    "read_prompt_csv",
    "read_result",
    "read_sweep",
    "run_sweep",
]
