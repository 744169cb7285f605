"""``logitcache sweep``: every (method, seed) from one cache, resumable, in parallel processes."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from logitcache.errors import BadInput
from logitcache.sweep import RESULTS_MD, SweepConfig, render_markdown, run_sweep
from logitcache.views import STRONG_FIELDS, ViewSpec, strong_options

from ._options import strong_augmentation


def parse_int_list(option: str, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise BadInput(f"cannot read {option} {value!r}: use comma-separated integers, e.g. 0,1,2") from None


def sweep_command(
    ctx: typer.Context,
    student: Annotated[str, typer.Option(help="Student model of every run.")],
    dataset: Annotated[str, typer.Option(help="Dataset every run trains on (must match the cache).")],
    methods: Annotated[str, typer.Option(help="Comma-separated methods, e.g. ce,kd,dkd,rld.")],
    out: Annotated[str, typer.Option(help="Sweep folder: one run folder per (method, seed), logs/, results.json, results.md.")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds of every method.")] = "0,1,2",
    cache: Annotated[str | None, typer.Option(help="Teacher-logit cache [default: the matching one in LOGITCACHE_HOME].")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="METHOD.KEY=VALUE: a hyper-parameter of one method's runs (repeatable).")] = None,
    jobs: Annotated[int, typer.Option(help="Runs at a time, each a process with cores/jobs torch threads.")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue runs a stopped sweep left part way (finished runs are never redone).")] = False,
) -> None:
    """Train every method with every seed from one cache and summarise them: mean ± std per method.

    Any other `logitcache train` option (e.g. --epochs 30 --label-fraction 0.1) is passed to
    every run. A killed sweep continues with the same command plus --resume; a finished run is
    never run again. Writes OUT/results.json and OUT/results.md.
    """
    config = SweepConfig(student=student, dataset=dataset, methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                         seeds=parse_int_list("--seeds", seeds), out=out, cache=cache, sets=tuple(set_ or ()),
                         train_args=tuple(ctx.args), jobs=jobs, resume=resume)
    _check_train_options(ctx, config)
    summary = run_sweep(config, echo=typer.echo)
    typer.echo("")
    typer.echo(render_markdown(summary))
    typer.echo(f"results in {out}/results.json and {out}/{RESULTS_MD}")


def _check_train_options(ctx: typer.Context, config: SweepConfig) -> None:
    """Parse the passed-through options as `train` would, before any run starts: a typo fails once,
    here, not once per run."""
    train = ctx.parent.command.commands["train"]  # type: ignore[union-attr]
    args = ["--student", config.student, "--dataset", config.dataset, "--out", config.out, *config.train_args]
    try:
        params = train.make_context("train", args, parent=ctx.parent, resilient_parsing=False).params
    except click.ClickException as e:
        raise BadInput(f"{e.format_message()} (in the options passed to every `logitcache train` run)") from None
    # Augmentation values every run would refuse, refused once: bad ones, and any beside a cache.
    strong = strong_augmentation(**{name: params[name] for name in STRONG_FIELDS})
    ViewSpec(kind="crop", size=1, **strong)
    if strong and config.cache is not None:
        raise BadInput(f"a cache replays its own augmentation (logitcache info shows it): drop {strong_options(strong)} "
                       "from the options passed to every `logitcache train` run, or sweep without --cache")


def register(app: typer.Typer) -> None:
    app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(sweep_command)
