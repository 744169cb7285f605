"""The logitcache store format, version 3, as frozen dataclasses.

A store is a zarr v3 group. Its attribute ``logitcache`` holds a :class:`CacheSpec` (what the
cache *is*: teacher, dataset, views, encoding, layout; two dumps with equal specs write equal
arrays) with its sha256 (``spec_sha256``: a spec edited after the dump is refused), and a
:class:`Provenance` (how and when it was made, teacher accuracy, completion).
``docs/format.md`` describes every field and array; keep the two in step, and bump
``FORMAT_VERSION`` whenever a reader of the old version would misread a new store.

Version 3 packs the class indices of top-k and sampled stores into the bits the class count
needs (``EncodingInfo.indices == "packed"``); version 2 stored them as whole integers, and is
still read: its spec is taken as ``indices="int"``, the layout its arrays have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInput, CacheCorrupt, CacheMismatch, CacheOutdated

FORMAT_VERSION = 3
OLDEST_READABLE = 2  # format 2 differs only in its whole-integer class indices, which are still read
ATTR = "logitcache"
DTYPES = ("fp32", "fp16", "bf16")
TOPK_DTYPES = DTYPES + ("q8",)
SAMPLED_DTYPES = ("fp32",)  # the sampled encoding stores counts; its two scalars are fp32
ENCODING_KINDS = ("full", "topk", "sampled")
MAX_SAMPLES = 65535  # counts are stored as uint16 at most
COMPRESSORS = ("blosc", "none")
BLOSC_CNAMES = ("zstd", "lz4", "lz4hc", "blosclz", "zlib", "snappy")
SHUFFLES = ("shuffle", "bitshuffle", "noshuffle")
# How top-k and sampled stores keep class indices: "packed", ceil(log2(C)) bits each, little-endian,
# row by row (format 3's default); "int", the narrowest whole integer type (format 2's layout).
INDEX_LAYOUTS = ("packed", "int")
PRECISIONS = ("fp32", "bf16", "fp16")  # of the teacher's forward: fp32, or autocast to bf16/fp16


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise BadInput(message)


def _without_unset(part: Any, optional: tuple[str, ...]) -> dict[str, Any]:
    """A spec part's fields, leaving out the ``optional`` ones that are unset (empty, 0): fields added
    for some models or datasets only, so that the specs (and ids) of the others are what they were."""
    d = dataclasses.asdict(part)
    for key in optional:
        if not d[key]:
            del d[key]
    return d


@dataclass(frozen=True, kw_only=True)
class TeacherInfo:
    """The teacher network: registry name, class count and a hash of its weights.

    ``input``: the teacher's own input configuration (``models.ModelInput.to_json``: mean, std,
    size, crop share, ...; timm's pretrained config) when it has one, which the views were
    normalised with; empty (and left out of the JSON, so older specs keep their identity) for a
    teacher that takes the dataset's. ``tokenizer``: a language model's tokenizer identity
    (``models.hf.tokenizer_sha256``); "" (and left out of the JSON) for image models.
    """

    name: str
    weights_sha256: str
    num_classes: int
    input: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""

    def __post_init__(self) -> None:
        _check(len(self.weights_sha256) == 64, "teacher.weights_sha256 must be a sha256 hex digest")
        _check(self.num_classes >= 2, "teacher.num_classes must be >= 2")

    def to_json(self) -> dict[str, Any]:
        return _without_unset(self, ("input", "tokenizer"))


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """The dataset split the logits belong to, identified by a content fingerprint. For text,
    ``num_samples`` counts token positions (rows), and ``tokenizer`` and ``seq_len`` say how the
    text was tokenised and packed; both are left out of an image dataset's JSON."""

    name: str
    split: str
    num_samples: int
    num_classes: int
    fingerprint: str
    tokenizer: str = ""
    seq_len: int = 0

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, "dataset.num_samples must be >= 1")
        _check(self.num_classes >= 2, "dataset.num_classes must be >= 2")

    def to_json(self) -> dict[str, Any]:
        return _without_unset(self, ("tokenizer", "seq_len"))

    @property
    def rows_per_item(self) -> int:
        """Store rows per dataset item (what an augmentation transforms, and what holds one seed):
        a sequence's positions for text, one for an image."""
        return self.seq_len or 1


@dataclass(frozen=True, kw_only=True)
class ViewsInfo:
    """The stored views: ``clean`` view 0 (if any), then ``count`` augmented views."""

    count: int
    clean: bool
    seed: int
    augmentation: dict[str, Any]

    def __post_init__(self) -> None:
        # Text has only the clean view 0 (count 0, no augmentation); images need augmented views.
        _check(self.count >= 1 or (self.count == 0 and self.clean and not self.augmentation),
               f"need at least one augmented view (--views >= 1), got {self.count}")
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
    """How logits are stored: ``full`` (all C logits), ``topk`` (k values + scalars) or ``sampled``.

    ``sampled`` stores the distinct classes of ``samples`` draws with replacement from the
    teacher's softmax at ``temperature``, with their counts, plus fp32 scalars (``dtype`` is
    always ``fp32``); ``samples`` and ``temperature`` are 0 for the other kinds. ``indices`` is the
    layout of top-k and sampled class indices (:data:`INDEX_LAYOUTS`); a full encoding has none.
    """

    kind: str
    dtype: str
    k: int = 0
    samples: int = 0
    temperature: float = 0.0
    indices: str = "packed"

    def __post_init__(self) -> None:
        if isinstance(self.temperature, int) and not isinstance(self.temperature, bool):
            object.__setattr__(self, "temperature", float(self.temperature))  # 1 and 1.0: one spec, one id
        _check(self.kind in ENCODING_KINDS, f"unknown encoding {self.kind!r}: use {', '.join(ENCODING_KINDS)}")
        allowed = {"full": DTYPES, "topk": TOPK_DTYPES, "sampled": SAMPLED_DTYPES}[self.kind]
        _check(self.dtype in allowed, f"encoding {self.kind} stores {', '.join(allowed)}; got {self.dtype!r}")
        if self.kind == "topk":
            _check(self.k >= 1, f"top-k needs k >= 1, got {self.k}")
        else:
            _check(self.k == 0, f"a {self.kind} encoding has no k")
        if self.kind == "sampled":
            _check(1 <= self.samples <= MAX_SAMPLES, f"--sample needs 1 <= N <= {MAX_SAMPLES} draws, got {self.samples}")
            _check(math.isfinite(self.temperature) and self.temperature > 0,
                   f"--sample-temperature must be a finite number > 0, got {self.temperature}")
        else:
            _check(self.samples == 0 and self.temperature == 0, f"a {self.kind} encoding has no samples or temperature")
        _check(self.indices in INDEX_LAYOUTS, f"unknown index layout {self.indices!r}: use {', '.join(INDEX_LAYOUTS)}")

    def to_json(self) -> dict[str, Any]:
        """The fields; ``samples`` and ``temperature`` only for ``sampled``, so that full and top-k
        specs (and their ids) are what they were before the sampled encoding existed; ``indices``
        only where there are indices."""
        d = dataclasses.asdict(self)
        if self.kind != "sampled":
            del d["samples"], d["temperature"]
        if self.kind == "full":
            del d["indices"]
        return d

    def describe(self) -> str:
        if self.kind == "sampled":
            return f"sampled {self.samples} draws at T={self.temperature:g}"
        return f"full {self.dtype}" if self.kind == "full" else f"top-{self.k} {self.dtype}"

    def slug(self) -> str:
        """A short file-name form: ``full-fp16``, ``top10-fp16``, ``sampled50-t1``."""
        if self.kind == "sampled":
            return f"sampled{self.samples}-t{self.temperature:g}"
        return f"full-{self.dtype}" if self.kind == "full" else f"top{self.k}-{self.dtype}"


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

    def block_slice(self, block: int, num_samples: int) -> slice:
        rows = self.block_range(block, num_samples)
        return slice(rows.start, rows.stop)


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
    # How the teacher's forward ran: a bf16 or fp16 teacher is another teacher output (its logits
    # differ from fp32's by far more than storage rounding), and channels-last kernels round
    # differently, so both are identity, kept by a resume and replayed by verify.
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check(self.precision in PRECISIONS, f"unknown precision {self.precision!r}: use {', '.join(PRECISIONS)}")
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
        if self.format_version == 2 and self.encoding.kind != "full":  # (format 1 is parsed only to be deleted)
            _check(self.encoding.indices == "int", "a store of format 2 keeps whole-integer class indices (indices='int')")
        _check(self.teacher.tokenizer == self.dataset.tokenizer,
               f"teacher {self.teacher.name} has another tokenizer than the dataset was tokenised with")
        if self.dataset.seq_len:  # a block holds whole sequences
            _check(self.layout.chunk_samples % self.dataset.seq_len == 0 and self.dataset.num_samples % self.dataset.seq_len == 0,
                   f"--chunk-samples {self.layout.chunk_samples} must be a multiple of --seq-len {self.dataset.seq_len}")

    def to_json(self) -> dict[str, Any]:
        """The fields; ``precision`` and ``channels_last`` only where they are not fp32 and off, so
        that the specs (and ids) of stores dumped before they existed are what they were."""
        d = self._fields_json()
        for name in _OMITTED_AT_DEFAULT:
            if d[name] == _SPEC_DEFAULTS[name]:
                del d[name]
        return d

    def _fields_json(self) -> dict[str, Any]:
        encoding = self.encoding.to_json()
        if self.format_version < 3:  # format 2's spec had no such key: its JSON (and digest) as it was written
            encoding.pop("indices", None)
        return {**dataclasses.asdict(self), "teacher": self.teacher.to_json(), "dataset": self.dataset.to_json(),
                "encoding": encoding}

    @classmethod
    def from_json(cls, d: Any, *, location: str = "the store", older: bool = False) -> CacheSpec:
        """Parse a stored spec: version first (``older``: accept older ones), then every field's JSON
        type, then the dataclasses' checks."""
        check_version(d, location, older=older)
        try:
            enc = d.get("encoding")
            if d["format_version"] < 3 and isinstance(enc, dict) and enc.get("kind") != "full" and "indices" not in enc:
                d = {**d, "encoding": {**d["encoding"], "indices": "int"}}  # the layout format 2 wrote
            rest = {k: v for k, v in d.items() if k not in _PARTS}
            return cls(**_typed(cls, rest, "spec"), **{name: kind(**_typed(kind, d[name], name)) for name, kind in _PARTS.items()})
        except (KeyError, TypeError, BadInput) as e:
            raise CacheMismatch(
                f"store metadata in {location} is malformed ({str(e).strip(chr(39))}): the store was not written by "
                "this logitcache; re-dump it"
            ) from None

    def differences(self, other: CacheSpec) -> list[str]:
        """Dotted field names whose values differ, with both values, for error messages."""
        return _diff(self._fields_json(), other._fields_json(), "")  # an omitted default shows as its value

    def short_id(self) -> str:
        """A 12-hex content fingerprint of the spec, for naming stores in a cache home."""
        return spec_digest(self.to_json())[:12]


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
    def from_json(cls, d: Any, *, location: str = "the store") -> Provenance:
        """Unknown keys are ignored (a newer logitcache may add some); known ones must have their type."""
        if not isinstance(d, dict):
            raise CacheCorrupt(f"the provenance in {location}/zarr.json is not an object: re-dump the store")
        known = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        try:
            return cls(**_typed(cls, known, "provenance"))
        except (TypeError, BadInput) as e:
            raise CacheCorrupt(f"the provenance in {location}/zarr.json is malformed ({e}): re-dump the store") from None


def check_version(spec_json: Any, location: str, *, older: bool = False) -> None:
    """Refuse a spec of another format version (``older``: only a newer one): first, since another
    version may lay out the store, or even the spec, differently."""
    if not isinstance(spec_json, dict):
        raise CacheCorrupt(f"the spec in {location}/zarr.json is not an object: the store is damaged; re-dump it")
    version = spec_json.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CacheMismatch(f"store format version {version!r} of {location} is not a version number: the store is "
                            "damaged or not made by logitcache; re-dump it")
    if version > FORMAT_VERSION:
        raise CacheMismatch(
            f"store format version {version!r} is newer than this logitcache reads ({FORMAT_VERSION}): "
            "upgrade logitcache (pip install -U logitcache)"
        )
    if version < OLDEST_READABLE and not older:
        raise CacheOutdated(
            f"{location} was made by an older logitcache (store format {version}; this one reads "
            f"{OLDEST_READABLE} to {FORMAT_VERSION}): re-dump it (the same dump command with --overwrite)"
        )


def spec_digest(spec_json: Any) -> str:
    """sha256 hex of a spec's JSON with sorted keys: stored as ``spec_sha256`` next to the spec."""
    return hashlib.sha256(json.dumps(spec_json, sort_keys=True).encode()).hexdigest()


_OMITTED_AT_DEFAULT = ("precision", "channels_last")
_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CacheSpec) if f.name in _OMITTED_AT_DEFAULT}
_PARTS = {"teacher": TeacherInfo, "dataset": DatasetInfo, "views": ViewsInfo, "encoding": EncodingInfo,
          "codec": CodecInfo, "layout": Layout}
# The annotations (strings, under ``from __future__ import annotations``) that JSON values must match.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "dict[str, Any]": (dict,),
    "str | None": (str, type(None)), "int | None": (int, type(None)), "float | None": (float, int, type(None)),
}


def _typed(cls: type, d: Any, where: str) -> dict[str, Any]:
    """``d``, checked to be an object whose values have the JSON types of ``cls``'s fields (a bool is
    not an int here): the dataclasses' own checks compare numbers and would misread other types."""
    if not isinstance(d, dict):
        raise TypeError(f"{where} is not an object")
    for f in dataclasses.fields(cls):
        if f.name not in d or f.name in _PARTS:
            continue
        value, kinds = d[f.name], _JSON_TYPES[f.type]
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise TypeError(f"{where}.{f.name} is {type(value).__name__} {value!r:.40}, not {f.type}")
    return d


class _Absent:
    """A key one side's JSON leaves out (e.g. an augmentation field at its default), said as such
    rather than as ``None``."""

    def __repr__(self) -> str:
        return "not set"


_ABSENT = _Absent()


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} vs {b!r}"]
