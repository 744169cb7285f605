"""Dataset registry: CIFAR-10/100, ImageNet-style folders, the shipped digits, synthetic images.

A dataset here is a split of labelled uint8 images plus what identifies it (name, split,
content fingerprint, class count) and how to augment and normalise it. Fixed-size datasets
(CIFAR, digits, synthetic) live in memory as one (N, C, H, W) uint8 tensor, so a batch is an
index and the augmentation runs batched on the training device; folders decode one image at a
time in loader workers.

Names: ``cifar10``, ``cifar100`` (``:nocheck`` skips torchvision's MD5 check), ``digits``, ``imagefolder:<path>`` and
``synthetic[:n=512,classes=10,size=32,seed=0]``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ._data import shipped
from ._registry import Registry
from .errors import BadInput, DataError
from .text import TextDataset, open_text
from .views import Normalize, ViewSpec, pil_to_tensor

if TYPE_CHECKING:
    from PIL.Image import Image

SPLITS = ("train", "test")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageDataset:
    """One split of a labelled image dataset.

    Attributes:
        name: the registry name the user typed (``cifar100``, ``imagefolder:/data/in1k``...).
        split: ``train`` or ``test``.
        num_classes: number of classes.
        labels: (N,) int64 labels.
        normalize: the dataset's per-channel normalisation.
        train_view: the default augmentation for training views.
        image_shape: (C, H, W) when every image has that shape, else None.
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        num_classes: int,
        labels: np.ndarray,
        normalize: Normalize,
        train_view: ViewSpec,
        image_shape: tuple[int, int, int] | None,
    ) -> None:
        self.name, self.split, self.num_classes = name, split, num_classes
        self.labels = np.asarray(labels, dtype=np.int64)
        self.normalize, self.train_view, self.image_shape = normalize, train_view, image_shape
        if len(self.labels) == 0:
            raise DataError(f"dataset {name} split {split} has no images: point it at a folder that holds some")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.image_shape is not None

    # An item (what a batch holds) is one image and one store row; a text dataset's is a sequence of rows.
    rows_per_item = 1

    def rows(self, items: np.ndarray) -> np.ndarray:
        """The store rows of these items: the items themselves."""
        return np.asarray(items, dtype=np.int64)

    def images(self, index: np.ndarray) -> Tensor:
        """(B, C, H, W) uint8 images of a fixed-size dataset."""
        raise NotImplementedError

    def load(self, i: int) -> Tensor:
        """One (C, H, W) uint8 image, any size."""
        return self.images(np.asarray([i]))[0]

    def open_image(self, i: int) -> Image:
        """Image i decoded as an RGB Pillow image (datasets not in memory: the loader resamples it)."""
        raise NotImplementedError

    def image_size(self, i: int) -> tuple[int, int]:
        """(H, W) of image i before augmentation."""
        return self.image_shape[1:] if self.image_shape else tuple(self.load(i).shape[1:])

    @cached_property
    def fingerprint(self) -> str:
        """A content fingerprint: sha256 hex of what defines this split's images and labels."""
        h = hashlib.sha256()
        self._fingerprint_into(h)
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    def _fingerprint_into(self, h: "hashlib._Hash") -> None:
        raise NotImplementedError

    def with_input(self, *, normalize: Normalize, train_view: ViewSpec) -> ImageDataset:
        """This split, normalised and viewed as a model expects (``models.inputs.ModelInput``);
        its images, labels and fingerprint are this one's."""
        fitted = copy.copy(self)
        fitted.normalize, fitted.train_view = normalize, train_view
        return fitted

    def subset(self, index: np.ndarray) -> ImageDataset:
        """The samples ``index`` of this split, in that order (a validation hold-out)."""
        return SubsetDataset(self, index)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "split": self.split,
            "num_samples": len(self),
            "num_classes": self.num_classes,
            "fingerprint": self.fingerprint,
        }


class TensorDataset(ImageDataset):
    """A fixed-size dataset held in memory as one uint8 tensor."""

    def __init__(self, *, data: Tensor, **kw) -> None:
        super().__init__(image_shape=tuple(data.shape[1:]), **kw)
        self.data = data

    def images(self, index: np.ndarray) -> Tensor:
        return self.data[torch.as_tensor(np.asarray(index, dtype=np.int64))]

    def _fingerprint_into(self, h: "hashlib._Hash") -> None:
        h.update(str(tuple(self.data.shape)).encode())
        h.update(self.data.contiguous().numpy().tobytes())


class FolderDataset(ImageDataset):
    """An ImageNet-style folder: ``<root>/<class>/<image>``; decoded lazily."""

    def __init__(self, *, files: list[str], root: Path, classes: list[str], **kw) -> None:
        super().__init__(image_shape=None, **kw)
        self.files, self.root, self.classes = files, root, classes

    def load(self, i: int) -> Tensor:
        return pil_to_tensor(self.open_image(i))

    def open_image(self, i: int) -> Image:
        # Pillow, as torchvision's ImageFolder uses (torchvision.io's decoders are deprecated); the
        # views resample this image itself, so the whole image never becomes a tensor.
        from PIL import Image

        path = self.root / self.files[i]
        try:
            with Image.open(path) as img:
                if img.mode == "RGB":
                    img.load()  # convert() would copy the decoded pixels once more
                    return img
                return img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from None

    def _fingerprint_into(self, h: "hashlib._Hash") -> None:
        # A listing fingerprint (names, classes, byte sizes): hashing every image's bytes of a
        # 1.28 M-image folder would take longer than many dumps.
        for rel in self.files:
            h.update(rel.encode())
            h.update((self.root / rel).stat().st_size.to_bytes(8, "little"))


class SubsetDataset(ImageDataset):
    """Some samples of another dataset, read through it: nothing is copied."""

    def __init__(self, parent: ImageDataset, index: np.ndarray) -> None:
        self.parent, self.index = parent, np.asarray(index, dtype=np.int64)
        super().__init__(name=parent.name, split=parent.split, num_classes=parent.num_classes,
                         labels=parent.labels[self.index], normalize=parent.normalize,
                         train_view=parent.train_view, image_shape=parent.image_shape)

    def images(self, index: np.ndarray) -> Tensor:
        return self.parent.images(self.index[np.asarray(index, dtype=np.int64)])

    def load(self, i: int) -> Tensor:
        return self.parent.load(int(self.index[i]))

    def open_image(self, i: int) -> Image:
        return self.parent.open_image(int(self.index[i]))

    def _fingerprint_into(self, h: "hashlib._Hash") -> None:
        h.update(self.parent.fingerprint.encode())
        h.update(self.index.astype("<i8").tobytes())


# Batches of items, rows of the store: every loop takes either (see ``rows`` and ``rows_per_item``).
Dataset = ImageDataset | TextDataset

# --------------------------------------------------------------------------- registry
_DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset", "logitcache dump --help")
TEXT_KIND = "text"  # text:PATH, opened with a tokenizer and a sequence length (open_text)

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Measured once on the digits train split (grey, repeated over three channels).
DIGITS_STATS = ((0.3055,) * 3, (0.3759,) * 3)


def open_dataset(
    name: str, split: str = "train", *, data_root: str | os.PathLike | None = None, download: bool = False,
    model: str | None = None, seq_len: int | None = None,
) -> Dataset:
    """Open one split of a registered dataset.

    Args:
        name: ``cifar10``, ``cifar100``, ``digits``, ``imagefolder:<path>``,
            ``synthetic[:key=value,...]`` or ``text:<path>``.
        split: ``train`` or ``test``.
        data_root: where CIFAR lives (the folder holding ``cifar-100-python/``); ignored by the others.
        download: let torchvision download CIFAR into ``data_root`` (off by default: nothing is
            fetched unless asked).
        model: text only: the ``hf:`` model whose tokenizer tokenises the text.
        seq_len: text only: tokens per packed sequence.
    """
    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    kind, _, arg = name.partition(":")
    if kind == TEXT_KIND:
        return open_text(name=name, arg=arg, split=split, model=model, seq_len=seq_len)
    if seq_len is not None:
        raise BadInput(f"--seq-len is for text datasets (text:PATH), not {name}: drop it")
    return _DATASETS.get(kind)(name=name, arg=arg, split=split, data_root=data_root, download=download)


def list_datasets() -> list[str]:
    return _DATASETS.names()


@_DATASETS.decorator("cifar10")
def _cifar10(**kw) -> ImageDataset:
    return _cifar("cifar10", **kw)


@_DATASETS.decorator("cifar100")
def _cifar100(**kw) -> ImageDataset:
    return _cifar("cifar100", **kw)


def _cifar(kind: str, *, name: str, arg: str, split: str, data_root, download: bool) -> ImageDataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    if arg not in ("", "nocheck"):
        raise BadInput(f"{kind} takes no argument but :nocheck (skip torchvision's MD5 check); give its folder "
                       "with --data-root")
    folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    if data_root is None:
        raise DataError(f"{kind} needs --data-root: the folder that holds {folder}/ (add --download to fetch it there)")
    root = Path(data_root).expanduser()
    if not download and not (root / folder).is_dir():
        raise DataError(
            f"{kind} not found: {root / folder} does not exist; pass --data-root pointing to the folder "
            f"that holds {folder}/, or add --download"
        )
    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    if arg == "nocheck":
        data, labels, classes = _read_cifar_batches(cls, root / folder, split)
    else:
        try:
            ds = cls(str(root), train=split == "train", download=download)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted"
            raise DataError(_cifar_check_failed(kind, cls, root / folder)) from None
        data, labels, classes = ds.data, np.asarray(ds.targets), ds.classes
    mean, std = CIFAR_STATS[kind]
    return TensorDataset(
        name=name,
        split=split,
        num_classes=len(classes),
        labels=labels,
        data=torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(),
        normalize=Normalize(mean, std),
        train_view=ViewSpec(kind="crop", size=32, padding=4, flip=True),
    )


def _cifar_check_failed(kind: str, cls: type, folder: Path) -> str:
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        return f"{kind} under {folder} is incomplete (no {', '.join(missing[:3])}): re-download it with --download"
    return (
        f"{kind} under {folder} fails torchvision's MD5 checksum (a subset, or a re-packed copy?): re-download it "
        f"with --download, or load it as it is with --dataset {kind}:nocheck (the cache's dataset fingerprint "
        "covers the content either way)"
    )


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch files without running code: only numpy's array reconstruction may be
    called (the MD5 check that vouches for the official files is skipped with :nocheck)."""

    _ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                          ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                          ("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batches(cls: type, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A CIFAR-format folder read as torchvision does, without its MD5 check: (N, 32, 32, 3) uint8
    images, labels and class names."""

    def load(name: str) -> dict:
        try:
            with open(folder / name, "rb") as f:
                entry = _CifarUnpickler(f, encoding="latin1").load()
        except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{folder / name} is not a readable CIFAR batch file ({e})") from None
        if not isinstance(entry, dict):
            raise DataError(f"{folder / name} is not a CIFAR batch file (it holds a {type(entry).__name__})")
        return entry

    data, labels = [], []
    for name, _ in cls.train_list if split == "train" else cls.test_list:
        entry = load(name)
        try:
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{folder / name} is not a CIFAR batch file ({type(e).__name__}: {e})") from None
    classes = list(load(cls.meta["filename"]).get(cls.meta["key"], []))
    images = np.vstack(data).transpose(0, 2, 3, 1)
    targets = np.asarray(labels, dtype=np.int64)
    if len(targets) != len(images) or not classes or (targets.size and not 0 <= targets.min() <= targets.max() < len(classes)):
        raise DataError(f"{folder}: {len(images)} images, {len(targets)} labels and {len(classes)} classes do not fit together")
    return np.ascontiguousarray(images), targets, classes


@_DATASETS.decorator("digits")
def _digits(*, name: str, arg: str, split: str, data_root, download: bool) -> ImageDataset:
    if arg:
        raise BadInput("digits takes no argument")
    with shipped("digits.npz").open("rb") as f:
        arrays = np.load(f)
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    grey = torch.from_numpy(images)[:, None]  # (N, 1, 8, 8)
    return TensorDataset(
        name=name,
        split=split,
        num_classes=10,
        labels=labels,
        data=grey.expand(-1, 3, -1, -1).contiguous(),
        normalize=Normalize(*DIGITS_STATS),
        # Flips change what a digit is; a one-pixel shift does not.
        train_view=ViewSpec(kind="crop", size=8, padding=1, flip=False),
    )


_SYNTHETIC_DEFAULTS = {"n": 512, "classes": 10, "size": 32, "seed": 0}


@_DATASETS.decorator("synthetic")
def _synthetic(*, name: str, arg: str, split: str, data_root, download: bool) -> ImageDataset:
    opts = dict(_SYNTHETIC_DEFAULTS)
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key not in opts or not value.isdigit():
            raise BadInput(f"cannot read synthetic option {item!r}: use e.g. synthetic:n=512,classes=10,size=32,seed=0")
        opts[key] = int(value)
    n, classes, size, seed = opts["n"], opts["classes"], opts["size"], opts["seed"]
    if n < 1 or classes < 2 or size < 1:
        raise BadInput(f"synthetic needs n >= 1, classes >= 2 and size >= 1, got {arg!r}")
    # Each class is a random prototype; samples are noisy copies, so models can learn them.
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (classes, 3, size, size), generator=gen, dtype=torch.int16)
    gen.manual_seed(seed * 2 + (split == "test") + 1)
    labels = torch.randint(0, classes, (n,), generator=gen)
    noise = torch.randint(-48, 49, (n, 3, size, size), generator=gen, dtype=torch.int16)
    data = (protos[labels] + noise).clamp(0, 255).to(torch.uint8)
    return TensorDataset(
        name=name,
        split=split,
        num_classes=classes,
        labels=labels.numpy(),
        data=data,
        normalize=Normalize((0.5,) * 3, (0.25,) * 3),
        train_view=ViewSpec(kind="crop", size=size, padding=max(1, size // 8), flip=True),
    )


@_DATASETS.decorator("imagefolder")
def _imagefolder(*, name: str, arg: str, split: str, data_root, download: bool) -> ImageDataset:
    if not arg:
        raise BadInput("imagefolder needs a path: --dataset imagefolder:/data/imagenet")
    base = Path(arg).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist: check the path after imagefolder:")
    # ImageNet layout: <path>/train and <path>/val (or test); a bare class folder is the train split.
    candidates = ["train"] if split == "train" else ["val", "test"]
    root = next((base / c for c in candidates if (base / c).is_dir()), None)
    if root is None:
        if split != "train":
            raise DataError(f"image folder {base} has no val/ or test/ folder: add one to evaluate on")
        root = base
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {root} has no class folders: expected {root}/<class>/<image>")
    files, labels = [], []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / cls):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fn), root)
                if not fn.lower().endswith(_IMAGE_EXTENSIONS):
                    raise DataError(f"{root / rel} is not an image ({', '.join(_IMAGE_EXTENSIONS)}): move it out of the folder")
                files.append(rel)
                labels.append(label)
    mean, std = IMAGENET_STATS
    return FolderDataset(
        name=name,
        split=split,
        num_classes=len(classes),
        labels=np.asarray(labels, dtype=np.int64),
        files=files,
        root=root,
        classes=classes,
        normalize=Normalize(mean, std),
        train_view=ViewSpec(kind="resized_crop", size=224, flip=True),
    )
