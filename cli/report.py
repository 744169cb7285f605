"""``logitcache report``: figures of a cache's teacher and of runs, and an index.html beside them."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache.report import write_report


def report_command(
    cache: Annotated[str, typer.Argument(help="Teacher-logit cache made by `logitcache dump`.")],
    out: Annotated[str, typer.Option(help="Folder for the PNG figures and index.html.")],
    runs: Annotated[list[str] | None, typer.Option("--runs", help="Run folders, or a sweep's --out (repeatable): adds their curves and mean ± std bars.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous report in --out.")] = False,
) -> None:
    """Render the teacher's reliability, mis-instruction, entropy and target-shift figures (and
    the runs' curves and mean ± std bars) as PNGs with an index.html that shows the numbers beside them.
    Needs the report extra: pip install 'logitcache[report]'."""
    report = write_report(cache, out, runs=runs or (), overwrite=overwrite)
    for note in report.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {len(report.figures)} figures and index.html to {out}: open {out}/index.html")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
