"""``logitcache ls``: the caches in the cache home."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache._utils import plural
from logitcache.cache_home import cache_home, describe_teacher, describe_views, list_caches

from ._options import human_bytes


def ls_command(
    home: Annotated[str | None, typer.Option(help="Cache home to list [default: LOGITCACHE_HOME or ~/.cache/logitcache].")] = None,
) -> None:
    """List the caches in the cache home: teacher (its weights hash and test accuracy, which tell two
    checkpoints of one architecture apart), dataset, views, encoding, size, creation date.

    `dump` without --out files its store there; `train` without --cache finds it there."""
    home = home or cache_home()
    skipped: list[str] = []
    entries = list_caches(home, skipped=skipped)
    typer.echo(f"cache home: {home}")
    for line in skipped:
        typer.echo(f"warning: {line}", err=True)
    if not entries:
        typer.echo("no caches (make one with `logitcache dump` without --out)")
        return
    for e in entries:
        s = e.spec
        status = "" if e.complete else "  [INCOMPLETE]"
        typer.echo(f"{e.location}{status}\n    {describe_teacher(s.teacher, e.teacher_test_accuracy)}, "
                   f"on {s.dataset.name} [{s.dataset.split}] "
                   f"({plural(s.dataset.num_samples, 'sample')}), {describe_views(s)}, {s.encoding.describe()}, "
                   f"{human_bytes(e.bytes_on_disk)}, created {e.created_at}")


def register(app: typer.Typer) -> None:
    app.command("ls")(ls_command)
