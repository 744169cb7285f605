"""The encoding interface and its registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..._registry import Registry
from ...errors import DataError, NonFiniteLogits
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
        """(B, C) fp32 logits and (B,) labels -> one (B, *trailing) array per field.

        Raises:
            NonFiniteLogits: NaN/inf in what the encoding would store, or in a row's logsumexp
                (:func:`require_finite`): an encoding never stores a non-finite number.
        """
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

    def class_indices(self, arrays: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray] | None:
        """The name (``topk_indices``, ``sample_indices``: whatever their layout) and (B, slots) int64
        values of the stored class indices, for range checks; None for an encoding that stores none."""
        return None

    # Class indices, in the layout the spec records (``EncodingInfo.indices``): one place for
    # top-k and sampled, so that the two never lay them out differently.
    def index_field(self, name: str, count: int) -> Field:
        if self.info.indices == "int":
            return Field(name, (count,), index_dtype(self.num_classes))
        return Field(f"{name}_packed", (packed_width(count, self.num_classes),), "uint8")

    def store_indices(self, name: str, indices: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """(B, count) class indices -> the one stored array of ``index_field(name, count)``."""
        a = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices)
        if self.info.indices == "int":
            return {name: a.astype(index_dtype(self.num_classes))}
        return {f"{name}_packed": pack_indices(a, self.num_classes)}

    def load_indices(self, arrays: Mapping[str, np.ndarray | Tensor], name: str, count: int) -> np.ndarray:
        """Inverse of :meth:`store_indices`: (B, count) int64."""
        if self.info.indices == "int":
            return np.asarray(arrays[name]).astype(np.int64)
        return unpack_indices(np.asarray(arrays[f"{name}_packed"]), count, self.num_classes)

    def raw_bytes_per_sample(self) -> int:
        return sum(int(np.prod(f.trailing, dtype=np.int64)) * np.dtype(f.dtype).itemsize for f in self.fields())


_ENCODINGS: Registry[Callable[[EncodingInfo, int], Encoding]] = Registry("encoding", "logitcache dump --help")


def register_encoding(kind: str) -> Callable:
    return _ENCODINGS.decorator(kind)


def get_encoding(info: EncodingInfo, num_classes: int) -> Encoding:
    return _ENCODINGS.get(info.kind)(info, num_classes)


def list_encodings() -> list[str]:
    return _ENCODINGS.names()


def require_finite(kind: str, *stored: Tensor) -> None:
    """Refuse a batch where any of ``stored`` ((B,) or (B, n) each) holds NaN/inf, naming its first such row.

    What an encoding stores decides what it checks, on (B, k + 2) numbers rather than all (B, C)
    logits: a NaN or +inf anywhere in a row reaches its logsumexp, a -inf is a probability of 0
    that only matters where it would be stored.

    Raises:
        NonFiniteLogits: with the first such row.
    """
    ok = torch.ones(len(stored[0]), dtype=torch.bool, device=stored[0].device)
    for t in stored:
        ok &= torch.isfinite(t).all(dim=1) if t.dim() > 1 else torch.isfinite(t)
    if not bool(ok.all()):
        raise NonFiniteLogits(int((~ok).nonzero()[0, 0]), kind)


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
    """The narrowest integer type that holds a class index (format 2's layout, ``indices="int"``)."""
    return "uint8" if num_classes <= 256 else "int16" if num_classes <= 32768 else "int32"


MAX_INDEX_BITS = 56  # an index plus its bit offset (< 8) within the 8 bytes unpack_indices reads at most


def index_bits(num_classes: int) -> int:
    """Bits of one packed class index: ceil(log2(C)), at least 1 (15 at C = 32,000; 17 at 128,000)."""
    return max(1, (num_classes - 1).bit_length())


def packed_width(count: int, num_classes: int) -> int:
    """Bytes per row of ``count`` packed indices: ceil(count * bits / 8)."""
    return -(-count * index_bits(num_classes) // 8)


def pack_indices(indices: np.ndarray, num_classes: int) -> np.ndarray:
    """(..., count) integers in 0..C-1 -> (..., packed_width) uint8.

    Little-endian within each row: bit i of index j is bit ``j * bits + i`` of the row, and bit p of
    the row is bit ``p % 8`` of byte ``p // 8``; the last byte's unused high bits are 0.
    """
    bits = index_bits(num_classes)
    if bits > MAX_INDEX_BITS:
        raise ValueError(f"{num_classes} classes need {bits}-bit indices; at most {MAX_INDEX_BITS} are packed")
    a = np.asarray(indices)
    lead, count = a.shape[:-1], a.shape[-1]
    flat = a.reshape(-1, count).astype(np.uint64)
    planes = ((flat[:, :, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    packed = np.packbits(planes.reshape(len(flat), count * bits), axis=1, bitorder="little")
    return packed.reshape(*lead, packed.shape[-1])


def unpack_indices(packed: np.ndarray, count: int, num_classes: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: (..., packed_width) uint8 -> (..., count) int64.

    Each index is read with one little-endian load at its first byte (4 bytes while an index and
    its bit offset fit in 32 bits, i.e. up to 25-bit indices, 2**25 classes; else 8), a shift and
    a mask, vectorised over rows and indices (no per-bit work).
    """
    bits = index_bits(num_classes)
    size, word = (4, np.uint32) if bits <= 25 else (8, np.uint64)
    p = np.asarray(packed, dtype=np.uint8)
    lead, width = p.shape[:-1], p.shape[-1]
    flat = p.reshape(-1, width)
    padded = np.zeros((len(flat), width + size), dtype=np.uint8)  # the last load may run past the row
    padded[:, :width] = flat
    start = np.arange(count, dtype=np.int64) * bits
    loads = np.ascontiguousarray(padded[:, (start // 8)[:, None] + np.arange(size)]).view(f"<u{size}")[..., 0]
    out = (loads >> (start % 8).astype(word)) & word((1 << bits) - 1)
    return out.astype(np.int64).reshape(*lead, count)
