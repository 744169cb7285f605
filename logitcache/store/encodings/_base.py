"""The encoding interface and its registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..._registry import Registry
from ...errors import DataError
from ...teacher_view import TeacherView
from ..format import EncodingInfo


@dataclass(frozen=True)
class Field:
    """One stored per-(view, sample) array: its name, trailing shape and numpy dtype."""

    name: str
    trailing: tuple[int, ...]
    dtype: str


class Encoding:
    """Base class; subclasses implement ``fields``, ``decode`` and ``encode`` (or, when the
    encoding draws from the view seeds, ``encode_pairs``)."""

    def __init__(self, info: EncodingInfo, num_classes: int) -> None:
        self.info, self.num_classes = info, num_classes

    def fields(self) -> list[Field]:
        raise NotImplementedError

    def encode(self, logits: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
        """(B, C) fp32 logits and (B,) labels -> one (B, *trailing) array per field."""
        raise NotImplementedError

    def encode_pairs(self, logits: Tensor, labels: Tensor, seeds: np.ndarray) -> dict[str, np.ndarray]:
        """Encode the rows of (view, sample) pairs given their view ``seeds``; ``logits`` on any device.

        What dump and verify call. Deterministic encodings ignore the seeds and encode on the
        CPU; ``sampled`` draws from them on the logits' device.
        """
        return self.encode(logits.float().cpu(), labels)

    def decode(self, arrays: Mapping[str, np.ndarray | Tensor], labels: np.ndarray | Tensor) -> TeacherView:
        """Rows of every field (B, ...) and their labels -> a CPU TeacherView."""
        raise NotImplementedError

    def raw_bytes_per_sample(self) -> int:
        return sum(int(np.prod(f.trailing, dtype=np.int64)) * np.dtype(f.dtype).itemsize for f in self.fields())


_ENCODINGS: Registry[Callable[[EncodingInfo, int], Encoding]] = Registry("encoding", "logitcache dump --help")


def register_encoding(kind: str) -> Callable:
    return _ENCODINGS.decorator(kind)


def get_encoding(info: EncodingInfo, num_classes: int) -> Encoding:
    return _ENCODINGS.get(info.kind)(info, num_classes)


def list_encodings() -> list[str]:
    return _ENCODINGS.names()


def to_stored(x: Tensor, dtype: str) -> np.ndarray:
    """fp32 tensor -> numpy in the stored dtype; bf16 travels as its uint16 bit pattern.

    fp16 and bf16 encodings hand this gaps from the row's top logit, not logits: their range
    then bounds how far a row spreads, not where it sits (a constant bias of 60,000 is fine).

    Raises:
        DataError: a finite value beyond the dtype's range, which would be stored as inf.
    """
    out = x.to(torch.float32 if dtype == "fp32" else torch.float16 if dtype == "fp16" else torch.bfloat16)
    if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(x).all()):
        biggest = float(x.abs().max())
        raise DataError(
            f"teacher logits of a sample lie {biggest:.6g} apart, beyond what {dtype} stores "
            f"({float(torch.finfo(out.dtype).max):.6g}): dump again with "
            + ("--dtype bf16 or --dtype fp32" if dtype == "fp16" else "--dtype fp32")
            # the refused dump's store keeps its settings; a dump with others replaces it only so
            + f", adding --overwrite to replace the unfinished {dtype} store"
        )
    return out.view(torch.uint16).numpy() if dtype == "bf16" else out.numpy()


def from_stored(a: np.ndarray | Tensor, dtype: str) -> Tensor:
    """Inverse of :func:`to_stored`, always fp32."""
    t = torch.as_tensor(a)
    return t.view(torch.bfloat16).float() if dtype == "bf16" else t.float()


STORED_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "uint16"}


def index_dtype(num_classes: int) -> str:
    """The narrowest integer type that holds a class index."""
    return "uint8" if num_classes <= 256 else "int16" if num_classes <= 32768 else "int32"
