"""Build the teacher network for dump, verify and online training."""

from __future__ import annotations

import os

import torch
from torch import nn

from .errors import BadInput
from .models import create_model, weights_sha256


def build_teacher(
    name: str,
    num_classes: int,
    *,
    checkpoint: str | os.PathLike | None,
    random_init: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The teacher in eval mode on ``device``, from a checkpoint (or seeded random weights).

    Args:
        name: model registry name (``logitcache models``) or ``tv:<torchvision name>``.
        num_classes: classes of the dataset; a checkpoint for another count is refused.
        checkpoint: a state dict saved with ``torch.save``.
        random_init: use seeded random weights instead (tests and smoke runs only).
        seed: seed of the random weights.
    """
    if checkpoint is None and not random_init:
        raise BadInput(
            f"teacher {name} needs weights: pass --checkpoint PATH (a state dict, e.g. a CRD/mdistiller "
            f"ckpt_epoch_240.pth), or train one first with `logitcache train --method ce --student {name} ...`"
        )
    if checkpoint is not None and random_init:
        raise BadInput("--checkpoint and --random-init exclude each other: drop one")
    if random_init:
        torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, checkpoint=checkpoint)
    return model.to(device).eval()


def teacher_weights_sha256(
    name: str, num_classes: int, *, checkpoint: str | os.PathLike | None, random_init: bool = False, seed: int = 0
) -> str:
    """The ``weights_sha256`` a dump of this teacher records (``models.weights_sha256`` of the
    loaded model), so that a checkpoint can be matched to the caches made from it."""
    return weights_sha256(build_teacher(name, num_classes, checkpoint=checkpoint, random_init=random_init, seed=seed))
