"""``logitcache demo``: the README's main command."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from logitcache.demo import DemoConfig, render_table, run_demo

from ._options import DeviceOpt, QuietOpt


def demo_command(
    out: Annotated[str, typer.Option(help="Folder for the teacher, the cache and every run.")] = "runs/demo",
    teacher_epochs: Annotated[int, typer.Option(help="Epochs of teacher training.")] = 30,
    student_epochs: Annotated[int, typer.Option(help="Epochs of each student run.")] = 30,
    views: Annotated[int, typer.Option(help="Augmented views in the cache.")] = 4,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace a previous demo in --out.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a teacher on the shipped digits, dump its logits once, train the same student
    with ce, kd, dkd, loca, rld and lud from the cache and kd with the teacher online, and
    print one table. Runs in a few minutes on two CPU cores; everything stays on disk."""
    config = DemoConfig(out=out, teacher_epochs=teacher_epochs, student_epochs=student_epochs, views=views,
                        device=device, overwrite=overwrite, progress=not quiet)
    start = time.perf_counter()
    rows = run_demo(config, echo=typer.echo)
    typer.echo("")
    typer.echo(render_table(rows))
    typer.echo(f"\nruns, cache and demo_results.json are in {out}")
    typer.echo(f"the demo took {time.perf_counter() - start:.0f} s")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
