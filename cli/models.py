"""``logitcache models``: the model zoo with parameter counts."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache._registry import did_you_mean
from logitcache.errors import UnknownName
from logitcache.models import count_parameters, create_model, list_models


def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'resnet*'.")] = "*",
    num_classes: Annotated[int, typer.Option(help="Classes the counts are given for.")] = 100,
) -> None:
    """List the CIFAR model zoo with parameter counts. Any torchvision classifier is also
    available as tv:<name> (e.g. tv:resnet18)."""
    names = list_models(pattern)
    if not names:
        raise UnknownName(f"no model matches {pattern!r}: {did_you_mean(pattern, list_models())}"
                          "`logitcache models` lists them all")
    width = max(len(n) for n in names)
    for name in names:
        params = count_parameters(create_model(name, num_classes=num_classes))
        typer.echo(f"{name:<{width}}  {params:>12,}  ({params / 1e6:.2f} M)")
    typer.echo("+ tv:<name> for any torchvision classification model")


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
