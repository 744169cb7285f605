"""Build the teacher network for dump, verify and online training, and feed it the images it expects."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .errors import BadInput
from .models import ModelInput, create_model, weights_sha256
from .models.hf import is_hf, open_folder
from .views import Normalize, ViewSpec

if TYPE_CHECKING:
    from .datasets import ImageDataset
    from .store.format import CacheSpec


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
        name: model registry name (``logitcache models``), ``tv:<torchvision name>`` or ``timm:<timm name>``.
        num_classes: classes of the dataset; a checkpoint for another count is refused.
        checkpoint: a state dict saved with ``torch.save`` or a safetensors file.
        random_init: use seeded random weights instead (tests and smoke runs only).
        seed: seed of the random weights.
    """
    if is_hf(name):
        _check_hf_weights(name, checkpoint, random_init)
    elif checkpoint is None and not random_init:
        raise BadInput(
            f"teacher {name} needs weights: pass --checkpoint PATH (a state dict or .safetensors file, e.g. a "
            f"CRD/mdistiller ckpt_epoch_240.pth), or train one first with `logitcache train --method ce --student {name} ...`"
        )
    if checkpoint is not None and random_init:
        raise BadInput("--checkpoint and --random-init exclude each other: drop one")
    if random_init:
        torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, checkpoint=checkpoint)
    return model.to(device).eval()


def _check_hf_weights(name: str, checkpoint: str | os.PathLike | None, random_init: bool) -> None:
    """An hf: teacher's weights are its folder's (or a --checkpoint of a run over it); a config-only
    folder is a teacher only with --random-init (tests and smoke runs)."""
    has_weights = open_folder(name).has_weights
    if has_weights and random_init:
        raise BadInput(f"{name} holds trained weights: drop --random-init (or pass a config-only folder)")
    if not has_weights and checkpoint is None and not random_init:
        raise BadInput(
            f"teacher {name} is a config-only folder (no *.safetensors weights): train one first with `logitcache "
            f"train --method ce --student {name} ...` and pass its run's hf folder, or add --random-init"
        )


def teacher_weights_sha256(
    name: str, num_classes: int, *, checkpoint: str | os.PathLike | None, random_init: bool = False, seed: int = 0
) -> str:
    """The ``weights_sha256`` a dump of this teacher records (``models.weights_sha256`` of the
    loaded model), so that a checkpoint can be matched to the caches made from it."""
    return weights_sha256(build_teacher(name, num_classes, checkpoint=checkpoint, random_init=random_init, seed=seed))


def teacher_dataset(dataset: ImageDataset, spec: CacheSpec) -> ImageDataset:
    """``dataset`` as the teacher of a store saw it: with the input configuration its spec records
    (normalisation, clean-view crop share at the stored view size), never the one timm gives now."""
    if not spec.teacher.input:
        return dataset
    inp = ModelInput.from_json(spec.teacher.input)
    size = ViewSpec.from_json(spec.views.augmentation).size
    return inp.fit(dataset, view=inp.view(dataset.train_view, size=size))


class Renormalize(nn.Module):
    """Feeds ``model`` images normalised with ``given`` as if they were normalised with
    ``wanted``: an online teacher whose own normalisation is not the student's."""

    def __init__(self, model: nn.Module, given: Normalize, wanted: Normalize) -> None:
        super().__init__()
        self.model = model
        scale = torch.tensor(given.std) / torch.tensor(wanted.std)
        shift = (torch.tensor(given.mean) - torch.tensor(wanted.mean)) / torch.tensor(wanted.std)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images * self.scale + self.shift)
