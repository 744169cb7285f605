"""Turn lists of (view, sample) pairs into augmented image batches on the training device.

A batch holds items: images (one store row each) or, for text, sequences (``dataset.rows``
maps them to their token rows; ``true_labels`` is per row). Text is never augmented: its
batch is the sequences' input ids.

Both stages use this, so the teacher at dump time and the student at train time see the same
pixels: the images of a batch are gathered by sample index, each view's parameters come from
its stored seed, and the ops run on uint8 tensors (see ``views.py``). In-memory datasets are
indexed and augmented on the device in the calling thread; folders are decoded, cropped, resized
(by Pillow, from the decoded image itself) and flipped in DataLoader workers, a batch per
worker, and normalised on the device (for a CPU device, in the workers too).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .datasets import Dataset, ImageDataset
from .errors import LogitcacheError
from .augment import Mix, mix_images
from .views import ViewSpec


@dataclass(frozen=True)
class ViewBatch:
    """One batch of pairs: sample indices, their view seeds and which are clean views."""

    samples: np.ndarray  # (B,) int64
    seeds: np.ndarray  # (B,) uint32
    clean: np.ndarray  # (B,) bool

    def __len__(self) -> int:
        return len(self.samples)

    def mix(self, spec: ViewSpec, num_samples: int) -> Mix:
        return spec.mix(self.seeds, self.samples, self.clean, num_samples)


def true_labels(dataset: Dataset, spec: ViewSpec, batch: ViewBatch) -> np.ndarray:
    """(rows,) the class each row of the batch stands for: its label (a text row's next token), or
    for a mixed view its larger share's."""
    if not spec.mixing:
        return dataset.labels[dataset.rows(batch.samples)]
    return batch.mix(spec, len(dataset)).true_class(dataset.labels, batch.samples)


class _FolderBatches(torch.utils.data.Dataset):
    """Map-style dataset over batches: item j is batch j's views (B, C, size, size), made on the CPU:
    uint8, or normalised where ``normalized``."""

    def __init__(self, dataset: ImageDataset, spec: ViewSpec, batches: list[ViewBatch], normalized: bool) -> None:
        self.dataset, self.spec, self.batches, self.normalized = dataset, spec, batches, normalized

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int) -> Tensor | LogitcacheError:
        try:
            return self._load(j)
        except LogitcacheError as e:  # handed back, so that the main process raises it as it is, in
            return e  # one line: DataLoader would re-raise it with the worker's traceback in its message

    def _views(self, samples: np.ndarray, seeds: np.ndarray, clean: np.ndarray) -> Tensor:
        images = [self.dataset.open_image(int(i)) for i in samples]
        # One vectorised call for the batch: per image, the parameters' numpy overhead would cost
        # more than the image's resampling.
        params = self.spec.params(seeds, np.array([(im.height, im.width) for im in images]).reshape(-1, 2), clean)
        return self.spec.apply_each(images, params)

    def _load(self, j: int) -> Tensor:
        batch = self.batches[j]
        images = self._views(batch.samples, batch.seeds, batch.clean)
        if self.spec.mixing:
            mix = batch.mix(self.spec, len(self.dataset))
            rows = np.flatnonzero(mix.mixed)
            if len(rows):
                partners = self._views(mix.partner[rows], mix.partner_seed[rows], np.zeros(len(rows), dtype=bool))
                images = mix_images(images, partners, mix, rows)
        return self.dataset.normalize(images) if self.normalized else images


def augmented_batches(
    dataset: Dataset,
    spec: ViewSpec,
    batches: Iterable[ViewBatch],
    *,
    device: torch.device,
    workers: int = 0,
) -> Iterator[tuple[ViewBatch, Tensor]]:
    """Yield each batch with its model input on ``device``: normalised float images (B, C, H, W),
    or a text dataset's input ids (B, L)."""
    if not isinstance(dataset, ImageDataset):
        for batch in batches:
            yield batch, dataset.inputs(batch.samples).to(device, non_blocking=True)
        return
    spec.check_replayable()
    if dataset.in_memory:
        hw = dataset.image_shape[1:]
        for batch in batches:
            images = dataset.images(batch.samples)
            if device.type == "cuda":  # from pageable memory the copy would block the host until it is done
                images = images.pin_memory()
            images = images.to(device, non_blocking=True)
            views = spec.apply(images, spec.params(batch.seeds, hw, batch.clean))
            if spec.mixing:
                views = _mix_in_memory(dataset, spec, batch, views)
            yield batch, dataset.normalize(views)
        return
    batches = list(batches)
    # For a model on the CPU the workers normalise too (the same float ops, on the same device), so
    # that the main process only runs the model; for a GPU, uint8 crosses the bus, a quarter the bytes.
    on_cpu = device.type == "cpu"
    loader = torch.utils.data.DataLoader(
        _FolderBatches(dataset, spec, batches, normalized=on_cpu),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    for batch, item in zip(batches, loader):
        if isinstance(item, LogitcacheError):
            raise item
        yield batch, item if on_cpu else dataset.normalize(item.to(device, non_blocking=True))


def _mix_in_memory(dataset: ImageDataset, spec: ViewSpec, batch: ViewBatch, views: Tensor) -> Tensor:
    mix = batch.mix(spec, len(dataset))
    rows = np.flatnonzero(mix.mixed)
    if not len(rows):
        return views
    partners = dataset.images(mix.partner[rows]).to(views.device)
    hw = dataset.image_shape[1:]
    partners = spec.apply(partners, spec.params(mix.partner_seed[rows], hw, np.zeros(len(rows), dtype=bool)))
    return mix_images(views, partners, mix, rows)


def clean_batches(dataset: Dataset, batch_size: int) -> list[ViewBatch]:
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
