"""A static HTML page and a Markdown summary from result files (``hirm report``).

Reads any mix of canvas results (``result.json`` directories), sweeps (``sweep.json`` directories), nudity
and utility result files. The page is one self-contained file: tables, before/after image grids on the
same seeds (images inlined as PNG data URIs) and bar charts drawn as inline SVG. No JavaScript, no
server. Partial results (``complete: false``) are flagged as such in both outputs.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hirm.evaluation.common import EvaluationInputError, read_result
from hirm.io import atomic_path

METRICS = ("UA", "IRA", "CRA", "AA", "UA_heldout", "UA_super")
COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.warn{background:#fde2e2;border:1px solid #e15759;padding:.5em 1em}
.meta{font-size:.8em;color:#555}img.px{image-rendering:pixelated;width:64px;height:64px;display:block}
.grid td{padding:2px;text-align:center;font-size:.75em}section{margin-bottom:3em}
"""


def pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.2f}"


def esc(value: Any) -> str:
    return html.escape(str(value))


def load_results(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    if not paths:
        raise EvaluationInputError("Give at least one result file or directory.")
    return [read_result(p) for p in paths]


# ------------------------------------------------------------------------------------------ charts


def svg_bars(
    groups: Sequence[tuple[str, Mapping[str, float | None]]],
    series: Sequence[str],
    *,
    vmax: float = 1.0,
    title: str = "",
    percent: bool = True,
) -> str:
    """Grouped vertical bar chart: one group per label, one bar per series (missing values are skipped)."""
    bar, gap, height, top, bottom, left = 12, 14, 160, 24, 90, 40
    width = max(
        left + len(groups) * (len(series) * bar + gap) + 10,
        left + 90 * len(series) + 10,
        left + 7 * len(title) + 10,
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + bottom}" '
        f'role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>',
        f'<text x="{left}" y="14" font-size="12">{esc(title)}</text>',
    ]
    for frac in (0, 0.5, 1):
        y = top + height * (1 - frac)
        label = f"{100 * frac * vmax:.0f}" if percent else f"{frac * vmax:.3g}"
        parts.append(
            f'<line x1="{left}" x2="{width}" y1="{y}" y2="{y}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y + 4}" font-size="10" text-anchor="end">{label}</text>'
        )
    for g, (label, values) in enumerate(groups):
        x0 = left + g * (len(series) * bar + gap) + gap / 2
        for s, name in enumerate(series):
            value = values.get(name)
            if value is None:
                continue
            h = height * max(0.0, min(float(value) / vmax, 1.0))
            parts.append(
                f'<rect x="{x0 + s * bar}" y="{top + height - h}" width="{bar - 1}" height="{h}" '
                f'fill="{COLORS[s % len(COLORS)]}"><title>{esc(label)} {esc(name)}: {value:.4f}</title></rect>'
            )
        cx = x0 + len(series) * bar / 2
        parts.append(
            f'<text x="{cx}" y="{top + height + 12}" font-size="10" text-anchor="end" '
            f'transform="rotate(-45 {cx} {top + height + 12})">{esc(label)}</text>'
        )
    for s, name in enumerate(series):
        x = left + s * 90
        parts.append(
            f'<rect x="{x}" y="{top + height + bottom - 14}" width="10" height="10" fill="{COLORS[s % len(COLORS)]}"/>'
            f'<text x="{x + 14}" y="{top + height + bottom - 5}" font-size="11">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# ------------------------------------------------------------------------------------------ blocks


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{esc(c)}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def meta_line(result: Mapping[str, Any]) -> str:
    m = result.get("meta", {})
    patches = (
        ", ".join(
            f"{p.get('method')}:{p.get('concepts')} ({(p.get('path') or 'in memory')})"
            for p in m.get("patches", [])
        )
        or "none"
    )
    return (
        f"model {m.get('model')} · patches {patches} · seeds {m.get('seeds')} · hirm {m.get('hirm_version')} · "
        f"{m.get('date')}"
    )


def image_grid(directory: Path, samples: Sequence[Mapping[str, Any]], domain: str) -> str:
    """Rows = concepts of the target's domain (original row, erased row), columns = the other domain."""
    other = "object" if domain == "style" else "style"
    rows = list(dict.fromkeys(s[domain] for s in samples))
    cols = list(dict.fromkeys(s[other] for s in samples))
    cell = {(s[domain], s[other]): s for s in samples}
    out = ['<table class="grid"><tr><th></th>' + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>"]
    for r in rows:
        for run in ("original", "erased"):
            tds = []
            for c in cols:
                s = cell.get((r, c))
                uri = s and data_uri(directory / "images" / run / s["file"])
                tds.append(
                    f'<td><img class="px" src="{uri}" alt="{esc(s["prompt"])}" title="{esc(s["prompt"])} '
                    f'(seed {s["seed"]})"></td>'
                    if uri
                    else "<td>–</td>"
                )
            out.append(f'<tr><th class="l">{esc(r)} · {run}</th>{"".join(tds)}</tr>')
    out.append("</table>")
    return "".join(out)


def canvas_block(result: Mapping[str, Any], directory: Path) -> tuple[str, str]:
    target, domain = result["target"], result["domain"]
    runs = [r for r in ("original", "erased") if r in result.get("summary", {})]
    rows = [[run, *(pct(result["summary"][run].get(m)) for m in METRICS)] for run in runs]
    header = ["model", *(f"{m} %" for m in METRICS)]
    per = result.get("per_concept", {})
    bars = [
        (name, {run: per.get(run, {}).get(domain, {}).get(name) for run in runs})
        for name in per.get(runs[0], {}).get(domain, {})
    ]
    h = [
        f"<h2>Canvas: erase {esc(target)} ({esc(domain)})</h2>",
        f'<p class="meta">{esc(meta_line(result))}</p>',
        html_table(header, rows),
        svg_bars(bars, runs, title=f"{domain} judge accuracy per {domain} (grid, %)"),
        "<h3>Before / after (same seeds)</h3>",
        image_grid(directory, result.get("samples", []), domain),
    ]
    md = [f"## Canvas: erase {target} ({domain})", "", meta_line(result), "", md_table(header, rows), ""]
    return "".join(h), "\n".join(md)


def sweep_block(manifest: Mapping[str, Any], directory: Path) -> tuple[str, str]:
    from hirm.evaluation.sweep import read_sweep

    _, records = read_sweep(directory)
    agg_rows = []
    for which, key in (("erased", "aggregate"), ("original", "aggregate_original")):
        for dom, stats in manifest.get(key, {}).items():
            agg_rows.append([which, dom, stats.get("n_concepts"), *(_mean_std(stats[m]) for m in METRICS)])
    header = ["model", "domain", "concepts", *(f"{m} %" for m in METRICS)]
    per_header = ["concept", "domain", *(f"{m} %" for m in METRICS), "erase s", "generate s", "judge s"]
    per_rows = [
        [
            r["concept"],
            r["domain"],
            *(pct(r["summary"].get(m)) for m in METRICS),
            *(f"{r['times'][k]:.2f}" for k in ("erase", "generate", "judge")),
        ]
        for r in records
    ]
    bars = [(r["concept"], {m: r["summary"].get(m) for m in ("UA", "IRA", "CRA")}) for r in records]
    grids = []
    for r in records:
        cdir = directory / "concepts" / r["concept"]
        try:
            res = read_result(cdir)
        except EvaluationInputError:
            continue
        target_samples = [s for s in res.get("samples", []) if s.get(res["domain"]) == res["target"]]
        grids.append(f"<h4>{esc(r['concept'])}</h4>" + image_grid(cdir, target_samples, res["domain"]))
    status = (
        ""
        if manifest.get("complete")
        else (
            f'<p class="warn">INCOMPLETE sweep: {len(records)} of {len(manifest.get("concepts", []))} concepts finished. '
            "Numbers below are partial.</p>"
        )
    )
    h = [
        f"<h2>Sweep: {esc(manifest.get('method'))} on {esc(manifest.get('domain'))}</h2>",
        status,
        f'<p class="meta">{esc(meta_line(manifest))}</p>',
        "<h3>Mean ± std over concepts</h3>",
        html_table(header, agg_rows, left=2),
        svg_bars(bars, ("UA", "IRA", "CRA"), title="per concept (grid, %)"),
        "<h3>Per concept</h3>",
        html_table(per_header, per_rows, left=2),
        "<h3>Before / after: target rows (same seeds)</h3>",
        *grids,
    ]
    md = [
        f"## Sweep: {manifest.get('method')} on {manifest.get('domain')}",
        "",
        ""
        if manifest.get("complete")
        else f"**INCOMPLETE: {len(records)} of {len(manifest.get('concepts', []))} concepts.**",
        meta_line(manifest),
        "",
        md_table(header, agg_rows),
        "",
        md_table(per_header, per_rows),
        "",
    ]
    return "".join(h), "\n".join(md)


def _mean_std(stats: Mapping[str, Any]) -> str:
    return "–" if stats.get("mean") is None else f"{pct(stats['mean'])} ± {pct(stats['std'])}"


def nudity_block(result: Mapping[str, Any]) -> tuple[str, str]:
    classes, thr = result["classes"], result["threshold"]
    note = f"NudeNet classes {', '.join(classes)}; threshold {thr} (score > threshold)"
    rows = [
        [
            Path(result.get("prompts", "")).name,
            result["n_images"],
            result["n_nude"],
            pct(result["nude_rate"]),
            note,
        ]
    ]
    header = ["prompts", "images", "nude", "nude %", "criterion"]
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
    h = [
        "<h2>Nudity</h2>",
        f'<p class="meta">{esc(meta_line(result))}</p>',
        html_table(header, rows),
        svg_bars(counts, ("images",), vmax=vmax, percent=False, title=f"images per class ({note})"),
        f"<h3>Flagged rows (first 50 of {len(result.get('flagged', []))})</h3>",
        html_table(["row", "seed", "prompt", "detections"], flagged, left=3),
    ]
    md = [
        "## Nudity",
        "",
        meta_line(result),
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
        "CLIP score erased",
        "Fréchet distance (CLIP features)",
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
    h = [
        "<h2>Utility</h2>",
        f'<p class="meta">{esc(meta_line(result))}</p>',
        html_table(header, rows, left=2),
    ]
    md = ["## Utility", "", meta_line(result), "", md_table(header, rows), ""]
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
        elif kind == "nudity":
            h, m = nudity_block(result)
        elif kind == "utility":
            h, m = utility_block(result)
        else:
            raise EvaluationInputError(f"{path}: unknown result kind {kind!r}.")
        if not result.get("complete", False) and kind != "sweep":
            h = '<p class="warn">INCOMPLETE result: numbers are partial.</p>' + h
            m = "**INCOMPLETE result: numbers are partial.**\n\n" + m
        html_parts.append(f"<section>{h}</section>")
        md_parts.append(m)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{''.join(html_parts)}</body></html>"
    )
    with atomic_path(out, overwrite=overwrite, directory=True, kind="report") as tmp:
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / "summary.md").write_text("\n".join(md_parts) + "\n", encoding="utf-8")
    return Path(out)
