"""``logitcache methods``: the KD methods with their hyper-parameters and presets."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache.errors import UnknownName
from logitcache.methods import get_method, list_methods
from logitcache.methods._registry import METHODS, MethodInfo


def methods_command(
    name: Annotated[str | None, typer.Argument(help="Show one method in full, with every preset's values.")] = None,
) -> None:
    """List the KD methods with their hyper-parameters (defaults), presets and whether each is
    meaningful on a text dataset's token rows (rows = positions, the true class = the next token).

    Change a hyper-parameter with `train --set KEY=VALUE`; `--preset auto` applies the published
    per-pair preset for the teacher and student when there is one."""
    if name is not None:
        if name not in METHODS:  # pointing at `logitcache methods` from itself would be no help
            raise UnknownName(METHODS.unknown_message(name, list_names=True))
        info = get_method(name)
        typer.echo(f"{info.name}: {info.summary}")
        typer.echo("defaults: " + (", ".join(f"{k}={v}" for k, v in info.defaults().items()) or "none"))
        typer.echo(_on_tokens(info))
        for preset, values in info.presets.items():
            typer.echo(f"  preset {preset}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        return
    for method in list_methods():
        info = get_method(method)
        typer.echo(f"{method:<10} {info.summary}")
        if info.defaults():
            typer.echo(f"{'':<10} " + ", ".join(f"{k}={v}" for k, v in info.defaults().items()))
        typer.echo(f"{'':<10} {_on_tokens(info)}")
        pairs = [p for p in info.presets if "-" in p]
        named = [p for p in info.presets if "-" not in p]
        if info.presets:
            typer.echo(f"{'':<10} presets: " + ", ".join(named + ([f"{len(pairs)} teacher-student pairs"] if pairs else []))
                       + f"  (`logitcache methods {method}` shows them)")


def _on_tokens(info: MethodInfo) -> str:
    """Whether the method trains on a text dataset's token rows, and why."""
    reason = info.refusal_on_tokens()
    return f"on tokens: {'refused' if reason else 'yes'} — {reason or info.tokens.reason}"


def register(app: typer.Typer) -> None:
    app.command("methods")(methods_command)
