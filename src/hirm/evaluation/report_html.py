"""Building blocks of the report page: shares with intervals, tables, inline SVG charts, image strips.

The page is plain HTML with a little CSS and JavaScript inlined (no CDN, no server): a seed switch and a
zoom slider for the image grids, click-to-sort tables, and a check that flags images that failed to load
(it also records ``data-images-loaded`` / ``data-images-broken`` on ``<body>`` for automated checks).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hirm.evaluation.metrics import wilson_interval

COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;color:#222;max-width:1400px;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}td small{color:#666;font-size:.78em;white-space:nowrap}
tr.target td{background:#fff4e5}.warn{background:#fde2e2;border:1px solid #e15759;padding:.5em 1em}
.meta{font-size:.85em;color:#555}section{margin-bottom:3em}h2{border-bottom:2px solid #4e79a7}
table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#aaa}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:.5em 0}
dl.facts dt{font-weight:600}dl.facts dd{margin:0}.cols{display:flex;gap:3em;flex-wrap:wrap}
.defs td,.defs th{text-align:left}.controls{margin:.5em 0;display:flex;gap:1em;align-items:center}
.controls button{border:1px solid #999;background:#fff;padding:2px 8px;cursor:pointer}
.controls button.on{background:#4e79a7;color:#fff}
.imgs{--cell:40px;overflow-x:auto}.imggrid{display:grid;grid-template-columns:max-content max-content;
gap:1px 8px;align-items:center;margin-bottom:1em}.imggrid .lab{font-size:.8em;text-align:right}
.imggrid .gap{height:6px}.strip{position:relative;width:calc(var(--cols)*var(--cell));height:var(--cell)}
.strip img{width:100%;height:100%;image-rendering:pixelated;display:block}
.marks{position:absolute;inset:0;display:grid;grid-template-columns:repeat(var(--cols),1fr)}
.marks i{box-sizing:border-box;position:relative}.marks i.leak{border:3px solid #d62728}
.marks i.gone{border:2px solid #2ca02c}.marks i.damage{border:3px solid #ff7f0e}
.marks i.miss{border:2px dashed #777}
.marks i.xdamage:after,.marks i.xmiss:after{content:"";position:absolute;right:0;top:0;border-style:solid;
border-width:0 11px 11px 0;border-color:transparent #ff7f0e transparent transparent}
.marks i.xmiss:after{border-color:transparent #777 transparent transparent}
.colhead{display:flex;width:calc(var(--cols)*var(--cell))}.colhead span{width:var(--cell);
writing-mode:vertical-rl;transform:rotate(180deg);font-size:.72em;white-space:nowrap;overflow:hidden;
max-height:7em;text-align:left}
.legend span{display:inline-block;width:14px;height:14px;vertical-align:middle;margin:0 4px 0 12px}
"""

JS = """
document.querySelectorAll('.controls[data-for]').forEach(function (bar) {
  var box = document.getElementById(bar.dataset.for);
  bar.querySelectorAll('button[data-seed]').forEach(function (button) {
    button.addEventListener('click', function () {
      box.querySelectorAll('[data-seed]').forEach(function (el) {
        el.hidden = el.dataset.seed !== button.dataset.seed;
      });
      bar.querySelectorAll('button[data-seed]').forEach(function (other) {
        other.classList.toggle('on', other === button);
      });
    });
  });
  bar.querySelectorAll('input[type=range]').forEach(function (range) {
    range.addEventListener('input', function () { box.style.setProperty('--cell', range.value + 'px'); });
  });
});
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], col = th.cellIndex, up = th.dataset.dir !== 'up';
      var key = function (row) {
        var cell = row.cells[col];
        return cell.dataset.v !== undefined ? parseFloat(cell.dataset.v) : cell.textContent.trim();
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x === 'number' && isNaN(x)) { return 1; }
        if (typeof y === 'number' && isNaN(y)) { return -1; }
        var c = typeof x === 'number' ? x - y : String(x).localeCompare(String(y));
        return up ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      th.dataset.dir = up ? 'up' : 'down';
    });
  });
});
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  document.body.dataset.imagesLoaded = String(images.length - broken.length);
  document.body.dataset.imagesBroken = String(broken.length);
  if (broken.length) {
    var note = document.createElement('p');
    note.className = 'warn';
    note.textContent = broken.length + ' of ' + images.length + ' images failed to load.';
    document.body.insertBefore(note, document.body.firstChild);
  }
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


# ------------------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class Share:
    """``k`` of ``n`` images, shown as a percentage with one decimal, n and a 95 % Wilson interval."""

    k: int
    n: int

    @classmethod
    def of(cls, value: float | None, n: int | None) -> Share | None:
        """From a stored proportion and its count (``k = round(value * n)``); ``None`` if undefined."""
        if value is None or not n:
            return None
        return cls(int(round(float(value) * int(n))), int(n))

    @property
    def value(self) -> float:
        return self.k / self.n

    def interval(self) -> tuple[float, float]:
        lo_hi = wilson_interval(self.k, self.n)
        assert lo_hi is not None  # n > 0 by construction
        return lo_hi

    def text(self) -> str:
        lo, hi = self.interval()
        return f"{100 * self.value:.1f} % (n = {self.n}, 95 % CI {100 * lo:.1f}–{100 * hi:.1f})"

    def cell(self) -> Cell:
        lo, hi = self.interval()
        return Cell(
            f"{100 * self.value:.1f}<small> n={self.n} [{100 * lo:.1f}–{100 * hi:.1f}]</small>",
            self.value,
            f"{100 * self.value:.1f} (n={self.n}, {100 * lo:.1f}–{100 * hi:.1f})",
        )


@dataclass(frozen=True)
class Cell:
    """A table cell: its HTML, the value it sorts by, and its Markdown text."""

    html: str
    sort: float | str | None = None
    md: str = ""


def share_cell(share: Share | None) -> Cell:
    return share.cell() if share is not None else Cell("–", None, "–")


def points_cell(before: float | None, after: float | None) -> Cell:
    """The change in percentage points, signed, one decimal."""
    if before is None or after is None:
        return Cell("–", None, "–")
    text = f"{100 * (after - before):+.1f}"
    return Cell(esc(text), after - before, text)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}"


def mean_std_text(stats: Mapping[str, Any]) -> str:
    return "–" if stats.get("mean") is None else f"{pct(stats['mean'])} ± {pct(stats.get('std') or 0.0)}"


# ------------------------------------------------------------------------------------------- tables


def _td(cell: Any, left: bool, tag: str = "td") -> str:
    cls = ' class="l"' if left else ""
    if isinstance(cell, Cell):
        sort = "" if not isinstance(cell.sort, (int, float)) else f' data-v="{cell.sort:.6g}"'
        return f"<{tag}{cls}{sort}>{cell.html}</{tag}>"
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return f'<{tag}{cls} data-v="{cell}">{esc(cell)}</{tag}>'
    return f"<{tag}{cls}>{esc(cell)}</{tag}>"


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    left: int = 1,
    sortable: bool = False,
    row_classes: Sequence[str] | None = None,
) -> str:
    """A table; cells are plain values (escaped) or :class:`Cell`. ``sortable``: click a header to sort."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        f'<tr class="{row_classes[j] if row_classes else ""}">'
        + "".join(_td(c, i < left) for i, c in enumerate(r))
        + "</tr>"
        for j, r in enumerate(rows)
    )
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def text(c: Any) -> str:
        return (c.md if isinstance(c, Cell) else str(c)).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(text(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def facts_html(facts: Sequence[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>"


def facts_md(facts: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"- **{k}:** {v}" for k, v in facts)


# ------------------------------------------------------------------------------------------- charts


def svg_bars(
    groups: Sequence[tuple[str, Mapping[str, float | None]]],
    series: Sequence[str],
    *,
    vmax: float = 1.0,
    title: str = "",
    percent: bool = True,
    intervals: Mapping[tuple[str, str], tuple[float, float]] | None = None,
    highlight: str | None = None,
) -> str:
    """Grouped vertical bars: one group per label, one bar per series (missing values are skipped).

    ``intervals[(label, series)] = (lo, hi)`` draws a whisker; the ``highlight`` label is drawn in red.
    """
    bar, gap, height, top, bottom, left = 12, 14, 160, 24, 100, 40
    width = max(
        left + len(groups) * (len(series) * bar + gap) + 10,
        left + 110 * len(series) + 10,
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

    def scale(v: float) -> float:
        return height * max(0.0, min(float(v) / vmax, 1.0))

    for g, (label, values) in enumerate(groups):
        x0 = left + g * (len(series) * bar + gap) + gap / 2
        for s, name in enumerate(series):
            value = values.get(name)
            if value is None:
                continue
            h = scale(value)
            shown = f"{100 * value:.1f} %" if percent else f"{value:.4g}"
            parts.append(
                f'<rect x="{x0 + s * bar}" y="{top + height - h}" width="{bar - 1}" height="{h}" '
                f'fill="{COLORS[s % len(COLORS)]}"><title>{esc(label)} {esc(name)}: {shown}</title></rect>'
            )
            if intervals and (label, name) in intervals:
                lo, hi = intervals[(label, name)]
                cx = x0 + s * bar + (bar - 1) / 2
                parts.append(
                    f'<line x1="{cx}" x2="{cx}" y1="{top + height - scale(lo)}" y2="{top + height - scale(hi)}" '
                    'stroke="#333" stroke-width="1"/>'
                )
        cx = x0 + len(series) * bar / 2
        style = ' fill="#d62728" font-weight="bold"' if label == highlight else ""
        parts.append(
            f'<text x="{cx}" y="{top + height + 12}" font-size="10" text-anchor="end"{style} '
            f'transform="rotate(-45 {cx} {top + height + 12})">{esc(label)}</text>'
        )
    for s, name in enumerate(series):
        x = left + s * 110
        parts.append(
            f'<rect x="{x}" y="{top + height + bottom - 14}" width="10" height="10" fill="{COLORS[s % len(COLORS)]}"/>'
            f'<text x="{x + 14}" y="{top + height + bottom - 5}" font-size="11">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_lines(curves: Mapping[str, Sequence[float]], *, title: str, xlabel: str = "step") -> str:
    """Line chart of one or more curves sharing the x axis (index = step); y from 0 (or the minimum) up."""
    values = [v for curve in curves.values() for v in curve]
    if not values:
        return ""
    width, height, left, top, bottom = 560, 200, 56, 24, 34
    legend = 16 * len(curves)
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1.0
    longest = max(len(c) for c in curves.values())

    def x_of(i: int) -> float:
        return left + (width - left - 10) * (i / max(longest - 1, 1))

    def y_of(v: float) -> float:
        return top + height * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + bottom + legend}" '
        f'role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>',
        f'<text x="{left}" y="14" font-size="12">{esc(title)}</text>',
        f'<text x="{(width + left) / 2}" y="{top + height + 28}" font-size="10" text-anchor="middle">{esc(xlabel)}</text>',
    ]
    for frac in (0, 0.5, 1):
        v = lo + frac * (hi - lo)
        parts.append(
            f'<line x1="{left}" x2="{width}" y1="{y_of(v)}" y2="{y_of(v)}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y_of(v) + 4}" font-size="10" text-anchor="end">{v:.3g}</text>'
        )
    for i in sorted({0, longest - 1}):
        parts.append(
            f'<text x="{x_of(i)}" y="{top + height + 14}" font-size="10" text-anchor="middle">{i + 1}</text>'
        )
    for c, (name, curve) in enumerate(curves.items()):
        color = COLORS[c % len(COLORS)]
        points = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in enumerate(curve))
        first, last = (f"{curve[0]:.4g}", f"{curve[-1]:.4g}") if curve else ("–", "–")
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}">'
            f"<title>{esc(name)}: {first} -> {last} in {len(curve)} steps</title></polyline>"
        )
        y = top + height + bottom + 12 + 16 * c
        parts.append(
            f'<rect x="{left}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{left + 14}" y="{y}" font-size="11">{esc(name)} ({first} -> {last})</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------- images


def png_uri(picture: np.ndarray) -> str:
    """A uint8 (H, W, 3) array as a PNG data URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def strip(uri: str, marks: Sequence[tuple[str, str]], *, alt: str) -> str:
    """One row of cells: the picture with a grid of verdict marks (class, tooltip) laid over it."""
    cells = "".join(f'<i class="{esc(cls)}" title="{esc(title)}"></i>' for cls, title in marks)
    return (
        f'<div class="strip" style="--cols:{len(marks)}"><img src="{uri}" alt="{esc(alt)}">'
        f'<div class="marks">{cells}</div></div>'
    )


def column_head(names: Sequence[str]) -> str:
    spans = "".join(f'<span title="{esc(n)}">{esc(n)}</span>' for n in names)
    return f'<div class="colhead" style="--cols:{len(names)}">{spans}</div>'


def image_controls(box_id: str, seeds: Sequence[int], *, cell: int = 40) -> str:
    """Seed buttons (the first one active) and a zoom slider for the image box ``box_id``."""
    buttons = "".join(
        f'<button type="button" data-seed="{s}" class="{"on" if i == 0 else ""}">seed {s}</button>'
        for i, s in enumerate(seeds)
    )
    return (
        f'<div class="controls" data-for="{box_id}">{buttons}'
        f'<label>zoom <input type="range" min="16" max="128" step="4" value="{cell}"></label></div>'
    )


LEGEND = (
    '<p class="legend meta">Marks:'
    '<span style="border:3px solid #d62728"></span>leak: the erased model still shows the erased concept'
    '<span style="border:2px solid #2ca02c"></span>erased: the judge no longer sees it'
    '<span style="border:3px solid #ff7f0e"></span>collateral: recognised before erasure, not after'
    '<span style="background:linear-gradient(225deg,#ff7f0e 35%,#fff 35%)"></span>collateral in the other '
    "domain (other judge)"
    '<span style="border:2px dashed #777"></span>the judge misses it on the original model too'
    " · hover an image for the prompt and both judges' answers.</p>"
)
