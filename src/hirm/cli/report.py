"""``hirm report``: a static HTML page and a Markdown summary from result files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hirm.cli.common import Overwrite
from hirm.cli.eval import fail_on_errors


@fail_on_errors
def report_command(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="Result files or directories (eval canvas/nudity/utility, sweep, compare, attack)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Report directory: index.html (self-contained) and summary.md."),
    ],
    overwrite: Overwrite = False,
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "hirm evaluation report",
) -> None:
    """How it was erased, the metrics with n and 95 % intervals, charts, and before/after images of every seed.

    One self-contained page (images inlined, charts as SVG, a few lines of plain JavaScript for the seed
    switch and sortable tables; nothing is fetched) and a Markdown summary.
    """
    from hirm.evaluation.report import build_report

    path = build_report(results, out, overwrite=overwrite, title=title)
    typer.echo(f"Wrote {path / 'index.html'} and {path / 'summary.md'}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
