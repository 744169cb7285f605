"""``logitcache compare``: the sweep's summary for any run folders."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache.sweep import expand_runs, render_markdown, summarize, write_results


def compare_command(
    runs: Annotated[list[str], typer.Argument(help="Run folders of `logitcache train`, or folders holding them (a sweep's --out).")],
    out: Annotated[str | None, typer.Option(help="Also write results.json and results.md into this folder.")] = None,
) -> None:
    """Summarise run folders: per group of runs that differ only in their seed, mean ± std, min and
    max of best and last test accuracy, the run count and the teacher forwards saved."""
    summary = summarize(expand_runs(runs))
    typer.echo(render_markdown(summary), nl=False)
    if out is not None:
        write_results(summary, out)
        typer.echo(f"results in {out}/results.json and {out}/results.md")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
