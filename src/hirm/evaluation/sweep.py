"""Erase every concept of a domain in turn, evaluate each on the UnlearnCanvas grid, aggregate (``hirm sweep``).

Output directory layout (results stream as each concept finishes)::

    out/sweep.json            header: meta, settings, concepts, aggregate (mean ± std), complete flag
    out/results.jsonl         one line per finished concept (summary, baseline summary, timings, patch)
    out/results.csv           the same as a table
    out/concepts/<name>/      result.json + sample images of that concept (see hirm.evaluation.canvas)

A killed sweep is resumed by running the same command again: finished concepts (lines of
``results.jsonl``) are skipped. Resuming with other settings is refused. The original model's grid is
generated once (and cached on disk) and reused for every concept. ``sweep.json`` says
``complete: false`` until every concept is done; completeness and the aggregate are always derived from
the records actually in ``results.jsonl`` (a line torn by a kill is reported, skipped and re-run; the
next record starts on a fresh line). A running sweep holds ``out/.hirm-lock`` (its pid): a second sweep
on the same directory is refused while the first is alive. ``--overwrite`` replaces the directory only
when everything in it was written by hirm (``out/.hirm-output`` lists it).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
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
from hirm.io import (
    LOCK,
    MARKER,
    append_line,
    atomic_path,
    check_replaceable,
    directory_lock,
    read_json,
    write_atomic,
    write_marker,
)

METRICS = ("UA", "IRA", "CRA", "AA", "UA_heldout", "UA_super")
MANIFEST, LINES, TABLE = "sweep.json", "results.jsonl", "results.csv"
TARGETS = ("random", "super")
logger = logging.getLogger(__name__)

#: erase_fn(handle, concept_name, domain) -> Patch. One that erases several concepts at once may also
#: have ``prepare(pending)``: it is called first with the (concept, domain) pairs still to run, in order.
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

    check_target(target)

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


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise EvaluationInputError(f"--target must be 'random' (HiRM-R) or 'super' (HiRM-S), got {target!r}.")


def sweep_concepts(
    canvas: Canvas, domain: str, concepts: Sequence[str] | None, limit: int | None
) -> list[str]:
    if domain not in ("style", "object", "all"):
        raise EvaluationInputError(f"--domain must be style, object or all; got {domain!r}.")
    names = list(canvas.styles if domain in ("style", "all") else ()) + list(
        canvas.objects if domain in ("object", "all") else ()
    )
    names = [n for n in names if canvas.in_ira(n)]  # not UnlearnCanvas's photo class
    if concepts:
        names = [canvas.erasable(c) for c in concepts]
    if limit is not None:
        if limit < 1:
            raise EvaluationInputError(f"--limit must be >= 1, got {limit}.")
        names = names[:limit]
    return names


def _settings_key(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_records(out: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of ``out/results.jsonl`` and the numbers (1-based) of lines that are not valid
    JSON records (torn by a kill during the append); those are reported and skipped."""
    path = out / LINES
    if not path.is_file():
        return [], []
    records, torn = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "concept" not in record:
            torn.append(number)
            continue
        records.append(record)
    if torn:
        logger.warning(
            "%s: skipped line(s) %s, not complete records (a run killed while writing?); those concepts "
            "count as not finished.",
            path,
            torn,
        )
    return records, torn


def read_finished(out: Path, key: str) -> dict[str, dict[str, Any]]:
    """Finished concepts of a previous run with the same settings key (torn lines are skipped)."""
    done: dict[str, dict[str, Any]] = {}
    for record in read_records(out)[0]:
        if record.get("settings_key") != key:
            raise EvaluationInputError(
                f"{out} holds a sweep with other settings ({record.get('settings_key')} != {key}); pass --overwrite "
                "to start again or choose another --out."
            )
        done[record["concept"]] = record
    return done


#: What a sweep directory holds (its marker lists these; ``concepts/*`` are marked outputs themselves).
SWEEP_FILES = (MANIFEST, LINES, TABLE)


def erase_seconds(patch: Any, wall_s: float) -> float:
    """What erasing ``patch`` cost: the wall time of the call that returned it, unless it was erased with
    other concepts in one batched run (``metadata["batched"]``), then its recorded share of that run, or
    some of its parts were made before (``metadata["reused"]``), then their recorded cost is counted."""
    metadata = getattr(patch, "metadata", {})
    return float(metadata["seconds"]) if metadata.get("batched") or metadata.get("reused") else wall_s


def prepare_out(out: Path, key: str, *, overwrite: bool) -> dict[str, dict[str, Any]]:
    """Clean (``overwrite``) or check ``out`` (the caller holds its lock); return the finished concepts.

    Only hirm's own files are ever deleted: ``--overwrite`` on a directory holding anything else is refused.
    """
    if out.exists() and not out.is_dir():
        raise EvaluationInputError(f"{out} is a file; --out of a sweep is a directory.")
    if overwrite:
        check_replaceable(out)
        for entry in out.iterdir():
            if entry.name == LOCK:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    others = [p.name for p in out.iterdir() if p.name not in (LOCK, MARKER, *SWEEP_FILES, "concepts")]
    if not (out / MANIFEST).is_file():
        if others or (out / LINES).exists():
            raise EvaluationInputError(
                f"{out} exists and is not a sweep directory; choose another --out (or --overwrite one "
                "written by hirm)."
            )
    elif read_json(out / MANIFEST, "a sweep manifest").get("settings_key") != key:
        raise EvaluationInputError(
            f"{out} holds a sweep with other settings; pass --overwrite to start again or choose another --out."
        )
    write_marker(out, "sweep", files=SWEEP_FILES, dirs=["concepts"])
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


def append_record(out: Path, record: Mapping[str, Any]) -> None:
    """One JSON line in ``results.jsonl``, durably, always starting on a fresh line."""
    append_line(out / LINES, json.dumps(json.loads(dump_json(record))))


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
    if erase_fn is None:
        check_target(target)
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
    if out.exists() and not out.is_dir():
        raise EvaluationInputError(f"{out} is a file; --out of a sweep is a directory.")
    with ExitStack() as stack:  # the main process holds out/.hirm-lock for the whole run
        if state.is_main_process:
            stack.enter_context(directory_lock(out, "hirm sweep"))
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
        pending = [(n, canvas.domain(n)) for n in names if n not in done]
        if pending and hasattr(erase, "prepare"):  # an erase_fn that erases several concepts at once
            erase.prepare(pending)
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
                    out,
                    name,
                    record.pop("_result"),
                    record.pop("_images"),
                    record.pop("_patch"),
                    save_patches,
                )
                append_record(out, record)
                records = _present(out, names)
                write_table(out, records)
                _write_manifest(out, header, records, names, baseline_s=baseline_s)
            else:
                for k in ("_result", "_images", "_patch"):
                    record.pop(k)
            state.wait_for_everyone()
        return json.loads((out / MANIFEST).read_text()) if state.is_main_process else header


def _present(out: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The records in ``results.jsonl`` of the concepts in ``names`` (in that order, the last of each)."""
    latest = {r["concept"]: r for r in read_records(out)[0]}
    return [latest[n] for n in names if n in latest]


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
    erase_s = erase_seconds(patch, time.perf_counter() - start)
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
    with atomic_path(out / "concepts" / name, overwrite=True, directory=True, kind="sweep-concept") as tmp:
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


def merge_sweeps(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Merge sweeps of the same settings over disjoint concepts (e.g. parallel processes, one per
    concept group) into a new sweep directory ``out``; returns ``out``.

    The parts must share method, target and settings (``settings_key``) and must not share a concept.
    Concepts keep the parts' order (each part's declared list, parts in the order given), so the
    merged table matches one run over all of them: each concept's figures do not depend on the others
    (per-image seeds). ``out`` must not exist or be empty; the parts are only read. A part's
    unfinished concepts stay unfinished (``complete: false``). The manifest's ``meta.machine`` lists
    every machine the parts ran on.
    """
    return write_merge(plan_merge(parts), out)


def plan_merge(parts: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Read and check the parts of :func:`merge_sweeps` (nothing is written): the merged header, the
    records in order, the part each concept comes from and the parts' original-grid seconds."""
    parts = [Path(p) for p in parts]
    if not parts:
        raise EvaluationInputError("Give at least one sweep directory to merge.")
    read = [read_sweep(p) for p in parts]
    first = read[0][0]
    for part, (manifest, _) in zip(parts, read):
        for key in ("settings_key", "method", "target"):
            if manifest.get(key) != first.get(key):
                raise EvaluationInputError(
                    f"{part} was run with another {key.replace('_', ' ')} than {parts[0]}; "
                    "merge only parts of one sweep command."
                )
    names: list[str] = []
    records: dict[str, dict[str, Any]] = {}
    source: dict[str, Path] = {}
    for part, (manifest, recs) in zip(parts, read):
        for name in [*manifest.get("concepts", []), *(r["concept"] for r in recs)]:
            if name in source and source[name] != part:
                raise EvaluationInputError(
                    f"{name} is in both {source[name]} and {part}; merge parts with disjoint concepts."
                )
            source[name] = part
            if name not in names:
                names.append(name)
        records.update({r["concept"]: r for r in recs})
    domains = {m.get("domain") for m, _ in read}
    machines = list(dict.fromkeys(str((m.get("meta") or {}).get("machine", "")) for m, _ in read))
    meta = {**(first.get("meta") or {}), "machine": "; ".join(x for x in machines if x)}
    meta["merged_from"] = [str(p) for p in parts]
    meta["commands"] = [(m.get("meta") or {}).get("command") for m, _ in read]
    header = {
        "kind": "sweep",
        "settings_key": first["settings_key"],
        "method": first.get("method"),
        "method_config": first.get("method_config"),
        "target": first.get("target"),
        "domain": domains.pop() if len(domains) == 1 else "all",
        "concepts": names,
        "meta": meta,
    }
    original = [(m.get("times") or {}).get("original") for m, _ in read]
    return {
        "header": header,
        "records": [records[n] for n in names if n in records],
        "source": source,
        "original_s": sum(original) if all(t is not None for t in original) else None,
    }


def write_merge(plan: Mapping[str, Any], out: str | os.PathLike) -> Path:
    """Write a :func:`plan_merge` plan as the sweep directory ``out`` (new or empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvaluationInputError(f"{out} exists and is not empty; merge into a new directory.")
    with directory_lock(out, "hirm merge"):
        if any(p.name != LOCK for p in out.iterdir()):  # written to between the check and the lock
            raise EvaluationInputError(f"{out} is not empty; merge into a new directory.")
        write_marker(out, "sweep", files=SWEEP_FILES, dirs=["concepts"])
        for r in plan["records"]:
            concept_dir = plan["source"][r["concept"]] / "concepts" / r["concept"]
            if concept_dir.is_dir():
                shutil.copytree(concept_dir, out / "concepts" / r["concept"])
            append_record(out, r)
        write_table(out, plan["records"])
        header = plan["header"]
        _write_manifest(out, header, plan["records"], header["concepts"], baseline_s=plan["original_s"])
    return out


def read_sweep(out: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and the per-concept records of a sweep directory; ``complete``, ``finished`` and the
    aggregates are recomputed from the records actually present (``torn_lines``: skipped lines)."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise EvaluationInputError(f"{out} is not a sweep directory (no {MANIFEST}).")
    manifest = read_json(out / MANIFEST, "a sweep manifest")
    records, torn = read_records(out)
    key = manifest.get("settings_key")
    records = [r for r in records if r.get("settings_key", key) == key]
    finished = [r["concept"] for r in records]
    manifest.update(
        complete=set(finished) >= set(manifest.get("concepts", [])),
        finished=finished,
        aggregate=aggregate(records, "summary"),
        aggregate_original=aggregate(records, "baseline"),
        torn_lines=torn,
    )
    return manifest, records


__all__ = [
    "run_sweep",
    "read_sweep",
    "merge_sweeps",
    "plan_merge",
    "write_merge",
    "aggregate",
    "summary_metrics",
]
