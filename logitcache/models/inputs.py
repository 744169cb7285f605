"""What a model expects of its images: size, centre-crop share and normalisation.

The CIFAR zoo and ``tv:`` models have no such configuration of their own and take the
dataset's (its ``normalize`` and ``train_view``). A model source that knows its models'
pretrained configurations (``timm:``) gives a :class:`ModelInput`, which ``fit`` plugs into the
dataset in the same two places, so that the loaders, the clean view and evaluation use it with
no second path. A cache records its teacher's in ``TeacherInfo.input``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BadInput, CacheMismatch
from ..precision import Compute
from ..views import Normalize, ViewSpec

if TYPE_CHECKING:
    from ..datasets import ImageDataset

# logitcache resamples every resized crop with one filter, Pillow's bilinear one (the views'
# recorded ``resampler``), whatever a model's config asks for.
REPLAYED_INTERPOLATION = "bilinear"


@dataclass(frozen=True, kw_only=True)
class ModelInput:
    """A model's own input configuration (e.g. timm's ``pretrained_cfg``).

    ``size``: the side of its square input; ``crop_pct``: the share of the resized image the clean
    (evaluation) view keeps; ``interpolation``: what the configuration asks for (logitcache
    resamples with Pillow's bilinear filter whatever it says); ``origin``: where it came from.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    crop_pct: float
    interpolation: str
    origin: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _channels(self.mean, "--mean"))
        object.__setattr__(self, "std", _channels(self.std, "--std"))
        if not all(s > 0 for s in self.std):
            raise BadInput(f"--std values must be > 0, got {', '.join(f'{s:g}' for s in self.std)}")

    @classmethod
    def of_dataset(cls, dataset: ImageDataset) -> ModelInput:
        """The dataset's own normalisation and default view, as a model input configuration."""
        view = dataset.train_view
        crop_pct = view.size / view.eval_resize if view.kind == "resized_crop" else 1.0
        return cls(mean=dataset.normalize.mean, std=dataset.normalize.std, size=view.size, crop_pct=crop_pct,
                   interpolation=REPLAYED_INTERPOLATION, origin=f"dataset {dataset.name}")

    def normalised(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> ModelInput:
        """This configuration with the user's ``mean`` and/or ``std`` (``--mean``/``--std``) instead of its own."""
        given = " and ".join(o for o, v in (("--mean", mean), ("--std", std)) if v is not None)
        return dataclasses.replace(self, mean=self.mean if mean is None else mean, std=self.std if std is None else std,
                                   origin=f"{self.origin}, normalisation from {given}")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelInput:
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise CacheMismatch(f"the store's teacher input configuration is malformed ({e}): re-dump it") from None

    def view(self, view: ViewSpec, *, size: int | None = None) -> ViewSpec:
        """``view`` at this model's input size (or ``size``, the user's) and centre-crop share;
        resized crops only: a fixed-size dataset's crop keeps its images' own size."""
        if view.kind != "resized_crop":
            return view
        size = self.size if size is None else size
        return dataclasses.replace(view, size=size, eval_resize=int(round(size / self.crop_pct)))

    def fit(self, dataset: ImageDataset, *, view: ViewSpec | None = None) -> ImageDataset:
        """``dataset`` with this normalisation and its default view at this input (or ``view``)."""
        return dataset.with_input(normalize=Normalize(self.mean, self.std),
                                  train_view=self.view(dataset.train_view) if view is None else view)

    def describe(self, view: ViewSpec) -> str:
        """One line for the resolved settings: what the images will be, and from where."""
        fmt = ", ".join
        if view.kind == "resized_crop":
            geometry = f"{view.size}x{view.size} (clean view: resize {view.eval_resize}, centre crop)"
        else:
            geometry = f"{view.size}x{view.size}, the dataset's own" + (
                f" (the config's {self.size} applies to image folders)" if self.size != view.size else "")
        resampler = ("" if self.interpolation == REPLAYED_INTERPOLATION else
                     f", resampled bilinear (the config asks for {self.interpolation}; resized crops here are bilinear)")
        return (f"{geometry}, mean ({fmt(f'{m:g}' for m in self.mean)}) std ({fmt(f'{s:g}' for s in self.std)})"
                f"{resampler}, from {self.origin}")


def _channels(values: Sequence[float], option: str) -> tuple[float, ...]:
    """1 value (for every channel) or 3, finite."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) == 1:
        out *= 3
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise BadInput(f"{option} takes one number or three (R,G,B), e.g. 0.485,0.456,0.406; got {values!r}")
    return out


def first_logits(model: nn.Module, dataset: ImageDataset, view: ViewSpec, who: str,
                 compute: Compute | None = None) -> Tensor:
    """``model``'s logits (eval mode, no gradients) for the clean view of the first image (or the
    first sequence of a text dataset), exactly as training or the dump will feed it (under
    ``compute``; fp32 by default), so that a model that cannot take those images (a ViT's patch
    grid, a fixed input size) is refused, naming the size, before anything is written."""
    from ..loader import ViewBatch, augmented_batches

    device = next(model.parameters()).device
    first = ViewBatch(samples=np.zeros(1, dtype=np.int64), seeds=np.zeros(1, dtype=np.uint32), clean=np.ones(1, dtype=bool))
    _, images = next(augmented_batches(dataset, view, [first], device=device))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return (compute or Compute()).forward(model, images)
    except (RuntimeError, AssertionError, ValueError) as e:  # what a model's own input checks raise
        reason = " ".join(str(e).split())[:200]
        size = f"{images.shape[2]}x{images.shape[3]}" if images.dim() == 4 else f"{images.shape[-1]}-token"
        raise BadInput(f"{who} cannot run on this dataset's {size} views ({reason}): choose a model that takes "
                       f"{size} images (`logitcache models`)") from None
    finally:
        model.train(was_training)
