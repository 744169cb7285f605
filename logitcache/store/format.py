"""The logitcache store format, version 1, as frozen dataclasses.

A store is a zarr v3 group. Its attribute ``logitcache`` holds a :class:`CacheSpec` (what the
cache *is*: teacher, dataset, views, encoding, layout; two dumps with equal specs write equal
arrays) and a :class:`Provenance` (how and when it was made, teacher accuracy, completion).
``docs/format.md`` describes every field and array; keep the two in step, and bump
``FORMAT_VERSION`` whenever a reader of the old version would misread a new store.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInput, CacheMismatch

FORMAT_VERSION = 1
ATTR = "logitcache"
DTYPES = ("fp32", "fp16", "bf16")
TOPK_DTYPES = DTYPES + ("q8",)
COMPRESSORS = ("blosc", "none")
BLOSC_CNAMES = ("zstd", "lz4", "lz4hc", "blosclz", "zlib", "snappy")
SHUFFLES = ("shuffle", "bitshuffle", "noshuffle")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise BadInput(message)


@dataclass(frozen=True, kw_only=True)
class TeacherInfo:
    """The teacher network: registry name, class count and a hash of its weights."""

    name: str
    weights_sha256: str
    num_classes: int

    def __post_init__(self) -> None:
        _check(len(self.weights_sha256) == 64, "teacher.weights_sha256 must be a sha256 hex digest")
        _check(self.num_classes >= 2, "teacher.num_classes must be >= 2")


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """The dataset split the logits belong to, identified by a content fingerprint."""

    name: str
    split: str
    num_samples: int
    num_classes: int
    fingerprint: str

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, "dataset.num_samples must be >= 1")
        _check(self.num_classes >= 2, "dataset.num_classes must be >= 2")


@dataclass(frozen=True, kw_only=True)
class ViewsInfo:
    """The stored views: ``clean`` view 0 (if any), then ``count`` augmented views."""

    count: int
    clean: bool
    seed: int
    augmentation: dict[str, Any]

    def __post_init__(self) -> None:
        _check(self.count >= 1, f"need at least one augmented view (--views >= 1), got {self.count}")
        _check(self.seed >= 0, "views.seed must be >= 0")

    @property
    def total(self) -> int:
        """Number of stored views (the leading axis of every per-view array)."""
        return self.count + int(self.clean)

    @property
    def augmented(self) -> range:
        """Stored view numbers of the augmented views."""
        return range(int(self.clean), self.total)


@dataclass(frozen=True, kw_only=True)
class EncodingInfo:
    """How logits are stored: ``full`` (all C logits) or ``topk`` (k values + scalars)."""

    kind: str
    dtype: str
    k: int = 0

    def __post_init__(self) -> None:
        _check(self.kind in ("full", "topk"), f"unknown encoding {self.kind!r}: use full or topk")
        allowed = DTYPES if self.kind == "full" else TOPK_DTYPES
        _check(self.dtype in allowed, f"encoding {self.kind} stores {', '.join(allowed)}; got {self.dtype!r}")
        if self.kind == "full":
            _check(self.k == 0, "a full encoding has no k")
        else:
            _check(self.k >= 1, f"top-k needs k >= 1, got {self.k}")

    def describe(self) -> str:
        return f"full {self.dtype}" if self.kind == "full" else f"top-{self.k} {self.dtype}"


@dataclass(frozen=True, kw_only=True)
class CodecInfo:
    """Compression and integrity of every chunk."""

    compressor: str = "blosc"
    cname: str = "zstd"
    clevel: int = 5
    shuffle: str = "shuffle"
    checksum: bool = True

    def __post_init__(self) -> None:
        _check(self.compressor in COMPRESSORS, f"unknown compressor {self.compressor!r}: use {', '.join(COMPRESSORS)}")
        if self.compressor == "blosc":
            _check(self.cname in BLOSC_CNAMES, f"unknown blosc compressor {self.cname!r}: use {', '.join(BLOSC_CNAMES)}")
        _check(self.shuffle in SHUFFLES, f"unknown shuffle {self.shuffle!r}: use {', '.join(SHUFFLES)}")
        _check(0 <= self.clevel <= 9, f"compression level must be 0..9, got {self.clevel}")

    def describe(self) -> str:
        base = "uncompressed" if self.compressor == "none" else f"blosc-{self.cname}-{self.clevel} {self.shuffle}"
        return base + (" + crc32c" if self.checksum else "")

    @classmethod
    def parse(cls, text: str) -> CodecInfo:
        """CLI form: ``none``, ``blosc-zstd-5``, ``blosc-lz4-3-bitshuffle``..."""
        if text == "none":
            return cls(compressor="none")
        parts = text.split("-")
        try:
            if parts[0] == "blosc" and 2 <= len(parts) <= 4:
                return cls(
                    cname=parts[1],
                    clevel=int(parts[2]) if len(parts) > 2 else 5,
                    shuffle=parts[3] if len(parts) > 3 else "shuffle",
                )
        except BadInput:  # a readable form with a bad value: its own message names the valid ones
            raise
        except ValueError:
            pass
        raise BadInput(f"cannot read codec {text!r}: use none or blosc-CNAME[-LEVEL[-SHUFFLE]], e.g. blosc-zstd-5")


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Chunking along samples. A block (a shard, or a chunk when unsharded) is the write unit."""

    chunk_samples: int
    shard_chunks: int = 0  # 0: no sharding

    def __post_init__(self) -> None:
        _check(self.chunk_samples >= 1, "chunk_samples must be >= 1")
        _check(self.shard_chunks >= 0, "shard_chunks must be >= 0")

    @property
    def block_samples(self) -> int:
        return self.chunk_samples * max(1, self.shard_chunks)

    def num_blocks(self, num_samples: int) -> int:
        return -(-num_samples // self.block_samples)

    def block_range(self, block: int, num_samples: int) -> range:
        start = block * self.block_samples
        return range(start, min(start + self.block_samples, num_samples))


@dataclass(frozen=True, kw_only=True)
class CacheSpec:
    """Everything that determines a cache's arrays. Equal specs give equal arrays."""

    format_version: int = FORMAT_VERSION
    teacher: TeacherInfo
    dataset: DatasetInfo
    views: ViewsInfo
    encoding: EncodingInfo
    codec: CodecInfo = field(default_factory=CodecInfo)
    layout: Layout
    batch_size: int  # teacher forward batch: float results may depend on it, so resume keeps it

    def __post_init__(self) -> None:
        _check(self.teacher.num_classes == self.dataset.num_classes, (
            f"teacher {self.teacher.name} has {self.teacher.num_classes} classes but dataset "
            f"{self.dataset.name} has {self.dataset.num_classes}: use a teacher trained on this dataset"
        ))
        if self.encoding.kind == "topk":
            _check(self.encoding.k < self.dataset.num_classes, (
                f"top-k needs k < number of classes ({self.dataset.num_classes}), got k={self.encoding.k}: "
                "lower --topk or store --full logits"
            ))
        _check(self.batch_size >= 1, "batch_size must be >= 1")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CacheSpec:
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CacheMismatch(
                f"store format version {version} is newer than this logitcache reads ({FORMAT_VERSION}): "
                "upgrade logitcache (pip install -U logitcache)"
            )
        try:
            return cls(
                format_version=version,
                teacher=TeacherInfo(**d["teacher"]),
                dataset=DatasetInfo(**d["dataset"]),
                views=ViewsInfo(**d["views"]),
                encoding=EncodingInfo(**d["encoding"]),
                codec=CodecInfo(**d["codec"]),
                layout=Layout(**d["layout"]),
                batch_size=d["batch_size"],
            )
        except (KeyError, TypeError) as e:
            raise CacheMismatch(f"store metadata is malformed ({e}): the store was not written by logitcache") from None

    def differences(self, other: CacheSpec) -> list[str]:
        """Dotted field names whose values differ, with both values, for error messages."""
        return _diff(self.to_json(), other.to_json(), "")

    def short_id(self) -> str:
        """A 12-hex content fingerprint of the spec, for naming stores in a cache home."""
        import hashlib

        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """How the cache was made; not part of its identity."""

    tool_version: str
    created_at: str
    complete: bool = False
    finished_at: str | None = None
    teacher_test_accuracy: float | None = None
    teacher_test_samples: int | None = None
    device: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Provenance:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} vs {b!r}"]
