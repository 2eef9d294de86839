"""Shared plumbing of the evaluation harness: run metadata, result files, prompt CSVs, devices.

Every result file written by :mod:`hirm.evaluation` is one JSON document with the same header::

    {"kind": "canvas" | "nudity" | "utility" | "sweep", "complete": bool, "meta": {...}, ...}

``meta`` records the model (as given and the resolved directory), the patches (path, method, concepts,
``Patch.fingerprints``), the settings, the seeds, ``hirm.__version__``, torch/diffusers versions, the
command line and the date. ``complete`` is ``False`` for anything partial (an interrupted sweep, a
run whose last step failed); readers must not present such numbers as final.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hirm._version import __version__
from hirm.io import check_writable, read_json, write_atomic

RESULT_FILE = "result.json"


class EvaluationInputError(ValueError):
    """A prompt file, a concept name, a judge or an option is not usable; the message says what to fix."""


def concept_key(name: str) -> str:
    """The spelling-free key of a concept name: case, spaces and underscores do not matter.

    ``"Van Gogh"``, ``"van_gogh"`` and ``" Van  Gogh "`` all give ``"van_gogh"``. Every comparison of
    concept names in the harness (targets, grid cells, judge classes) goes through this one function,
    so the public scripts' "Van Gogh" vs "Van_Gogh" mismatch cannot happen here.
    """
    return "_".join(str(name).replace("_", " ").split()).lower()


def display_name(name: str) -> str:
    """Prompt spelling of a canonical name: underscores -> spaces (``Neon_Lines`` -> ``Neon Lines``)."""
    return str(name).replace("_", " ")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def patch_info(patch: Any, source: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a result file records about one applied patch (what a report needs to say how it was made).

    ``concepts`` are the concept texts and ``concept_specs`` the full concept records (kind, target);
    ``steps``, ``lr``, ``precision`` are the values the method resolved, ``losses`` the per-step loss
    curve per component (methods that train; ``None`` otherwise).
    """
    meta = getattr(patch, "metadata", {}) or {}
    return {
        "path": None if source is None else str(source),
        "method": meta.get("method"),
        "concepts": [c.get("text") for c in meta.get("concepts", [])],
        "concept_specs": meta.get("concepts", []),
        "config": meta.get("config"),
        "steps": meta.get("steps"),
        "lr": meta.get("lr"),
        "precision": meta.get("precision"),
        "losses": meta.get("losses"),
        "final_loss": meta.get("final_loss"),
        "base_source": meta.get("base", {}).get("source"),
        "base_family": meta.get("base", {}).get("family"),
        "fingerprints": dict(patch.fingerprints) if meta.get("base") else {},
        "num_parameters": sum(t.numel() for t in patch.tensors.values()),
        "digest": patch_digest(patch),
    }


def patch_digest(patch: Any) -> str:
    """SHA-256 of a patch's tensors (names, shapes, float32 bytes): identifies the edited weights."""
    return patch.digest


def machine_label(text: str) -> str:
    """A short name for a :func:`machine_text`, for a table cell: the GPU where there is one, else the
    CPU model without vendor marks ("Intel(R) Xeon(R) Processor (2 cores, ...)" -> "Xeon", "... GPU NVIDIA
    H200" -> "H200")."""
    if ", GPU " in text:
        return text.rsplit(", GPU ", 1)[1].replace("NVIDIA ", "").strip() or "GPU"
    cpu = text.split(" (", 1)[0]
    noise = {"intel", "amd", "processor", "cpu", "core"}
    words = [w for w in re.sub(r"\((R|TM)\)", "", cpu, flags=re.I).split() if w.lower() not in noise]
    return " ".join(words[:3]) or "CPU"


def machine_labels(texts: Iterable[str]) -> dict[str, str]:
    """A distinct short name for each distinct :func:`machine_text`: :func:`machine_label`, told apart
    where two machines would share one (two AMD EPYCs, one with native bf16: "EPYC bf16" and "EPYC
    no-bf16"; still equal: numbered), so that no figure pools two machines under one name."""
    texts = list(dict.fromkeys(texts))
    labels = {t: machine_label(t) for t in texts}
    for base in set(labels.values()):
        same = [t for t in texts if labels[t] == base]
        if len(same) < 2:
            continue
        for t in same:
            labels[t] = f"{base} {'no-bf16' if 'no native bf16' in t else 'bf16'}"
        for i, t in enumerate([t for t in same if list(labels.values()).count(labels[t]) > 1]):
            labels[t] = f"{labels[t]} #{i + 1}"
    return labels


def machine_text() -> str:
    """The machine in words, for any figure with a time: CPU model and cores, torch threads, torch
    version, and the first GPU when CUDA is present (e.g. "Intel(R) Xeon(R) ... (2 cores, native bf16),
    2 torch threads, torch 2.13.0+cpu")."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model here; platform.processor() is often empty or just "x86_64" there
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    from hirm.checks import native_bf16

    # bf16 autocast is emulated on CPUs without AMX / AVX-512-BF16: measured 12x slower than fp32 on an
    # AVX2 AMD EPYC (world pipeline, 16 images), so a bf16 time means little without this
    bf16 = "native bf16" if native_bf16(torch.device("cpu")) else "no native bf16"
    text = (
        f"{cpu} ({os.cpu_count()} cores, {bf16}), {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def run_metadata(
    *,
    model: str,
    model_path: str | os.PathLike | None = None,
    patches: Sequence[Mapping[str, Any]] = (),
    settings: Mapping[str, Any] | None = None,
    seeds: Sequence[int] = (),
) -> dict[str, Any]:
    """The ``meta`` block every result file carries."""
    import diffusers
    import transformers

    return {
        "model": str(model),
        "model_path": None if model_path is None else str(model_path),
        "patches": [dict(p) for p in patches],
        "settings": dict(settings or {}),
        "seeds": [int(s) for s in seeds],
        "hirm_version": __version__,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "transformers_version": transformers.__version__,
        "command": " ".join(sys.argv),
        "machine": machine_text(),
        "date": now_iso(),
    }


def prompt_result(
    kind: str,
    model: str | os.PathLike,
    model_path: str | os.PathLike | None,
    patches: Sequence[Mapping[str, Any]],
    settings: Any,
    prompts_path: str | os.PathLike,
    rows: Sequence[PromptRow],
    recorded: Mapping[str, Any],
) -> dict[str, Any]:
    """The opening of a prompt-CSV result (nudity, utility): kind, ``complete``, ``meta`` and the prompt file.

    ``meta.settings`` is the settings dataclass, the prompt file and ``recorded`` (detector, CLIP, scheduler, ...).
    """
    return {
        "kind": kind,
        "complete": True,
        "meta": run_metadata(
            model=str(model),
            model_path=model_path,
            patches=patches,
            settings={**asdict(settings), "prompts": str(prompts_path), **recorded},
            seeds=sorted({r.seed for r in rows}),
        ),
        "prompts": str(prompts_path),
    }


def to_jsonable(value: Any) -> Any:
    """Tuples -> lists, numpy/torch scalars -> floats, paths -> strings (recursively)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def dump_json(data: Any) -> str:
    return json.dumps(to_jsonable(data), indent=2, sort_keys=False, allow_nan=True)


def write_json(path: str | os.PathLike, data: Any, *, overwrite: bool = False) -> Path:
    """Write ``data`` as JSON atomically (refuses to replace an existing file without ``overwrite``)."""
    text = dump_json(data)
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def write_result(out: str | os.PathLike | None, result: Any, *, overwrite: bool = False) -> None:
    """Write ``result`` to ``out`` (when given) from the main process only, as :func:`write_json` does."""
    from hirm.evaluation.generation import distributed_state

    if out is not None and distributed_state().is_main_process:
        write_json(out, result, overwrite=overwrite)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read a result JSON (a file, or a directory holding ``result.json`` / ``sweep.json`` /
    ``attacks.json``, the attack table of ``benchmarks/attacks.py``)."""
    path = Path(path)
    if path.is_dir():
        for name in (RESULT_FILE, "sweep.json", "attacks.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise EvaluationInputError(f"{path} holds no {RESULT_FILE}, sweep.json or attacks.json.")
    if not path.is_file():
        raise EvaluationInputError(f"No result file at {path}.")
    data = read_json(path, "a hirm result")
    if not isinstance(data, dict) or "kind" not in data:
        raise EvaluationInputError(f"{path} is not a hirm result file (no 'kind').")
    data.setdefault("_path", str(path))
    return data


# --------------------------------------------------------------------------------------------- CSVs


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a prompt CSV: its row number (0-based, data rows), text, seed, guidance, extra columns."""

    index: int
    prompt: str
    seed: int
    guidance: float | None
    case: str | None = None


def read_prompt_csv(
    path: str | os.PathLike,
    *,
    prompt_column: str = "prompt",
    seed_column: str | None = "evaluation_seed",
    guidance_column: str | None = "evaluation_guidance",
    default_seed: int = 0,
    limit: int | None = None,
) -> list[PromptRow]:
    """Read prompts from a CSV with a header row (I2P, UnlearnDiffAtk, MMA-Diffusion, COCO-10k).

    Per-row seeds and guidance scales are taken from ``seed_column`` / ``guidance_column`` when those
    columns exist; rows without a seed get ``default_seed + row index`` (so a row's seed does not depend
    on ``limit`` or on the number of workers). ``limit`` keeps the first N rows.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise EvaluationInputError(f"--limit must be >= 1, got {limit}.")
    if not path.is_file():
        raise EvaluationInputError(f"No prompt file at {path}.")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if not columns:
            raise EvaluationInputError(f"{path} is empty (no header row).")
        if prompt_column not in columns:
            raise EvaluationInputError(
                f"{path} has no column {prompt_column!r}; its columns are {columns}. Pass --prompt-column."
            )
        has_seed = seed_column is not None and seed_column in columns
        has_guidance = guidance_column is not None and guidance_column in columns
        rows = []
        for index, record in enumerate(reader):
            if limit is not None and len(rows) >= limit:
                break
            rows.append(
                _prompt_row(
                    path,
                    index,
                    record,
                    prompt_column,
                    has_seed and seed_column,
                    has_guidance and guidance_column,
                    default_seed,
                )
            )
    if not rows:
        raise EvaluationInputError(f"{path} has a header but no prompt rows.")
    return rows


def _prompt_row(
    path: Path,
    index: int,
    record: Mapping[str, str],
    prompt_column: str,
    seed_column: str | bool,
    guidance_column: str | bool,
    default_seed: int,
) -> PromptRow:
    text = record.get(prompt_column)
    if text is None or not text.strip():
        raise EvaluationInputError(f"{path}, data row {index}: empty {prompt_column!r}.")
    seed, guidance = default_seed + index, None
    try:
        if seed_column and (record.get(seed_column) or "").strip():
            seed = int(float(record[seed_column]))
        if guidance_column and (record.get(guidance_column) or "").strip():
            guidance = float(record[guidance_column])
    except ValueError as err:
        raise EvaluationInputError(f"{path}, data row {index}: {err}.") from err
    case = record.get("case_number") or None
    return PromptRow(index=index, prompt=text.strip(), seed=seed, guidance=guidance, case=case)


def package_data(name: str) -> Path:
    """A file shipped in ``hirm/data`` (e.g. ``coco_1k.csv``, ``unlearndiffatk_nudity.csv``)."""
    path = Path(__file__).resolve().parent.parent / "data" / name
    if not path.is_file():
        raise EvaluationInputError(f"Package data file {name!r} is missing from {path.parent}.")
    return path


def prepare_prompt_run(
    settings: Any,
    settings_type: type,
    model: str | os.PathLike,
    prompts: str | os.PathLike | None,
    default_prompts: str,
    *,
    out: str | os.PathLike | None,
    overwrite: bool,
) -> tuple[Any, Path]:
    """The start of a prompt-CSV evaluation (nudity, utility): its settings and prompt file.

    ``settings=None``: ``settings_type`` with the world's sampler settings for 'minicanvas', else its
    defaults. Refuses an existing ``out`` (without ``overwrite``) before any work. ``prompts=None``: the
    package's ``default_prompts`` file.
    """
    if settings is None:
        settings = (
            settings_type(**world_sampler_settings()) if str(model) == "minicanvas" else settings_type()
        )
    if out is not None:
        check_writable(out, overwrite=overwrite)
    prompts_path = Path(prompts) if prompts is not None else package_data(default_prompts)
    return settings, prompts_path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": the accelerate process's device (CUDA when present, else CPU); anything else must
    be a device that exists here (one-line error otherwise)."""
    from hirm.checks import check_device

    if device is None or str(device) == "auto":
        from hirm.evaluation.generation import distributed_state

        return distributed_state().device
    return check_device(device)


def mean_std(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean and (population) standard deviation over the non-missing values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
    return {"mean": mean, "std": std, "n": len(vals)}


def mean_ci(values: Iterable[float | None], *, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """:func:`mean_std` plus a 95 % percentile-bootstrap interval of the mean over the values.

    For means over concepts (each concept one unit: the spread between concepts, not the number of
    images, is what limits the mean). Seeded, so the same values give the same interval. A percentile
    bootstrap rather than Student's t keeps the interval inside [min, max] (shares stay in [0, 1]) and
    needs only numpy (scipy is not a dependency).
    """
    import numpy as np

    vals = np.array([float(v) for v in values if v is not None], dtype=np.float64)
    stats: dict[str, Any] = dict(mean_std(vals.tolist()))
    if vals.size == 0:
        stats["ci95"] = None
        return stats
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, vals.size, size=(resamples, vals.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    stats["ci95"] = [float(lo), float(hi)]
    return stats


def world_sampler_settings() -> dict[str, Any]:
    """The miniature world's sampler settings as settings-dataclass fields (steps, guidance, size, batch)."""
    import hirm.world as world

    gen = world.GENERATION_DEFAULTS
    return {
        "guidance_scale": float(gen["guidance_scale"]),
        "num_inference_steps": int(gen["num_inference_steps"]),
        "height": gen.get("height"),
        "width": gen.get("width"),
        "batch_size": 64,
    }
