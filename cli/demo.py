"""``logitcache demo``: the README's main command."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from logitcache.demo import DemoConfig, render_table, run_demo

from ._options import DeviceOpt, QuietOpt
from .sweep import parse_int_list

_D = DemoConfig()


def demo_command(
    out: Annotated[str, typer.Option(help="Folder for the teacher, the cache, the sweep and the report.")] = _D.out,
    teacher_epochs: Annotated[int, typer.Option(help="Epochs of teacher training.")] = _D.teacher_epochs,
    student_epochs: Annotated[int, typer.Option(help="Epochs of each student run.")] = _D.student_epochs,
    views: Annotated[int, typer.Option(help="Augmented views in the cache.")] = _D.views,
    methods: Annotated[str, typer.Option(help="Comma-separated methods of the sweep.")] = ",".join(_D.methods),
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds of every method.")] = ",".join(map(str, _D.seeds)),
    label_fraction: Annotated[float, typer.Option(help="Share of the training labels the students see.")] = _D.label_fraction,
    jobs: Annotated[int, typer.Option(help="Student runs at a time (processes).")] = _D.jobs,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace a previous demo in --out.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a teacher on the shipped digits, dump its logits once, then train students that see
    only a tenth of the labels (ce, kd, dkd × three seeds, from the cache), print mean ± std and what
    the table supports, and write the report. Under a minute on two idle CPU cores."""
    config = DemoConfig(out=out, teacher_epochs=teacher_epochs, student_epochs=student_epochs, views=views,
                        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                        seeds=parse_int_list("--seeds", seeds), label_fraction=label_fraction, jobs=jobs,
                        device=device, overwrite=overwrite, progress=not quiet)
    start = time.perf_counter()
    result = run_demo(config, echo=typer.echo)
    typer.echo("")
    typer.echo(render_table(result.rows))
    typer.echo("")
    typer.echo("what this table supports:")
    for line in result.reading:
        typer.echo(f"  - {line}")
    typer.echo(f"\nteacher, cache, sweep and demo_results.json are in {out}")
    if result.report:
        typer.echo(f"report: {result.report}")
    typer.echo(f"the demo took {time.perf_counter() - start:.0f} s")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
