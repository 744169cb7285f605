"""``logitcache models``: the model zoo with parameter counts, or the timm models available."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache._registry import did_you_mean
from logitcache._utils import plural
from logitcache.errors import UnknownName
from logitcache.models import count_parameters, create_model, list_models
from logitcache.models.timm_models import TIMM_PREFIX, timm_data_config, timm_model_names


def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'resnet*' (with --timm, 'resnet18.*' "
                                                "lists that model's pretrained tags).")] = "*",
    num_classes: Annotated[int, typer.Option(help="Classes the counts are given for.")] = 100,
    timm: Annotated[bool, typer.Option("--timm", help="List the models of the installed timm (timm:NAME) with "
                                                      "their input size, from the installed package, offline.")] = False,
) -> None:
    """List the CIFAR model zoo with parameter counts (or, with --timm, timm's models). Any
    torchvision classifier is also available as tv:<name> (e.g. tv:resnet18)."""
    if timm:
        _list_timm(pattern)
        return
    names = list_models(pattern)
    if not names:
        raise UnknownName(f"no model matches {pattern!r}: {did_you_mean(pattern, list_models())}"
                          "`logitcache models` lists them all")
    width = max(len(n) for n in names)
    for name in names:
        params = count_parameters(create_model(name, num_classes=num_classes))
        typer.echo(f"{name:<{width}}  {params:>12,}  ({params / 1e6:.2f} M)")
    typer.echo("+ tv:<name> for any torchvision classification model, timm:<name> for timm's (`logitcache models --timm`)")


def _list_timm(pattern: str) -> None:
    # Building 1,000+ models for their parameter counts would take minutes: only the pretrained
    # config, which is a table lookup, is read.
    names = timm_model_names(pattern)
    if not names:
        raise UnknownName(f"no timm model matches {pattern!r}: `logitcache models --timm` lists them all")
    width = max(len(n) for n in names) + len(TIMM_PREFIX)
    for name in names:
        data = timm_data_config(name)
        _, height, width_px = data["input_size"]
        mean = ", ".join(f"{m:g}" for m in data["mean"])
        typer.echo(f"{TIMM_PREFIX + name:<{width}}  input {height}x{width_px}, mean ({mean}), {data['interpolation']}")
    typer.echo(f"{plural(len(names), 'timm model')}; weights come from --checkpoint (.safetensors, .pth, pytorch_model.bin), "
               "never downloaded" + ("" if "." in pattern else "; 'NAME.*' lists a model's pretrained tags"))


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
