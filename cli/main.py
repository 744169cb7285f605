"""The ``logitcache`` command: one Typer app, one file per command, one error handler.

Library errors (:class:`~logitcache.errors.LogitcacheError`) are user errors: they are printed
as one red line naming the fix and the command exits with code 2, never with a traceback.
"""

from __future__ import annotations

import sys

import typer

from logitcache.errors import LogitcacheError

from . import demo, dump, eval, info, ls, methods, models, pack, train, verify

app = typer.Typer(
    name="logitcache",
    help="Run a teacher once, cache its logits per augmented view, train students from the cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
for module in (demo, dump, info, verify, ls, pack, train, eval, models, methods):
    module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``argv`` defaults to ``sys.argv[1:]``. Exits the process."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="logitcache", standalone_mode=True)
    except LogitcacheError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
