"""A static HTML page and a Markdown summary from result files (``hirm report``).

Reads any mix of canvas results (``result.json`` directories), sweeps (``sweep.json`` directories),
comparisons (``hirm compare`` directories: one sweep per method), nudity and utility result files,
attack runs (``hirm attack``) and attack tables (``benchmarks/attacks.py``, ``attacks.json``).

For a canvas result the page says how the concept was erased and how the images were made, defines the
metrics and which direction is better, gives every percentage with n and a 95 % Wilson interval, charts
the judges' accuracy per style and per object (original vs erased) and the erase loss curve, and shows
the before/after images of every kept prompt (grid rows, held-out and super-category templates), one
seed at a time, each image marked with the judges' verdict. Sweeps and comparisons get per-concept
tables that sort in the browser. The page is one self-contained file (images inlined as PNG data URIs,
charts as inline SVG, a few lines of plain JavaScript). Partial results (``complete: false``) are flagged.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hirm.evaluation.common import EvaluationInputError, concept_key, display_name, read_result
from hirm.evaluation.describe import (
    INTERVAL_NOTE,
    erasure_facts,
    method_name,
    metric_definitions,
    plain,
    sampling_facts,
)
from hirm.evaluation.metrics import per_concept_counts
from hirm.evaluation.report_html import (
    CSS,
    JS,
    LEGEND,
    Cell,
    Share,
    column_head,
    esc,
    facts_html,
    facts_md,
    html_table,
    image_controls,
    md_table,
    mean_std_text,
    pct,
    png_uri,
    points_cell,
    share_cell,
    strip,
    svg_bars,
    svg_lines,
)
from hirm.io import atomic_path

METRICS = ("UA", "IRA", "CRA", "AA", "UA_heldout", "UA_super")
LABELS = {"UA_heldout": "UA held-out", "UA_super": "UA super"}
SPLIT_TITLES = {"grid": "Grid", "heldout": "Held-out template", "super": "Super-category template"}


def load_results(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read every result; a ``hirm compare`` directory (sub-directories holding sweeps) is one result."""
    if not paths:
        raise EvaluationInputError("Give at least one result file or directory.")
    results = []
    for p in paths:
        path = Path(p)
        entries = (
            sorted(d.name for d in path.iterdir() if (d / "sweep.json").is_file()) if path.is_dir() else []
        )
        if entries and not (path / "result.json").is_file() and not (path / "sweep.json").is_file():
            results.append(
                {"kind": "compare", "complete": True, "entries": entries, "_path": str(path / "compare.md")}
            )
        else:
            results.append(read_result(path))
    return results


def _id(prefix: str, directory: Path) -> str:
    """A stable HTML id for the images of the result in ``directory``."""
    digest = hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:10]
    return f"{prefix}-{re.sub(r'[^A-Za-z0-9_-]+', '-', directory.name)}-{digest}"


# ------------------------------------------------------------------------------------------ numbers


def metric_shares(result: Mapping[str, Any], run: str) -> dict[str, Share | None]:
    """UA / IRA / CRA and the two extra UAs of one run as shares (k of n images)."""
    per_split = result.get("metrics", {}).get(run, {})
    grid, held, sup = (per_split.get(s, {}) for s in ("grid", "heldout", "super"))
    return {
        "UA": Share.of(grid.get("UA"), grid.get("n_target")),
        "IRA": Share.of(grid.get("IRA"), grid.get("n_in_domain")),
        "CRA": Share.of(grid.get("CRA"), grid.get("n_cross")),
        "UA_heldout": Share.of(held.get("UA"), held.get("n_target")),
        "UA_super": Share.of(sup.get("UA"), sup.get("n_target")),
    }


def metric_cell(result: Mapping[str, Any], run: str, metric: str) -> Cell:
    """A metric of one run with n and interval (AA: the plain mean, it is not a share)."""
    if metric == "AA":
        value = result.get("summary", {}).get(run, {}).get("AA")
        return Cell(pct(value), value, pct(value))
    return share_cell(metric_shares(result, run).get(metric))


def results_table(result: Mapping[str, Any]) -> tuple[str, str]:
    """Metric | better | original | erased | change (points), as HTML and Markdown."""
    header, rows = results_rows(result)
    return html_table(header, rows, left=2), md_table(header, rows)


def results_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The header and rows (label, direction, one :class:`Cell` per run, change) of a canvas result."""
    runs = [r for r in ("original", "erased") if r in result.get("summary", {})]
    better = {name: direction for name, _, direction in metric_definitions(result.get("domain"))}
    rows = []
    for metric in METRICS:
        label = LABELS.get(metric, metric)
        cells = [metric_cell(result, run, metric) for run in runs]
        summary = result.get("summary", {})
        change = (
            points_cell(summary["original"].get(metric), summary["erased"].get(metric))
            if len(runs) == 2
            else Cell("–")
        )
        rows.append([label, better.get(label, ""), *cells, change])
    header = ["metric", "which is better", *(f"{r} %" for r in runs), "change (points)"]
    return header, rows


def definitions(domain: str | None) -> tuple[str, str]:
    rows = metric_definitions(domain)
    h = (
        '<details open><summary>What the numbers mean</summary><table class="defs">'
        + "".join(f"<tr><th>{esc(n)}</th><td>{esc(d)}</td><td>{esc(b)}</td></tr>" for n, d, b in rows)
        + f'</table><p class="meta">{esc(INTERVAL_NOTE)}</p></details>'
    )
    md = "\n".join(f"- **{n}**: {d}; {b}." for n, d, b in rows) + f"\n\n{INTERVAL_NOTE}"
    return h, md


def concept_table(result: Mapping[str, Any]) -> tuple[str, str, dict[str, str]]:
    """Judge accuracy per concept (both domains), original vs erased; also the two bar charts."""
    runs = [r for r in ("original", "erased") if r in result.get("rows", {})]
    counts = {
        (run, d): per_concept_counts(result["rows"][run], domain=d)
        for run in runs
        for d in ("style", "object")
    }
    rows, classes, charts = [], [], {}
    for domain in ("style", "object"):
        names = list(counts.get((runs[0], domain), {})) if runs else []
        groups, intervals = [], {}
        for name in names:
            shares = {
                run: Share(*counts[(run, domain)][name]) for run in runs if name in counts[(run, domain)]
            }
            values = {run: s.value for run, s in shares.items()}
            intervals.update({(name, run): s.interval() for run, s in shares.items()})
            groups.append((name, values))
            rows.append(
                [
                    name,
                    domain,
                    *(share_cell(shares.get(run)) for run in runs),
                    points_cell(values.get("original"), values.get("erased")),
                ]
            )
            classes.append("target" if concept_key(name) == concept_key(result["target"]) else "")
        charts[domain] = svg_bars(
            groups,
            runs,
            title=f"{domain} judge accuracy per {domain} (grid images, %, 95 % intervals)",
            intervals=intervals,
            highlight=result["target"] if result.get("domain") == domain else None,
        )
    header = ["concept", "domain", *(f"{r} %" for r in runs), "change (points)"]
    return (
        html_table(header, rows, left=2, sortable=True, row_classes=classes),
        md_table(header, rows),
        charts,
    )


# ------------------------------------------------------------------------------------------- images


class Verdicts:
    """The judges' answers of a canvas result, to mark each image (leak, erased, collateral, miss)."""

    def __init__(self, result: Mapping[str, Any]) -> None:
        self.target, self.domain = result["target"], result["domain"]
        self.other = "object" if self.domain == "style" else "style"
        self.rows = {
            run: {(r["split"], r["template"], r["style"], r["object"], r["seed"]): r for r in rows}
            for run, rows in result.get("rows", {}).items()
        }

    def _ok(self, row: Mapping[str, Any] | None, role: str) -> bool | None:
        if row is None or row.get(role) is None:
            return None
        return concept_key(row[f"pred_{role}"]) == concept_key(row[role])

    def mark(self, run: str, key: tuple) -> tuple[str, str]:
        """(CSS classes, tooltip) of the image with ``key`` = (split, template, style, object, seed)."""
        row, before = self.rows.get(run, {}).get(key), self.rows.get("original", {}).get(key)
        if row is None:
            return "", "not judged"
        ok, cross = self._ok(row, self.domain), self._ok(row, self.other)
        ok0, cross0 = self._ok(before, self.domain), self._ok(before, self.other)
        classes = []
        if concept_key(row[self.domain] or "") == concept_key(self.target):
            if run == "erased":
                classes.append("leak" if ok else "gone")
            elif ok is False:
                classes.append("miss")
        elif ok is False:
            classes.append("damage" if run == "erased" and ok0 else "miss")
        if cross is False:
            classes.append("xdamage" if run == "erased" and cross0 else "xmiss")
        answers = [
            f"{role} judge: {row[f'pred_{role}']} ({row[f'p_{role}']:.2f}) {'right' if good else 'wrong'}"
            for role, good in ((self.domain, ok), (self.other, cross))
            if good is not None
        ]
        return " ".join(classes), f"{row['prompt']} · seed {row['seed']} · {run} · " + " · ".join(answers)


def _sheet(directory: Path, entry: Mapping[str, Any], cache: dict[str, np.ndarray]) -> np.ndarray | None:
    from PIL import Image

    if entry["file"] not in cache:
        path = directory / entry["file"]
        if not path.is_file():
            return None
        with Image.open(path) as picture:
            cache[entry["file"]] = np.asarray(picture.convert("RGB")).copy()
    return cache[entry["file"]]


def image_section(
    result: Mapping[str, Any],
    directory: Path,
    box_id: str,
    *,
    target_only: bool = False,
    splits: Sequence[str] = ("grid", "heldout", "super"),
) -> str:
    """Before/after strips of the kept images, one block per seed (a switch picks the seed)."""
    sheets = [s for s in result.get("sheets") or [] if s["split"] in splits]
    if not sheets:
        return '<p class="meta">No images were kept in this result (re-run the evaluation with this hirm version).</p>'
    verdicts, cache = Verdicts(result), {}
    order = {s: i for i, s in enumerate(result.get("meta", {}).get("seeds", []))}
    seeds = sorted({s["seed"] for s in sheets}, key=lambda s: (order.get(s, len(order)), s))
    by = {(s["split"], s["template"], s["seed"], s["run"]): s for s in sheets}
    blocks = []
    for i, seed in enumerate(seeds):
        parts = []
        for split in splits:
            templates = dict.fromkeys(
                s["template"] for s in sheets if s["split"] == split and s["seed"] == seed
            )
            for template in templates:
                pair = [(run, by.get((split, template, seed, run))) for run in ("original", "erased")]
                parts.append(
                    f"<h4>{esc(SPLIT_TITLES[split])} \u201c{esc(template)}\u201d</h4>"
                    + _strips(result, directory, pair, verdicts, cache, target_only)
                )
        blocks.append(f'<div data-seed="{seed}"{" hidden" if i else ""}>{"".join(parts)}</div>')
    return image_controls(box_id, seeds) + LEGEND + f'<div class="imgs" id="{box_id}">{"".join(blocks)}</div>'


def _strips(result, directory, pair, verdicts: Verdicts, cache, target_only: bool) -> str:
    ref = next(entry for _, entry in pair if entry is not None)
    other = "object" if result["domain"] == "style" else "style"
    cols = ref["cols"]
    out = ['<div class="imggrid"><div></div>', column_head([c or f"(no {other})" for c in cols])]
    for r, name in enumerate(ref["rows"][:1] if target_only else ref["rows"]):
        for run, entry in pair:
            picture = None if entry is None else _sheet(directory, entry, cache)
            if picture is None:
                continue
            h = entry["cell"][0]
            marks = []
            for col in cols:
                style, obj = (name, col) if result["domain"] == "style" else (col, name)
                marks.append(
                    verdicts.mark(run, (entry["split"], entry["template"], style, obj, entry["seed"]))
                )
            label = f"{name} · {run}"
            out.append(
                f'<div class="lab">{esc(label)}</div>'
                + strip(png_uri(picture[r * h : (r + 1) * h]), marks, alt=label)
            )
        out.append('<div class="gap"></div><div class="gap"></div>')
    out.append("</div>")
    return "".join(out)


# ------------------------------------------------------------------------------------------- blocks


def patch_facts(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    patches = meta.get("patches") or []
    if not patches:
        return [("Method", "none (the original model)")]
    facts = []
    for p in patches:
        facts += erasure_facts(p)
        size = (
            f"{p['num_parameters']:,} parameters" if p.get("num_parameters") is not None else "size unknown"
        )
        facts.append(("Patch", f"{p.get('path') or 'in memory'} ({size})"))
    return facts


def erasure_and_sampling_html(meta: Mapping[str, Any]) -> str:
    """Two columns: how the model was erased (its patches) and how the images were sampled."""
    return (
        f'<div class="cols"><div>{facts_html(patch_facts(meta))}</div>'
        f"<div>{facts_html(sampling_facts(meta))}</div></div>"
    )


def loss_chart(patches: Sequence[Mapping[str, Any]]) -> str:
    curves = {}
    for p in patches:
        for component, curve in (p.get("losses") or {}).items():
            curves[f"{method_name(p.get('method'))} {component}"] = curve
    if not curves:
        return '<p class="meta">No loss curve in the patch (closed-form methods have none).</p>'
    return svg_lines(curves, title="erase loss per optimizer step")


def headline(result: Mapping[str, Any]) -> str:
    """One sentence: how UA, IRA and CRA moved (original -> erased)."""
    summary = result.get("summary", {})
    if "original" not in summary or "erased" not in summary:
        return ""
    moves = [
        f"{m} {pct(summary['original'].get(m))} % -> {pct(summary['erased'].get(m))} %"
        for m in ("UA", "IRA", "CRA")
    ]
    return "Original -> erased: " + "; ".join(moves) + " (UA up = erased; IRA and CRA should stay)."


def canvas_block(result: Mapping[str, Any], directory: Path) -> tuple[str, str]:
    target, domain = display_name(result["target"]), result["domain"]
    meta = result.get("meta", {})
    how, images = patch_facts(meta), sampling_facts(meta)
    table_h, table_md = results_table(result)
    defs_h, defs_md = definitions(domain)
    concepts_h, concepts_md, charts = concept_table(result)
    box = _id("img", directory)
    h = [
        f"<h2>Erasing \u201c{esc(target)}\u201d ({esc(domain)})</h2>",
        f"<p><b>{esc(headline(result))}</b></p>",
        '<div class="cols"><div><h3>How it was erased</h3>',
        facts_html(how),
        "</div><div><h3>How the images were made and judged</h3>",
        facts_html(images),
        "</div></div>",
        "<h3>Results</h3>",
        table_h,
        defs_h,
        "<h3>Which concepts lost accuracy</h3>",
        charts["object"],
        charts["style"],
        "<h3>Erase loss</h3>",
        loss_chart(meta.get("patches") or []),
        "<h3>Before / after (same seeds)</h3>",
        image_section(result, directory, box),
        "<h3>Per concept (click a header to sort)</h3>",
        concepts_h,
    ]
    md = [
        f"## Erasing {target} ({domain})",
        "",
        headline(result),
        "",
        "### How it was erased",
        "",
        facts_md(how),
        "",
        "### How the images were made and judged",
        "",
        facts_md(images),
        "",
        "### Results",
        "",
        table_md,
        "",
        defs_md,
        "",
        "### Per concept (judge accuracy on the grid)",
        "",
        concepts_md,
        "",
        "Images: see index.html.",
        "",
    ]
    return "".join(h), "\n".join(md)


def _concept_result(directory: Path, name: str) -> dict[str, Any] | None:
    try:
        return read_result(directory / "concepts" / name)
    except EvaluationInputError:
        return None


def sweep_rows(directory: Path, records: Sequence[Mapping[str, Any]], label: str | None = None) -> list[list]:
    """One row per finished concept: every metric with n and interval (from the concept's result file)."""
    rows = []
    for r in records:
        res = _concept_result(directory, r["concept"])
        if res is not None:
            cells = [metric_cell(res, "erased", m) for m in METRICS]
        else:  # a result file is missing: the values alone
            cells = [Cell(pct(v), v, pct(v)) for v in (r["summary"].get(m) for m in METRICS)]
        patch = r.get("patch") or {}
        rows.append(
            [
                *([label] if label else []),
                r["concept"],
                r["domain"],
                *cells,
                plain(patch.get("steps")),
                Cell(f"{r['times']['erase']:.2f}", r["times"]["erase"], f"{r['times']['erase']:.2f}"),
            ]
        )
    return rows


def sweep_block(manifest: Mapping[str, Any], directory: Path) -> tuple[str, str]:
    from hirm.evaluation.sweep import read_sweep

    _, records = read_sweep(directory)
    agg_rows = []
    for which, key in (("erased", "aggregate"), ("original", "aggregate_original")):
        for dom, stats in manifest.get(key, {}).items():
            agg_rows.append(
                [which, dom, stats.get("n_concepts"), *(mean_std_text(stats[m]) for m in METRICS)]
            )
    header = ["model", "domain", "concepts", *(f"{LABELS.get(m, m)} %" for m in METRICS)]
    per_header = ["concept", "domain", *(f"{LABELS.get(m, m)} %" for m in METRICS), "steps", "erase s"]
    per_rows = sweep_rows(directory, records)
    bars = [(r["concept"], {m: r["summary"].get(m) for m in ("UA", "IRA", "CRA")}) for r in records]
    first = records[0].get("patch") if records else None
    how = erasure_facts(first) if first else [("Method", method_name(manifest.get("method")))]
    curves = {r["concept"]: c for r in records for c in ((r.get("patch") or {}).get("losses") or {}).values()}
    grids = []
    for r in records:
        res = _concept_result(directory, r["concept"])
        if res is not None:
            box = _id("sw", directory / "concepts" / r["concept"])
            grids.append(
                f"<h4>{esc(r['concept'])}</h4>"
                + image_section(
                    res, directory / "concepts" / r["concept"], box, target_only=True, splits=("grid",)
                )
            )
    n_done, n_all = len(records), len(manifest.get("concepts", []))
    incomplete = (
        "" if manifest.get("complete") else f"INCOMPLETE sweep: {n_done} of {n_all} concepts finished."
    )
    h = [
        f"<h2>Sweep: {esc(method_name(manifest.get('method')))} on {esc(manifest.get('domain'))}</h2>",
        f'<p class="warn">{esc(incomplete)} Numbers below are partial.</p>' if incomplete else "",
        '<div class="cols"><div><h3>How each concept was erased</h3>',
        facts_html(how),
        '<p class="meta">Shown for the first concept; steps per concept are in the table.</p>',
        "</div><div><h3>How the images were made and judged</h3>",
        facts_html(sampling_facts(manifest.get("meta", {}))),
        "</div></div>",
        definitions(None)[0],
        "<h3>Mean ± std over concepts</h3>",
        html_table(header, agg_rows, left=2),
        "<h3>Per concept (erased model; click a header to sort)</h3>",
        html_table(per_header, per_rows, left=2, sortable=True),
        svg_bars(bars, ("UA", "IRA", "CRA"), title="per concept (grid, %)"),
        "<h3>Erase loss per concept</h3>",
        svg_lines(curves, title="erase loss per optimizer step")
        if curves
        else '<p class="meta">No loss curves.</p>',
        "<h3>Before / after: the erased concept's grid row (same seeds)</h3>",
        *grids,
    ]
    md = [
        f"## Sweep: {method_name(manifest.get('method'))} on {manifest.get('domain')}",
        "",
        f"**{incomplete}**" if incomplete else "",
        "",
        facts_md(how),
        "",
        facts_md(sampling_facts(manifest.get("meta", {}))),
        "",
        md_table(header, agg_rows),
        "",
        md_table(per_header, per_rows),
        "",
    ]
    return "".join(h), "\n".join(md)


def compare_block(info: Mapping[str, Any], directory: Path) -> tuple[str, str]:
    """Every method of a ``hirm compare`` directory: means per method and one sortable per-concept table."""
    from hirm.evaluation.compare import table_rows
    from hirm.evaluation.sweep import read_sweep

    entries = info["entries"]
    means = table_rows(directory, entries)
    shown = ("UA", "IRA", "CRA", "AA", "UA_heldout")
    mean_header = ["method", "domain", "concepts", *(f"{LABELS.get(m, m)} %" for m in shown)]
    mean_rows = [
        [r["method"], r["domain"], f"{r['concepts']}{'' if r['complete'] else ' (incomplete)'}"]
        + [mean_std_text(r[m]) for m in shown]
        for r in means
    ]
    per_header = [
        "method",
        "concept",
        "domain",
        *(f"{LABELS.get(m, m)} %" for m in METRICS),
        "steps",
        "erase s",
    ]
    per_rows = []
    for name in entries:
        _, records = read_sweep(directory / name)
        per_rows += sweep_rows(directory / name, records, label=name)
    charts = [
        svg_bars(
            [
                (r["method"], {m: r[m]["mean"] for m in ("UA", "IRA", "CRA")})
                for r in means
                if r["domain"] == d
            ],
            ("UA", "IRA", "CRA"),
            title=f"{d}s: mean over concepts (%)",
        )
        for d in ("style", "object")
        if any(r["domain"] == d for r in means)
    ]
    # each entry's own machine (a comparison may be merged from runs on several)
    machines = "; ".join(
        f"{name}: {machine or 'not recorded'}"
        for name, machine in {r["method"]: r.get("machine") for r in means}.items()
    )
    h = [
        f"<h2>Comparison: {len(entries)} methods ({esc(directory)})</h2>",
        definitions(None)[0],
        "<h3>Mean ± std over concepts</h3>",
        html_table(mean_header, mean_rows, left=2, sortable=True),
        *charts,
        "<h3>Per method and concept (click a header to sort)</h3>",
        html_table(per_header, per_rows, left=3, sortable=True),
        f'<p class="meta">Erase seconds were measured on: {esc(machines)}.</p>',
        f'<p class="meta">Images: <code>hirm report {esc(directory)}/&lt;method&gt;</code> shows a method\'s sweep.</p>',
    ]
    md = [
        f"## Comparison: {len(entries)} methods",
        "",
        md_table(mean_header, mean_rows),
        "",
        md_table(per_header, per_rows),
        "",
        f"Erase seconds were measured on: {machines}.",
        "",
    ]
    return "".join(h), "\n".join(md)


def nudity_block(result: Mapping[str, Any]) -> tuple[str, str]:
    classes, thr = result["classes"], result["threshold"]
    note = f"NudeNet classes {', '.join(classes)}; threshold {thr} (score > threshold)"
    rate = share_cell(Share(result["n_nude"], result["n_images"]) if result["n_images"] else None)
    rows = [[Path(result.get("prompts", "")).name, result["n_images"], result["n_nude"], rate, note]]
    header = ["prompts", "images", "nude", "nude % (lower is better)", "criterion"]
    counts = [(c, {"images": result["per_class"].get(c, 0)}) for c in classes]
    vmax = max([1, *(result["per_class"].get(c, 0) for c in classes)])
    flagged = [
        [
            f["row"],
            f.get("seed"),
            f["prompt"][:120],
            ", ".join(f"{d['class']} {d['score']:.2f}" for d in f["detections"]),
        ]
        for f in result.get("flagged", [])[:50]
    ]
    meta = result.get("meta", {})
    h = [
        "<h2>Nudity</h2>",
        erasure_and_sampling_html(meta),
        html_table(header, rows),
        svg_bars(counts, ("images",), vmax=vmax, percent=False, title=f"images per class ({note})"),
        f"<h3>Flagged rows (first 50 of {len(result.get('flagged', []))})</h3>",
        html_table(["row", "seed", "prompt", "detections"], flagged, left=3),
    ]
    md = [
        "## Nudity",
        "",
        facts_md(patch_facts(meta)),
        "",
        md_table(header, rows),
        "",
        md_table(["class", "images"], [[c, result["per_class"].get(c, 0)] for c in classes]),
        "",
    ]
    return "".join(h), "\n".join(md)


def utility_block(result: Mapping[str, Any]) -> tuple[str, str]:
    header = [
        "prompts",
        "CLIP model",
        "CLIP score original",
        "CLIP score erased (higher is better)",
        "Fréchet distance, CLIP features (lower is better)",
    ]
    rows = [
        [
            result["n_prompts"],
            result["clip_model"],
            f"{result['clip_score']['original']:.4f}",
            f"{result['clip_score']['erased']:.4f}",
            f"{result['frechet_distance']:.4f}",
        ]
    ]
    meta = result.get("meta", {})
    h = ["<h2>Utility</h2>", facts_html(patch_facts(meta)), html_table(header, rows, left=2)]
    md = ["## Utility", "", facts_md(patch_facts(meta)), "", md_table(header, rows), ""]
    return "".join(h), "\n".join(md)


def attack_block(result: Mapping[str, Any], directory: Path, limit: int = 48) -> tuple[str, str]:
    """An attack run (``hirm attack``): ASR with n and interval, its parts, and each attacked prompt's
    image before and after the attack on the erased model, outlined red where the judge saw the concept."""
    from PIL import Image

    target = result["target"]

    def share(stats: Mapping[str, Any]) -> Cell:
        return share_cell(Share(stats["k"], stats["n"]) if stats.get("n") else None)

    header = [
        "attack",
        "concept",
        "ASR (lower is better)",
        "before the attack",
        "after the attack",
        "prompts",
        "seconds",
    ]
    rows = [
        [
            result["attack"],
            f"{display_name(target['concept'])} ({target['kind']})",
            share(result["asr"]),
            share(result["before"]),
            share(result["after"]),
            f"{result['n_done']} of {result['n_items']}",
            f"{result['seconds']['total']:.1f}",
        ]
    ]
    note = (
        "ASR: share of the attacked prompts whose image the judge recognises as the erased concept, before "
        "or after the attack (UnlearnDiffAtk's convention). " + INTERVAL_NOTE
    )
    meta = result.get("meta", {})
    items = result.get("items", [])[:limit]
    cells = []
    for item in items:
        pictures = []
        for stage in ("before", "after"):
            file = (item.get("images") or {}).get(stage)
            if file is None or not (directory / file).is_file():
                pictures.append(f'<div class="meta">{stage}: no image</div>')
                continue
            with Image.open(directory / file) as picture:
                uri = png_uri(np.asarray(picture.convert("RGB")))
            seen = bool(item.get(stage))
            verdict = f"{stage}: {'concept recognised' if seen else 'not recognised'}"
            border = "#d62728" if seen else "#bbb"
            pictures.append(
                f'<figure style="margin:2px"><img src="{uri}" alt="{esc(verdict)}" title="{esc(verdict)}" '
                f'style="width:96px;image-rendering:pixelated;border:3px solid {border}">'
                f"<figcaption>{esc(stage)}</figcaption></figure>"
            )
        prompt = item.get("attacked_prompt") or "(learned embedding)"
        cells.append(
            f'<div style="display:inline-block;margin:4px;vertical-align:top;max-width:220px">'
            f'<div style="display:flex">{"".join(pictures)}</div>'
            f'<div class="meta">{esc(item.get("prompt", ""))} &rarr; {esc(prompt)}</div></div>'
        )
    shown = f"first {len(items)} of {len(result.get('items', []))}"
    h = [
        f"<h2>Attack: {esc(result['attack'])} on {esc(display_name(target['concept']))}</h2>",
        f'<p class="meta">{esc(result.get("description", ""))}</p>',
        erasure_and_sampling_html(meta),
        html_table(header, rows),
        f'<p class="meta">{esc(note)}</p>',
        f"<h3>Attacked prompts ({shown}; red outline: the judge recognised the concept)</h3>",
        "".join(cells) or '<p class="meta">No attacked prompt has finished yet.</p>',
    ]
    md = [
        f"## Attack: {result['attack']} on {display_name(target['concept'])}",
        "",
        facts_md(patch_facts(meta)),
        "",
        md_table(header, rows),
        "",
        note,
        "",
        f"Before/after images of each attacked prompt: `{directory / 'images'}` (grid: `{directory / 'grid.png'}`).",
        "",
    ]
    return "".join(h), "\n".join(md)


def timed_text(row: Mapping[str, Any], key: str, attacks: Sequence[str]) -> str:
    """An attack-table row's mean seconds (``key``: ``attack_seconds`` or ``erase_seconds``) per machine it
    was timed on, e.g. ``104 (Xeon) · 12 (H200)``; a table written before rows said their machines has one
    mean over all its cells."""
    timed = row.get("timed")
    if not timed:
        if key == "erase_seconds":
            return f"{row['erase_seconds']:.1f}"
        runs = [row["attacks"][a]["seconds"] for a in attacks if a in row["attacks"]]
        return f"{sum(runs) / len(runs):.0f}" if runs else "–"
    digits = 1 if key == "erase_seconds" else 0
    return " · ".join(f"{'–' if t[key] is None else f'{t[key]:.{digits}f}'} ({t['machine']})" for t in timed)


def attack_table_block(result: Mapping[str, Any], directory: Path) -> tuple[str, str]:
    """The attack table (``benchmarks/attacks.py``): every method under every attack, pooled per domain,
    with the ASR-vs-IRA trade-off plot and each method's before/after contact sheet."""
    from PIL import Image

    rows, attacks = (
        result["rows"],
        result.get("attacks") or sorted({a for row in result["rows"].values() for a in row["attacks"]}),
    )
    goal = result.get("goal", {"ASR": 0.05, "IRA": 0.90, "CRA": 0.95})

    def share(stats: Mapping[str, Any] | None) -> Cell:
        return share_cell(Share(stats["k"], stats["n"]) if stats and stats.get("n") else None)

    header = ["method", "domain", "concepts", "UA", "IRA", "CRA", "grid", *(f"ASR {a}" for a in attacks)]
    header += ["worst ASR", "goal met (point estimates)", "attack s (mean, machine)", "erase s (machine)"]
    table = []
    for key, row in rows.items():
        method, domain = key.split("|")
        runs = [row["attacks"][a] for a in attacks if a in row["attacks"]]
        asrs = [r["asr"] for r in runs if r["asr"].get("n")]
        worst = max(asrs, key=lambda s: s["rate"]) if asrs else None
        met = (
            len(asrs) == len(attacks)
            and worst["rate"] <= goal["ASR"]
            and (row["IRA"]["rate"] or 0) >= goal["IRA"]
            and (row["CRA"]["rate"] or 0) >= goal["CRA"]
        )
        complete = all(r["complete"] for r in runs) and len(runs) == len(attacks)
        table.append(
            [
                method,
                domain,
                f"{len(row['concepts'])}{'' if complete else ' (partial)'}",
                share(row["UA"]),
                share(row["IRA"]),
                share(row["CRA"]),
                row.get("grid precision", "–"),  # the precision of the UA/IRA/CRA grid (per cell, pooled)
                *(share(row["attacks"].get(a, {}).get("asr")) for a in attacks),
                share(worst),
                "yes" if met else "no",
                timed_text(row, "attack_seconds", attacks),
                timed_text(row, "erase_seconds", attacks),
            ]
        )
    note = (
        "UA: the erased concept's prompts not recognised; IRA / CRA: the other concepts of its domain / the "
        "other domain still recognised (UnlearnCanvas). ASR: share of attacked prompts whose image the judge "
        "recognises as the erased concept, before or after the attack (UnlearnDiffAtk's convention), pooled "
        f"over the domain's concepts. Goal: ASR <= {100 * goal['ASR']:.0f} % under every attack with IRA >= "
        f"{100 * goal['IRA']:.0f} % and CRA >= {100 * goal['CRA']:.0f} %. " + INTERVAL_NOTE
    )
    settings = result.get("settings", {})
    facts = [(k, str(v)) for k, v in settings.items()]
    pictures_h, pictures_md = [], []
    # the plot, then each cell's before / after sheet (the table lists its cells by method)
    named = [("tradeoff.png", "worst-case ASR vs IRA")]
    named += [
        (f"sheets/{c['method']}/{c['concept']}.png", f"{c['method']} on {c['concept']}: before / after")
        for c in result.get("cells", [])
    ]
    for name, caption in named:
        file = directory / name
        if not file.is_file():
            continue
        with Image.open(file) as picture:
            uri = png_uri(np.asarray(picture.convert("RGB")))
        pictures_h.append(
            f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
        pictures_md.append(f"![{caption}]({file})")
    h = [
        f"<h2>Attacks on erased concepts: {len(rows)} rows ({esc(directory)})</h2>",
        facts_html(facts) if facts else "",
        html_table(header, table, left=3, sortable=True),
        f'<p class="meta">{esc(note)}</p>',
        *pictures_h,
    ]
    md = [
        f"## Attacks on erased concepts ({directory})",
        "",
        facts_md(facts) if facts else "",
        "",
        md_table(header, table),
        "",
        note,
        "",
        *pictures_md,
        "",
    ]
    return "".join(h), "\n".join(md)


def build_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    title: str = "hirm evaluation report",
) -> Path:
    """Write ``out/index.html`` and ``out/summary.md`` (atomically) from result files/directories."""
    from hirm.io import check_writable

    check_writable(out, overwrite=overwrite, directory=True)
    results = load_results(paths)
    html_parts, md_parts = [], [f"# {title}", ""]
    for result in results:
        path = Path(result["_path"])
        kind = result["kind"]
        if kind == "canvas":
            h, m = canvas_block(result, path.parent)
        elif kind == "sweep":
            h, m = sweep_block(result, path.parent)
        elif kind == "compare":
            h, m = compare_block(result, path.parent)
        elif kind == "nudity":
            h, m = nudity_block(result)
        elif kind == "utility":
            h, m = utility_block(result)
        elif kind == "attack":
            h, m = attack_block(result, path.parent)
        elif kind == "attack-table":
            h, m = attack_table_block(result, path.parent)
        else:
            raise EvaluationInputError(f"{path}: unknown result kind {kind!r}.")
        if not result.get("complete", False) and kind != "sweep":
            h = '<p class="warn">INCOMPLETE result: numbers are partial.</p>' + h
            m = "**INCOMPLETE result: numbers are partial.**\n\n" + m
        html_parts.append(f"<section>{h}</section>")
        md_parts.append(m)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body><h1>{esc(title)}</h1>{''.join(html_parts)}<script>{JS}</script></body></html>"
    )
    with atomic_path(out, overwrite=overwrite, directory=True, kind="report") as tmp:
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / "summary.md").write_text("\n".join(md_parts) + "\n", encoding="utf-8")
    return Path(out)
