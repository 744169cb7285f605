"""Turn lists of (view, sample) pairs into augmented image batches on the training device.

Both stages use this, so the teacher at dump time and the student at train time see the same
pixels: the images of a batch are gathered by sample index, each view's parameters come from
its stored seed, and the ops run on uint8 tensors (see ``views.py``). In-memory datasets are
indexed and augmented on the device in the calling thread; folders are decoded, cropped and
resized in DataLoader workers and only flipped and normalised on the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .datasets import ImageDataset
from .errors import LogitcacheError
from .views import FLIP, ViewSpec


@dataclass(frozen=True)
class ViewBatch:
    """One batch of pairs: sample indices, their view seeds and which are clean views."""

    samples: np.ndarray  # (B,) int64
    seeds: np.ndarray  # (B,) uint32
    clean: np.ndarray  # (B,) bool

    def __len__(self) -> int:
        return len(self.samples)


class _FolderBatches(torch.utils.data.Dataset):
    """Map-style dataset over batches: item j is the uint8 geometry of batch j, cropped on the CPU."""

    def __init__(self, dataset: ImageDataset, spec: ViewSpec, batches: list[ViewBatch]) -> None:
        self.dataset, self.spec, self.batches = dataset, spec, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int) -> tuple[Tensor, Tensor] | LogitcacheError:
        try:
            return self._load(j)
        except LogitcacheError as e:  # handed back, so that the main process raises it as it is, in
            return e  # one line: DataLoader would re-raise it with the worker's traceback in its message

    def _load(self, j: int) -> tuple[Tensor, Tensor]:
        batch = self.batches[j]
        images, flips = [], []
        for i, seed, clean in zip(batch.samples, batch.seeds, batch.clean):
            image = self.dataset.load(int(i))
            params = self.spec.params(np.asarray([seed]), image.shape[1:], clean=bool(clean))
            flips.append(int(params[0, FLIP]))
            params[0, FLIP] = 0  # the flip is applied batched, on the device
            images.append(self.spec.apply_one(image, params[0]))
        return torch.stack(images), torch.tensor(flips)


def augmented_batches(
    dataset: ImageDataset,
    spec: ViewSpec,
    batches: Iterable[ViewBatch],
    *,
    device: torch.device,
    workers: int = 0,
) -> Iterator[tuple[ViewBatch, Tensor]]:
    """Yield each batch with its normalised float images (B, C, H, W) on ``device``."""
    if dataset.in_memory:
        hw = dataset.image_shape[1:]
        for batch in batches:
            images = dataset.images(batch.samples)
            if device.type == "cuda":  # from pageable memory the copy would block the host until it is done
                images = images.pin_memory()
            images = images.to(device, non_blocking=True)
            params = spec.params(batch.seeds, hw, batch.clean)
            yield batch, dataset.normalize(spec.apply(images, params))
        return
    batches = list(batches)
    loader = torch.utils.data.DataLoader(
        _FolderBatches(dataset, spec, batches),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    for batch, item in zip(batches, loader):
        if isinstance(item, LogitcacheError):
            raise item
        images, flips = item
        images = images.to(device, non_blocking=True)
        flips = flips.to(device, non_blocking=True).bool()[:, None, None, None]
        yield batch, dataset.normalize(torch.where(flips, images.flip(-1), images))


def clean_batches(dataset: ImageDataset, batch_size: int) -> list[ViewBatch]:
    """Batches of the clean view of every sample, in order (for evaluation)."""
    n = len(dataset)
    return [
        ViewBatch(
            samples=np.arange(s, min(s + batch_size, n)),
            seeds=np.zeros(min(batch_size, n - s), dtype=np.uint32),
            clean=np.ones(min(batch_size, n - s), dtype=bool),
        )
        for s in range(0, n, batch_size)
    ]
