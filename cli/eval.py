"""``logitcache eval``: accuracy and calibration of a checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from logitcache.train import evaluate_checkpoint

from ._options import ChannelsLastOpt, DataRootOpt, DeviceOpt, PrecisionOpt


def eval_command(
    checkpoint: Annotated[str, typer.Option(help="State dict (e.g. a run's best.pt) or .safetensors file.")],
    dataset: Annotated[str, typer.Option(help="Dataset to evaluate on.")],
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    model: Annotated[str | None, typer.Option(help="Model name the checkpoint belongs to [default: the one its run folder's config.json names].")] = None,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    channels_last: ChannelsLastOpt = False,
) -> None:
    """Report top-1/top-5 accuracy, NLL and expected calibration error on clean images.

    Top-5 is left out for datasets of fewer than 6 classes, where it is always 100 %.
    """
    e = evaluate_checkpoint(model, checkpoint, dataset, split=split, data_root=data_root, device=device,
                            precision=precision, channels_last=channels_last)
    for warning in e.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"{e.model} on {e.dataset} {e.split}: {e.images:,} images, {e.num_classes} classes")
    m = e.metrics
    top5 = f"  top-5 {m['top5']:.2f}%" if "top5" in m else ""
    typer.echo(f"top-1 {m['top1']:.2f}%{top5}  NLL {m['nll']:.4f}  ECE {m['ece']:.4f}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
