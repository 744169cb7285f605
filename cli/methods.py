"""``logitcache methods``: the KD methods with their hyper-parameters and presets."""

from __future__ import annotations

import typer

from logitcache.methods import get_method, list_methods


def methods_command() -> None:
    """List the KD methods, their hyper-parameters with defaults, and their presets."""
    for name in list_methods():
        info = get_method(name)
        typer.echo(f"{name:<10} {info.summary}")
        typer.echo(f"{'':<10} " + ", ".join(f"{k}={v}" for k, v in info.defaults().items()))
        if info.presets:
            typer.echo(f"{'':<10} presets: " + ", ".join(info.presets))


def register(app: typer.Typer) -> None:
    app.command("methods")(methods_command)
