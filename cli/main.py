"""The ``logitcache`` command: one Typer app, one file per command, one error handler.

Library errors (:class:`~logitcache.errors.LogitcacheError`) are user errors: they are printed
as one red line naming the fix and the command exits with code 2, never with a traceback. So
is an ``OSError`` the library did not foresee: the operating system refusing a path the user
gave (a disk that fills up, a file removed underneath a run) is the user's to fix, not a bug.
"""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import click
import typer

from logitcache._utils import tool_version
from logitcache.errors import LogitcacheError

from . import compare, demo, dump, eval, info, ls, methods, models, pack, report, sweep, train, verify

app = typer.Typer(
    name="logitcache",
    help="Run a teacher once, cache its logits per augmented view, train students from the cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
for module in (demo, dump, info, verify, ls, pack, train, sweep, compare, report, eval, models, methods):
    module.register(app)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"logitcache {tool_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    pass


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def _whole_short_help(group: click.Group) -> None:
    """Click cuts each command's summary in ``logitcache --help`` at ~45 characters ("dump its
    logits once,..."); the first sentence of its docstring, whole, reads better."""
    for command in group.commands.values():
        if command.help and not command.short_help:
            command.short_help = _first_sentence(command.help)


def _os_message(e: OSError) -> str:
    reason = e.strerror or str(e)
    if e.filename is None:
        return reason
    if e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {reason}"
    return f"{e.filename}: {reason}"


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``argv`` defaults to ``sys.argv[1:]``. Exits the process."""
    command = typer.main.get_command(app)
    _whole_short_help(command)
    try:
        command.main(args=argv, prog_name="logitcache", standalone_mode=True)
    except LogitcacheError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{_os_message(e)} (check the path and its permissions)")


if __name__ == "__main__":
    main()
