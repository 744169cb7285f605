"""``logitcache verify``: integrity, provenance and replay checks of a cache."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache._utils import plural
from logitcache.verify import verify

from ._options import CheckpointOpt, DataRootOpt, DeviceOpt, RandomInitOpt


def verify_command(
    cache: Annotated[str, typer.Argument(help="Path or URL of the store.")],
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    data_root: DataRootOpt = None,
    samples: Annotated[int, typer.Option(help="Random (view, sample) pairs to replay through the teacher (for text: sequences, every position compared); 0: integrity only.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed choosing the pairs.")] = 0,
    device: DeviceOpt = "auto",
    repair: Annotated[bool, typer.Option(help="Mark blocks with bad chunks for rewriting by the dump command.")] = False,
) -> None:
    """Check that every chunk decodes against its checksum, then replay the seeds of random
    (view, sample) pairs through the teacher and compare with the stored logits.

    Exits 1 and lists what is wrong on any mismatch."""
    report = verify(cache, samples=samples, checkpoint=checkpoint, random_init=random_init, data_root=data_root,
                    device=device, seed=seed, repair=repair)
    chunks = plural(report.chunks_checked, "chunk")
    if report.replay_skipped is None:
        typer.echo(f"checked {chunks} and replayed {plural(report.pairs_checked, '(view, sample) pair')} "
                   f"(max |stored - replayed| {report.max_abs_error:.3g})")
    else:
        typer.echo(f"checked {chunks}; replay skipped ({report.replay_skipped})")
    if report.ok:
        typer.secho("OK", fg=typer.colors.GREEN)
        return
    for problem in report.problems:
        typer.secho(f"FAIL {problem}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_command)
