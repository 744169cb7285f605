"""``logitcache demo``: the README's main command."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from logitcache.demo import DemoConfig, TextDemoConfig, render_table, render_text_table, run_demo, run_text_demo
from logitcache.errors import BadInput

from ._options import DeviceOpt, QuietOpt
from .sweep import parse_int_list

_D, _T = DemoConfig(), TextDemoConfig()


def demo_command(
    text: Annotated[bool, typer.Option("--text", help=(
        "The language-model demo instead: a tiny causal LM teacher trained on the shipped book (hf:tiny-teacher, "
        "text:botchan), dumped once (top-k), a smaller student (hf:tiny-student) trained from the cache with "
        "ce, kd, rkl and loca and once online; prints test perplexities. About three minutes on two CPU cores (179 s measured at load 3-4.5)."))] = False,
    out: Annotated[str | None, typer.Option(help=(
        f"Folder for the teacher, the cache, the runs and the report (default {_D.out}; with --text {_T.out})."))] = None,
    teacher_epochs: Annotated[int | None, typer.Option(help=(
        f"Epochs of teacher training (default {_D.teacher_epochs}; with --text {_T.teacher_epochs})."))] = None,
    student_epochs: Annotated[int | None, typer.Option(help=(
        f"Epochs of each student run (default {_D.student_epochs}; with --text {_T.student_epochs})."))] = None,
    methods: Annotated[str | None, typer.Option(help=(
        f"Comma-separated methods of the students (default {','.join(_D.methods)}; with --text "
        f"{','.join(_T.methods)})."))] = None,
    views: Annotated[int, typer.Option(help="Augmented views in the cache (images only).")] = _D.views,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds of every method (images only).")] = ",".join(map(str, _D.seeds)),
    label_fraction: Annotated[float, typer.Option(help="Share of the training labels the students see (images only).")] = _D.label_fraction,
    jobs: Annotated[int, typer.Option(help="Student runs at a time (processes; images only).")] = _D.jobs,
    dataset: Annotated[str, typer.Option(help="The text to train on, text:PATH (--text only).")] = _T.dataset,
    seq_len: Annotated[int, typer.Option(help="Tokens per packed sequence (--text only).")] = _T.seq_len,
    topk: Annotated[int, typer.Option(help="Next-token logits stored per position (--text only).")] = _T.topk,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace a previous demo in --out.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a teacher on the shipped digits, dump its logits once, then train students that see
    only a tenth of the labels (ce, kd, dkd × three seeds, from the cache), print mean ± std and what
    the table supports, and write the report. Under a minute on two idle CPU cores. With --text, the
    same workflow for language models on the shipped book."""
    start = time.perf_counter()
    common = {k: v for k, v in dict(out=out, teacher_epochs=teacher_epochs, student_epochs=student_epochs,
                                     methods=None if methods is None else _names(methods)).items() if v is not None}
    if text:
        image_only = [f"--{name.replace('_', '-')}" for name, value, default in (
            ("views", views, _D.views), ("seeds", seeds, ",".join(map(str, _D.seeds))),
            ("label_fraction", label_fraction, _D.label_fraction), ("jobs", jobs, _D.jobs)) if value != default]
        if image_only:
            raise BadInput(f"{', '.join(image_only)} belong to the image demo: drop them with --text")
        config = TextDemoConfig(**common, dataset=dataset, seq_len=seq_len, topk=topk, device=device, overwrite=overwrite,
                                progress=not quiet)
        typer.echo("")
        typer.echo(render_text_table(run_text_demo(config, echo=typer.echo)))
        typer.echo(f"\nteacher, cache, runs and demo_results.json are in {config.out}")
    else:
        text_only = [opt for opt, value, default in (("--dataset", dataset, _T.dataset), ("--seq-len", seq_len, _T.seq_len),
                                                     ("--topk", topk, _T.topk)) if value != default]
        if text_only:
            raise BadInput(f"{', '.join(text_only)} belong to the language-model demo: add --text, or drop them")
        config = DemoConfig(**common, views=views, seeds=parse_int_list("--seeds", seeds),
                            label_fraction=label_fraction, jobs=jobs, device=device, overwrite=overwrite,
                            progress=not quiet)
        result = run_demo(config, echo=typer.echo)
        typer.echo("")
        typer.echo(render_table(result.rows))
        typer.echo("")
        typer.echo("what this table supports:")
        for line in result.reading:
            typer.echo(f"  - {line}")
        typer.echo(f"\nteacher, cache, sweep and demo_results.json are in {config.out}")
        if result.report:
            typer.echo(f"report: {result.report}")
    typer.echo(f"the demo took {time.perf_counter() - start:.0f} s")


def _names(methods: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in methods.split(",") if m.strip())


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
