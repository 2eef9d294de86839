"""Erase every concept of a domain in turn, evaluate each on the UnlearnCanvas grid, aggregate (``hirm sweep``).

Output directory layout (results stream as each concept finishes)::

    out/sweep.json            header: meta, settings, concepts, aggregate (mean ± std), complete flag
    out/results.jsonl         one line per finished concept (summary, baseline summary, timings, patch)
    out/results.csv           the same as a table
    out/concepts/<name>/      result.json + sample images of that concept (see hirm.evaluation.canvas)

A killed sweep is resumed by running the same command again: finished concepts (lines of
``results.jsonl``) are skipped. Resuming with other settings is refused. The original model's grid is
generated once (and cached on disk) and reused for every concept. ``sweep.json`` says
``complete: false`` until every concept is done.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hirm.evaluation.canvas import (
    CanvasEvaluator,
    CanvasSettings,
    default_canvas_and_judges,
    fill_canvas_dir,
    make_cache,
    open_model,
)
from hirm.evaluation.canvas_grid import Canvas
from hirm.evaluation.common import (
    EvaluationInputError,
    dump_json,
    mean_std,
    patch_info,
    resolve_device,
    run_metadata,
)
from hirm.evaluation.generation import model_fingerprint
from hirm.evaluation.judges import Judge
from hirm.evaluation.metrics import summary_metrics
from hirm.io import atomic_path, write_atomic

METRICS = ("UA", "IRA", "CRA", "AA", "UA_heldout", "UA_super")
MANIFEST, LINES, TABLE = "sweep.json", "results.jsonl", "results.csv"

#: erase_fn(handle, concept_name, domain) -> Patch
EraseFn = Callable[[Any, str, str], Any]


def default_erase(
    method: str, device: torch.device, *, target: str = "random", canvas: Canvas | None = None
) -> EraseFn:
    """Erase one concept with ``hirm.api.erase(..., method=method, config=None)`` (the method's defaults).

    The concept text is the prompt spelling (``Neon Lines``). ``target="random"``: HiRM-R;
    ``target="super"``: HiRM-S toward the concept's super-category word from ``canvas``.
    """
    from hirm.api import erase
    from hirm.core.config import Concept, PromptTarget, RandomTarget
    from hirm.evaluation.common import display_name

    if target not in ("random", "super"):
        raise EvaluationInputError(f"--target must be 'random' or 'super', got {target!r}.")

    def run(handle: Any, name: str, domain: str) -> Any:
        goal = RandomTarget()
        if target == "super":
            words = (canvas.style_super if domain == "style" else canvas.object_super) if canvas else {}
            if name not in words:
                raise EvaluationInputError(f"No super-category word for {name!r}; HiRM-S needs one.")
            goal = PromptTarget(words[name])
        concept = Concept(text=display_name(name), kind=domain, target=goal)
        return erase(handle, [concept], method=method, config=None, device=device, progress=False)

    return run


def sweep_concepts(
    canvas: Canvas, domain: str, concepts: Sequence[str] | None, limit: int | None
) -> list[str]:
    if domain not in ("style", "object", "all"):
        raise EvaluationInputError(f"--domain must be style, object or all; got {domain!r}.")
    names = list(canvas.styles if domain in ("style", "all") else ()) + list(
        canvas.objects if domain in ("object", "all") else ()
    )
    if concepts:
        names = [canvas.canonical(c) for c in concepts]
    if limit is not None:
        if limit < 1:
            raise EvaluationInputError(f"--limit must be >= 1, got {limit}.")
        names = names[:limit]
    return names


def _settings_key(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_finished(out: Path, key: str) -> dict[str, dict[str, Any]]:
    """Finished concepts of a previous run with the same settings key (a torn last line is ignored)."""
    path = out / LINES
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("settings_key") != key:
            raise EvaluationInputError(
                f"{out} holds a sweep with other settings ({record.get('settings_key')} != {key}); pass --overwrite "
                "to start again or choose another --out."
            )
        done[record["concept"]] = record
    return done


def prepare_out(out: Path, key: str, *, overwrite: bool) -> dict[str, dict[str, Any]]:
    """Create/clean ``out``; return the concepts already finished there."""
    if out.exists() and not out.is_dir():
        raise EvaluationInputError(f"{out} is a file; --out of a sweep is a directory.")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists():
        manifest = out / MANIFEST
        if not manifest.is_file():
            if any(out.iterdir()):
                raise EvaluationInputError(
                    f"{out} exists and is not a sweep directory; pass --overwrite or another --out."
                )
        elif json.loads(manifest.read_text()).get("settings_key") != key:
            raise EvaluationInputError(
                f"{out} holds a sweep with other settings; pass --overwrite to start again or choose another --out."
            )
    out.mkdir(parents=True, exist_ok=True)
    return read_finished(out, key)


def aggregate(records: Sequence[Mapping[str, Any]], which: str = "summary") -> dict[str, dict[str, Any]]:
    """Mean ± std (population) of every metric over concepts, per domain and over all."""
    out: dict[str, dict[str, Any]] = {}
    groups = {"all": list(records)}
    for r in records:
        groups.setdefault(r["domain"], []).append(r)
    for name, rows in groups.items():
        out[name] = {m: mean_std(r[which].get(m) for r in rows) for m in METRICS}
        out[name]["n_concepts"] = len(rows)
    return out


def write_table(out: Path, records: Sequence[Mapping[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "concept",
            "domain",
            *METRICS,
            *(f"original_{m}" for m in METRICS),
            "erase_s",
            "generate_s",
            "judge_s",
        ]
    )
    for r in records:
        writer.writerow(
            [
                r["concept"],
                r["domain"],
                *(_fmt(r["summary"].get(m)) for m in METRICS),
                *(_fmt(r["baseline"].get(m)) for m in METRICS),
                *(f"{r['times'][k]:.3f}" for k in ("erase", "generate", "judge")),
            ]
        )
    write_atomic(out / TABLE, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"), overwrite=True)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def append_line(out: Path, record: Mapping[str, Any]) -> None:
    with (out / LINES).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(json.loads(dump_json(record))) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def run_sweep(
    model: str | os.PathLike = "minicanvas",
    *,
    out: str | os.PathLike,
    domain: str = "all",
    method: str = "hirm",
    target: str = "random",
    concepts: Sequence[str] | None = None,
    limit: int | None = None,
    settings: CanvasSettings | None = None,
    canvas: Canvas | None = None,
    judges: Mapping[str, Judge] | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    overwrite: bool = False,
    save_patches: bool = False,
    erase_fn: EraseFn | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a sweep; returns the final ``sweep.json`` content. See the module docstring."""
    from hirm.evaluation.generation import distributed_state

    state = distributed_state()
    dev = resolve_device(device)
    canvas, judges = default_canvas_and_judges(model, canvas, judges, dev)
    names = sweep_concepts(canvas, domain, concepts, limit)
    method_config = None if erase_fn is not None else _method_config(method)  # fails early on unknown methods
    if settings is None:
        settings = CanvasSettings.for_world() if str(model) == "minicanvas" else CanvasSettings()
    pipe, path = open_model(model, dev)
    key = _settings_key(
        {
            "model": model_fingerprint(path),
            "method": method,
            "target": target,
            "settings": settings.to_dict(),
            "styles": canvas.styles,
            "objects": canvas.objects,
        }
    )
    out = Path(out)
    done = prepare_out(out, key, overwrite=overwrite) if state.is_main_process else {}
    state.wait_for_everyone()
    if not state.is_main_process:
        done = read_finished(out, key)
    evaluator = CanvasEvaluator(
        pipe,
        canvas=canvas,
        judges=judges,
        settings=settings,
        cache=make_cache(cache_dir, path, use_cache),
        progress=progress,
    )
    meta = run_metadata(
        model=str(model),
        model_path=path,
        settings={
            **settings.to_dict(),
            "method": method,
            "target": target if erase_fn is None else "custom erase_fn",
            "domain": domain,
            "scheduler": evaluator.cache_extra["scheduler"],
        },
        seeds=settings.seeds,
    )
    header = {
        "method_config": method_config,
        "kind": "sweep",
        "settings_key": key,
        "method": method,
        "target": target,
        "domain": domain,
        "concepts": names,
        "meta": meta,
    }
    records = [done[n] for n in names if n in done]
    if state.is_main_process:
        _write_manifest(out, header, records, names)

    start = time.perf_counter()
    evaluator.baseline()
    baseline_s = time.perf_counter() - start
    erase = erase_fn or default_erase(method, dev, target=target, canvas=canvas)
    handle = None
    for name in names:
        if name in done:
            continue
        if handle is None:
            from hirm.adapters.loading import load_model

            handle = load_model(model, device=dev)
        record = _one_concept(evaluator, erase, handle, name, canvas.domain(name), state)
        record = {"concept": name, "settings_key": key, **record}
        if state.is_main_process:
            _write_concept(
                out, name, record.pop("_result"), record.pop("_images"), record.pop("_patch"), save_patches
            )
            append_line(out, record)
            records.append(record)
            write_table(out, records)
            _write_manifest(out, header, records, names, baseline_s=baseline_s)
        else:
            for k in ("_result", "_images", "_patch"):
                record.pop(k)
        state.wait_for_everyone()
    return json.loads((out / MANIFEST).read_text()) if state.is_main_process else header


def _method_config(method: str) -> dict[str, Any] | None:
    """The method's default config (what ``config=None`` means), recorded in the manifest."""
    from dataclasses import asdict, is_dataclass

    from hirm.core.registry import get_method

    config = get_method(method).config_cls()
    return asdict(config) if is_dataclass(config) else None


def _one_concept(
    evaluator: CanvasEvaluator, erase: EraseFn, handle: Any, name: str, domain: str, state
) -> dict[str, Any]:
    before = asdict(evaluator.timing)
    start = time.perf_counter()
    patch = erase(handle, name, domain) if state.is_main_process else None
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        patch = broadcast_object_list([patch])[0]
    erase_s = time.perf_counter() - start
    result, images = evaluator.evaluate(name, patches=[patch], baseline=True)
    after = asdict(evaluator.timing)
    return {
        "domain": domain,
        "summary": result["summary"]["erased"],
        "baseline": result["summary"]["original"],
        "times": {
            "erase": erase_s,
            "generate": after["generate"] - before["generate"],
            "judge": after["score"] - before["score"],
        },
        "patch": patch_info(patch),
        "_result": result,
        "_images": images,
        "_patch": patch,
    }


def _write_concept(out: Path, name: str, result: dict, images: dict, patch: Any, save_patch: bool) -> None:
    result = {"kind": "canvas", "complete": True, **result}
    with atomic_path(out / "concepts" / name, overwrite=True, directory=True) as tmp:
        fill_canvas_dir(tmp, result, images)
        if save_patch:
            patch.save(tmp / "patch.safetensors")


def _write_manifest(
    out: Path,
    header: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    *,
    baseline_s: float | None = None,
) -> None:
    finished = [r["concept"] for r in records]
    totals = {k: sum(r["times"][k] for r in records) for k in ("erase", "generate", "judge")}
    manifest = {
        **header,
        "complete": set(finished) >= set(names),
        "finished": finished,
        "aggregate": aggregate(records, "summary"),
        "aggregate_original": aggregate(records, "baseline"),
        "times": {**totals, "original": baseline_s},
    }
    text = dump_json(manifest)
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)


def read_sweep(out: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and the per-concept records of a sweep directory."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise EvaluationInputError(f"{out} is not a sweep directory (no {MANIFEST}).")
    manifest = json.loads((out / MANIFEST).read_text())
    records = []
    if (out / LINES).is_file():
        for line in (out / LINES).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return manifest, records


__all__ = ["run_sweep", "read_sweep", "aggregate", "summary_metrics"]
