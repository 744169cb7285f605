"""The one module that talks to zarr: create, open, lock, write and read a logitcache store.

A store location is a local path, a ``.zip`` file (read-only: a zip of a store folder's
contents) or an fsspec URL (``file://``, ``s3://``, ``memory://``...) handed to zarr's own
store classes.

Integrity: every chunk (and every shard index) carries a crc32c checksum appended by zarr's
``crc32c`` codec, so a flipped or truncated chunk fails to decode instead of returning data;
a chunk that is missing altogether (which zarr would silently read as fill values) is found by
listing the store against the chunk grid. A checksum cannot tell a valid chunk at the wrong key
(say, two label chunks swapped), so every block's content is bound to its place by a digest
(``digests``, ``label_digests``) that covers its coordinates and the bytes of every array in it.
Writes are whole blocks (a shard, or a chunk when unsharded) and each block has a progress
marker written after its data and digest, so a killed dump never leaves a half-written block
marked done. Opening a store checks its spec against the spec's digest and every array's
metadata against what the spec implies, so a hand-edited ``zarr.json`` is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync
from zarr.errors import ContainsArrayError, ContainsGroupError
from zarr.storage import FsspecStore, LocalStore, MemoryStore, ZipStore

from ..errors import CacheBusy, CacheCorrupt, CacheError, CacheMismatch, CacheNotFound
from .encodings import Field, get_encoding
from .format import ATTR, CacheSpec, Provenance, check_version, spec_digest

PROGRESS = "progress"
DIGESTS, LABEL_DIGESTS = "digests", "label_digests"  # [V, B] and [B] uint64 block digests
_BLOCK_GRID = (PROGRESS, DIGESTS, LABEL_DIGESTS)  # arrays with one element per block
READ_LOCK = "-read"  # ".lock-read": readers hold it shared, deleting a store (--overwrite) exclusively
WRITING, DONE = 1, 2  # progress marker states; 0 (absent) means not started
_ZARR_CONFIG = {"write_empty_chunks": True}  # an all-zero chunk is still written, so "absent" means lost
# zarr's LocalStore writes every object to "<key>.<uuid4 hex>.partial" and renames it into place: a
# process killed in between leaves that file behind, never a torn object at the key itself.
_PARTIAL_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")


def is_partial_write(name: str) -> bool:
    """Whether a file name is a temporary file of a zarr write that was never renamed into place."""
    return bool(_PARTIAL_WRITE.search(name))


def is_url(location: str) -> bool:
    return "://" in str(location)


def _local_path(location: str | os.PathLike) -> Path | None:
    loc = str(location)
    if loc.startswith("file://"):
        return Path(loc[len("file://") :])
    return None if is_url(loc) else Path(loc).expanduser()


def _zarr_store(location: str | os.PathLike, read_only: bool) -> Any:
    path = _local_path(location)
    if path is not None and path.suffix == ".zip":
        if not read_only:
            raise CacheError(f"{path} is a packed store and read-only: `logitcache unpack` it into a folder and write there")
        if path.is_file():  # zarr would raise BadZipFile from its first read, deep inside a command
            try:
                zipfile.ZipFile(path).close()
            except (zipfile.BadZipFile, OSError) as e:
                raise CacheNotFound(f"{path} is not a readable .zip archive ({e}): it is damaged or truncated; "
                                    "pack the store again (`logitcache pack`), or point at the store folder") from None
        return ZipStore(path, mode="r")
    if path is not None:
        return LocalStore(path, read_only=read_only)
    try:
        return FsspecStore.from_url(str(location), read_only=read_only)
    except (ValueError, ImportError) as e:  # "Protocol not known", or its package is not installed
        raise CacheError(f"cannot open {location} ({e}): use a local path or an fsspec URL whose package is "
                         "installed (s3:// needs s3fs)") from None


def _codecs(spec: CacheSpec, dtype: np.dtype) -> list[Any]:
    codec = spec.codec
    out: list[Any] = []
    if codec.compressor == "blosc":
        out.append(BloscCodec(cname=codec.cname, clevel=codec.clevel, shuffle=codec.shuffle, typesize=dtype.itemsize))
    if codec.checksum:
        out.append(Crc32cCodec())
    return out


def block_digest(view: int | None, block: int, arrays: Mapping[str, np.ndarray]) -> int:
    """64 bits of the sha256 of a block's coordinates and of every array's name, dtype, shape and
    bytes (``view`` None: the labels): a valid chunk moved to another key no longer matches."""
    h = hashlib.sha256(f"logitcache block {view} {block}".encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class ChunkProblem:
    """One bad chunk: which array, which storage key, what is wrong with it."""

    array: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.array} chunk {self.key}: {self.problem}"


class ZarrStore:
    """An open logitcache store. Use :meth:`create` or :meth:`open`."""

    def __init__(self, location: str | os.PathLike, group: zarr.Group, spec: CacheSpec, provenance: Provenance) -> None:
        self.location = str(location)
        self.group, self.spec, self.provenance = group, spec, provenance
        self._arrays: dict[str, zarr.Array] = {}

    # ------------------------------------------------------------------ open/create
    @staticmethod
    def exists(location: str | os.PathLike) -> bool:
        path = _local_path(location)
        if path is not None:
            return (path / "zarr.json").exists() if path.suffix != ".zip" else path.exists()
        with remote_errors(location):
            return bool(sync(_zarr_store(location, read_only=True).exists("zarr.json")))

    @staticmethod
    def foreign_entries(location: str | os.PathLike, arrays: Collection[str] = ()) -> list[str]:
        """The top-level entries of a location that belong to no store with these arrays: a
        dump must neither create a store among them nor delete them (``--overwrite``)."""
        own = {"zarr.json", *arrays}
        return sorted(n for n in _top_level_entries(location)
                      if n not in own and not n.startswith(".lock") and not is_partial_write(n))

    @classmethod
    def open(cls, location: str | os.PathLike, *, read_only: bool = True, checked: bool = True) -> ZarrStore:
        """Open an existing store; the format version is checked before anything is read, then the
        spec's digest and every array's metadata. ``checked=False`` (only to delete a store) takes an
        older version's or a damaged store's spec as it is: its array names are all that is used."""
        path = _local_path(location)
        if path is not None and not path.exists():
            raise CacheNotFound(f"no cache at {path}: check the path, or make one with `logitcache dump`")
        if path is not None and path.is_dir() and not (path / "zarr.json").exists():
            raise CacheNotFound(f"{path} is not a zarr store (no zarr.json): point at a store made by `logitcache dump`")
        try:
            with remote_errors(location):
                group = zarr.open_group(store=_zarr_store(location, read_only), mode="r" if read_only else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as e:
            raise CacheNotFound(f"no cache at {location} ({type(e).__name__}): check the location") from None
        except (ValueError, TypeError) as e:
            raise CacheNotFound(f"{location} is not a readable zarr v3 store ({e})") from None
        meta = group.attrs.get(ATTR)
        if not isinstance(meta, dict) or "spec" not in meta:
            raise CacheNotFound(f"{location} is a zarr group but not a logitcache store (no '{ATTR}' attribute)")
        check_version(meta["spec"], str(location), older=not checked)
        if checked and meta.get("spec_sha256") != spec_digest(meta["spec"]):  # a spec edited after the dump
            raise CacheCorrupt(
                f"the spec in {location}/zarr.json does not match its spec_sha256 (edited after the dump?): "
                "its arrays may hold something else; re-dump the store (the dump command with --overwrite)"
            )
        spec = CacheSpec.from_json(meta["spec"], location=str(location), older=not checked)
        self = cls(location, group, spec, Provenance.from_json(meta.get("provenance", {}), location=str(location)))
        if checked:
            self._check_metadata()
        return self

    @classmethod
    def create(cls, location: str | os.PathLike, spec: CacheSpec, provenance: Provenance, fields: Sequence[Field]) -> ZarrStore:
        """Create the group (with its metadata, in one write) and every array.

        Fails if the location already holds a store; a store whose creation was killed half-way
        is completed by :meth:`ensure_arrays` when it is opened for resuming.
        """
        store = _zarr_store(location, read_only=False)
        meta = {ATTR: _attrs(spec, provenance)}
        try:
            with remote_errors(location):
                group = zarr.create_group(store=store, overwrite=False, attributes=meta)
        except (ContainsGroupError, ContainsArrayError, FileExistsError):
            raise CacheMismatch(f"{location} already holds a zarr store: pass --overwrite to replace it") from None
        self = cls(location, group, spec, provenance)
        self.ensure_arrays(fields)
        return self

    def _array_args(self, fields: Sequence[Field]) -> dict[str, dict[str, Any]]:
        """``create_array`` arguments of every array of the spec and these encoding fields, by name."""
        spec = self.spec
        n, views, layout = spec.dataset.num_samples, spec.views.total, spec.layout
        blocks = layout.num_blocks(n)
        out: dict[str, dict[str, Any]] = {}

        def add(name: str, shape: tuple[int, ...], dtype: str, per_view: bool) -> None:
            dt = np.dtype(dtype)
            per = self.rows_per_element(name)  # the format checks that chunks hold whole items
            lead, lead_chunk = ((views,), (1,)) if per_view else ((), ())
            chunks = (*lead_chunk, min(layout.chunk_samples, n) // per, *shape)
            shards = (*lead_chunk, min(layout.block_samples, n) // per, *shape) if layout.shard_chunks > 0 else None
            if shards is not None and shards[len(lead)] % chunks[len(lead)]:
                shards = None  # fewer samples than a shard: one chunk per block is the same thing
            out[name] = dict(shape=(*lead, n // per, *shape), dtype=dt, chunks=chunks, shards=shards,
                             compressors=_codecs(spec, dt), fill_value=0)

        add("labels", (), "int32", per_view=False)
        add("seeds", (), "uint32", per_view=True)
        for f in fields:
            add(f.name, f.trailing, f.dtype, per_view=True)
        # One object per marker and digest, uncompressed: writing one never touches another block's.
        for name, shape, dtype in ((PROGRESS, (views, blocks), "uint8"), (DIGESTS, (views, blocks), "uint64"),
                                   (LABEL_DIGESTS, (blocks,), "uint64")):
            out[name] = dict(shape=shape, dtype=np.dtype(dtype), chunks=(1,) * len(shape), compressors=[Crc32cCodec()],
                             fill_value=0)
        return out

    def _has_array(self, name: str) -> bool:
        try:
            return name in self.group
        except (ValueError, TypeError):  # its zarr.json is damaged: array() refuses it, naming the fix
            self.array(name)
            raise

    def ensure_arrays(self, fields: Sequence[Field]) -> None:
        """Create whichever of the spec's arrays do not exist yet (all of them for a new store)."""
        path = _local_path(self.location)
        if path is not None and path.suffix != ".zip":  # readers lock it without creating it (they never write)
            (path / f".lock{READ_LOCK}").touch()
        for name, args in self._array_args(fields).items():
            if not self._has_array(name):  # probed one by one: listing the group would also meet the lock files
                self.group.create_array(name, **args, config=_ZARR_CONFIG)

    def _check_metadata(self) -> None:
        """Refuse arrays whose zarr.json differs from what the spec implies (a dtype, shape, chunk
        grid, codec or fill value edited by hand would decode to other numbers), and declared sizes
        that could not even be held in memory. Arrays not created yet are left to ``ensure_arrays``."""
        spec = self.spec
        n, views = spec.dataset.num_samples, spec.views.total
        need = n * 16 + views * spec.layout.num_blocks(n) * 9  # labels, seeds, markers and digests held whole
        if need > _physical_memory():
            raise CacheCorrupt(
                f"{self.location} declares {views} views of {n} samples, more than this machine could hold "
                f"({need / 2**30:.0f} GiB of labels, seeds and markers alone): its metadata is damaged; re-dump it"
            )
        expected = zarr.create_group(store=MemoryStore())
        for name, args in self._array_args(get_encoding(spec.encoding, spec.dataset.num_classes).fields()).items():
            if not self._has_array(name):
                continue
            want = expected.create_array(name, **args).metadata.to_dict()
            got = self.array(name).metadata.to_dict()
            for key in sorted(set(want) | set(got)):
                if want.get(key) != got.get(key):
                    raise CacheCorrupt(
                        f"array {name!r} of {self.location} ({name}/zarr.json) has {key} {got.get(key)!r:.200} where "
                        f"its spec implies {want.get(key)!r:.200}: the metadata was edited; re-dump the store "
                        "(the dump command with --overwrite)"
                    )

    @staticmethod
    def remove_partial_writes(location: str | os.PathLike) -> int:
        """Delete what killed writers left in temporary files (local stores; call holding the store
        exclusively). Returns how many were removed."""
        path = _local_path(location)
        if path is None or not path.is_dir():
            return 0
        stale = [p for p in path.rglob("*.partial") if p.is_file() and is_partial_write(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def delete(self) -> None:
        """Remove the store's own entries: its group ``zarr.json`` and its arrays (lock files stay:
        other processes may hold them). A location that also holds anything else is refused.

        The group's zarr.json goes last: a deletion killed half-way leaves a folder that still says
        it is a store (readers refuse it for its missing chunks; ``--overwrite`` deletes it again).
        """
        location, arrays = self.location, self.array_names()
        foreign = self.foreign_entries(location, arrays)
        if foreign:
            raise CacheMismatch(
                f"{location} also holds {_some(foreign)}, which are no part of its store: a dump deletes "
                "only a store's own files; move them away, or choose another --out (nothing was deleted)"
            )
        path = _local_path(location)
        if path is None:
            store = _zarr_store(location, read_only=False)
            with remote_errors(location):
                for name in arrays:
                    sync(store.delete_dir(name))
                sync(store.delete("zarr.json"))
            return
        busy = f"{location} is being read (by a training run?): let it finish, or dump to another --out"
        with flock(location, READ_LOCK, busy=busy):  # never under a reader: it would read zeros, or another cache
            # Partial writes sort before zarr.json: whatever is left, the group's metadata says what it was.
            own = [e for e in path.iterdir() if e.name in arrays or is_partial_write(e.name)]
            for entry in [*own, path / "zarr.json"]:
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)

    # ------------------------------------------------------------------ attributes
    def _write_attrs(self) -> None:
        self.group.attrs[ATTR] = _attrs(self.spec, self.provenance)

    def set_provenance(self, provenance: Provenance) -> None:
        """Replace the provenance attribute (zarr writes zarr.json by temporary file + rename)."""
        self.provenance = provenance
        self._write_attrs()

    # ------------------------------------------------------------------ arrays
    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            try:
                # The runtime config is not stored in the array's metadata: set it on every open,
                # or an all-zero chunk (say, a block of labels that are all class 0) is never written.
                self._arrays[name] = self.group[name].with_config(_ZARR_CONFIG)
            except KeyError:
                raise CacheCorrupt(f"array {name!r} is missing from {self.location}: the store is damaged; re-dump it") from None
            except (ValueError, TypeError) as e:  # a zarr.json that does not parse (json errors are ValueErrors)
                raise CacheCorrupt(
                    f"the metadata of array {name!r} ({name}/zarr.json) in {self.location} is damaged "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}): "
                    "re-dump the store (the dump command with --overwrite)"
                ) from None
        return self._arrays[name]

    def array_names(self) -> list[str]:
        """Every array of the store, from its spec (listing the group would also meet lock files)."""
        return ["labels", *self.block_names(), PROGRESS, DIGESTS, LABEL_DIGESTS]

    def block_names(self) -> list[str]:
        """The per-view arrays, which a block's digest covers: seeds, then the encoding's fields."""
        return ["seeds", *(f.name for f in get_encoding(self.spec.encoding, self.spec.dataset.num_classes).fields())]

    def rows_per_element(self, name: str) -> int:
        """Store rows one element of an array stands for: the seeds hold one seed per item (an
        augmentation transforms items; a text sequence's positions share its seed), the rest one per row."""
        return self.spec.dataset.rows_per_item if name == "seeds" else 1

    def elements(self, name: str, rows: slice | range) -> slice:
        """The elements of an array that hold a run of whole items' rows (a block's, say)."""
        per = self.rows_per_element(name)
        return slice(rows.start // per, rows.stop // per)

    def read_block(self, view: int, block: int) -> dict[str, np.ndarray]:
        """One block of every per-view array (``block_names``), as ``block_problem`` checks it."""
        rows = self.spec.layout.block_slice(block, self.spec.dataset.num_samples)
        return {name: self.read(name, view, self.elements(name, rows)) for name in self.block_names()}

    def split_block(self, data: Mapping[str, np.ndarray], block: int) -> dict[str, np.ndarray]:
        """One block's part of whole views of the per-view arrays (``data``, by name)."""
        rows = self.spec.layout.block_slice(block, self.spec.dataset.num_samples)
        return {name: arr[self.elements(name, rows)] for name, arr in data.items()}

    def write_labels(self, labels: np.ndarray) -> None:
        """Write the labels whole, then each block's digest of them."""
        labels = np.asarray(labels, dtype=np.int32)
        self._overwrite("labels", (slice(None),), labels, self.storage_keys("labels"))
        n, layout = self.spec.dataset.num_samples, self.spec.layout
        digests = [block_digest(None, b, {"labels": labels[layout.block_slice(b, n)]}) for b in range(layout.num_blocks(n))]
        self.array(LABEL_DIGESTS)[:] = np.array(digests, dtype=np.uint64)

    def write_block(self, view: int, rows: range, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one block of every per-view array (``block_names``), then its digest; ``rows`` must be
        a whole block."""
        stored = {name: self._write_rows(name, view, rows, data) for name, data in arrays.items()}
        block = rows.start // self.spec.layout.block_samples
        self.array(DIGESTS)[view, block] = block_digest(view, block, {n: stored[n] for n in self.block_names()})

    def _write_rows(self, name: str, view: int, rows: range, data: np.ndarray) -> np.ndarray:
        """One array's part of a block's rows; returns it as stored (the digest is of the stored dtype)."""
        arr, elements = self.array(name), self.elements(name, rows)
        data = np.asarray(data, dtype=arr.dtype)
        shard = (view, elements.start // arr.shards[1], *(0,) * (arr.ndim - 2)) if arr.shards else None
        keys = [arr.metadata.encode_chunk_key(shard)] if shard else []
        self._overwrite(name, (view, elements), data, keys)
        return data

    def _overwrite(self, name: str, selection: tuple, data: np.ndarray, keys: Sequence[str]) -> None:
        """``array[selection] = data``, where the selection covers the storage objects ``keys`` whole.

        zarr rewrites a shard by reading it first, so a damaged shard (the very thing a resumed
        dump or ``verify --repair`` wants rewritten) would fail the write: it is deleted, since
        nothing of it survives the write, and the write tried again.
        """
        arr = self.array(name)
        try:
            arr[selection] = data
        except Exception:
            if arr.shards is None:
                raise
            for key in keys:
                sync(self.group.store.delete(f"{name}/{key}"))
            arr[selection] = data

    def mark(self, view: int, block: int, state: int) -> None:
        self.array(PROGRESS)[view, block] = state

    def progress(self) -> np.ndarray:
        """(views, blocks) marker states; a marker that fails its checksum counts as 0."""
        return self.read_grid(PROGRESS)

    def read_grid(self, name: str) -> np.ndarray:
        """A per-block array (markers, digests); an element that fails its checksum reads as 0."""
        arr = self.array(name)
        try:
            return arr[:]
        except Exception:  # a torn marker write: read one by one, treating bad ones as not done
            out = np.zeros(arr.shape, dtype=arr.dtype)
            for c in np.ndindex(*arr.shape):
                with contextlib.suppress(Exception):
                    out[c] = arr[c]
            return out

    def read(self, name: str, view: int | None = None, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Read an array (or one view of it, or rows of that view); corrupt chunks raise CacheCorrupt."""
        arr = self.array(name)
        sel: tuple = () if view is None else (view,)
        sel += (slice(None),) if rows is None else (rows,)
        try:
            if isinstance(rows, np.ndarray):
                return arr.get_orthogonal_selection(sel)
            return arr[sel]
        except CacheError:
            raise
        except Exception as e:
            bad = self._chunk_problems([name], None if view is None else [view], decode=True)
            where = "; ".join(str(p) for p in bad[:3]) or f"{name}: {e}"
            raise CacheCorrupt(
                f"corrupt data in {self.location}: {where}. Never use it for training: run "
                "`logitcache verify` and re-dump the damaged blocks (logitcache verify --repair, then dump again)"
            ) from None

    # ------------------------------------------------------------------ integrity
    def storage_keys(self, name: str, views: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
        """Storage key -> storage-grid coordinates, for every shard/chunk of an array."""
        arr = self.array(name)
        storage = arr.shards or arr.chunks
        grid = [-(-size // step) for size, step in zip(arr.shape, storage)]
        out = {}
        for c in np.ndindex(*grid):
            if views is None or len(grid) < 2 or name == "labels" or c[0] in views:
                out[arr.metadata.encode_chunk_key(c)] = c
        return out

    def block_of(self, key: str) -> tuple[int, int]:
        """(view, block) that a per-view storage key ``name/c/<view>/<chunk>[/...]`` belongs to."""
        parts = key.split("/")
        view, chunk = int(parts[2]), int(parts[3])
        if parts[0] in _BLOCK_GRID:
            return view, chunk
        arr = self.array(parts[0])
        rows = chunk * (arr.shards or arr.chunks)[1] * self.rows_per_element(parts[0])
        return view, rows // self.spec.layout.block_samples

    # ------------------------------------------------------------------ content
    def read_labels(self) -> np.ndarray:
        """The labels, checked against their digests and the class count (CacheCorrupt otherwise)."""
        labels = self.read("labels")
        bad = self._label_problems(labels)
        if bad:
            raise CacheCorrupt(f"{self.location}: {bad[0]}. Never use it for training: re-run the dump command "
                               "(it rewrites the labels)")
        return labels

    def _label_problems(self, labels: np.ndarray) -> list[ChunkProblem]:
        n, layout, classes = self.spec.dataset.num_samples, self.spec.layout, self.spec.dataset.num_classes
        stored, arr = self.read_grid(LABEL_DIGESTS), self.array("labels")
        out = []
        for b in range(layout.num_blocks(n)):
            rows = layout.block_slice(b, n)
            if block_digest(None, b, {"labels": labels[rows]}) != stored[b]:
                key = arr.metadata.encode_chunk_key((rows.start // (arr.shards or arr.chunks)[0],))
                out.append(ChunkProblem("labels", f"labels/{key}", "content does not match its digest (a chunk from elsewhere?)"))
        outside = np.flatnonzero((labels < 0) | (labels >= classes))
        if len(outside):
            out.append(ChunkProblem("labels", "labels", f"sample {int(outside[0])} has label {int(labels[outside[0]])}, "
                                                        f"outside 0..{classes - 1}"))
        return out

    def block_problem(self, view: int, block: int, data: Mapping[str, np.ndarray], digest: int) -> str | None:
        """What is wrong with a block's content as read (every ``block_names`` array): a digest that
        differs from ``digest`` (the stored one), class indices beyond the class count, or draws
        that do not add up to the sampled encoding's N."""
        if block_digest(view, block, {n: data[n] for n in self.block_names()}) != digest:
            return f"view {view} block {block}: content does not match its digest (a chunk from elsewhere, or never written)"
        classes, first = self.spec.dataset.num_classes, self.spec.layout.block_slice(block, self.spec.dataset.num_samples).start
        # Checked unpacked: packed indices of b bits reach 2**b - 1, which may be C or more.
        stored = get_encoding(self.spec.encoding, classes).class_indices(data)
        if stored is not None:
            name, indices = stored
            outside = np.flatnonzero(((indices < 0) | (indices >= classes)).any(axis=-1))
            if len(outside):
                return f"view {view} sample {first + int(outside[0])}: {name} outside 0..{classes - 1}"
        counts, draws = data.get("sample_counts"), self.spec.encoding.samples
        wrong = [] if counts is None else np.flatnonzero(counts.astype(np.int64).sum(axis=-1) != draws)
        if len(wrong):
            return f"view {view} sample {first + int(wrong[0])}: sample_counts do not add up to {draws} draws"
        return None

    def listed_keys(self) -> set[str]:
        store = self.group.store
        return set(sync(_collect(store.list_prefix(""))))

    def check_chunks(
        self, names: Sequence[str] | None = None, *, views: Sequence[int] | None = None, decode: bool = True
    ) -> list[ChunkProblem]:
        """Every storage object of the given arrays present, not empty and (optionally) decoding cleanly,
        and then (with ``decode``) the content of every block checked against its digest."""
        names = list(names) if names is not None else self.array_names()
        problems = self._chunk_problems(names, views, decode)
        return problems + self._content_problems(names, views, problems) if decode else problems

    def _chunk_problems(self, names: Sequence[str], views: Sequence[int] | None, decode: bool) -> list[ChunkProblem]:
        present = self.listed_keys()
        problems: list[ChunkProblem] = []
        for name in names:
            arr = self.array(name)
            storage = arr.shards or arr.chunks
            keys = {f"{name}/{key}": coord for key, coord in self.storage_keys(name, views).items()}
            # zarr reads a zero-byte shard as fill values, without error (a zero-byte chunk fails its
            # checksum): it is as lost as a missing one. A crash after which the file system kept a
            # file's name but not its bytes leaves exactly that.
            stored = [k for k in keys if k in present] if arr.shards else []
            empty = {k for k, size in zip(stored, sync(_sizes(self.group.store, stored))) if size == 0}
            for full_key, coord in keys.items():
                if full_key not in present or full_key in empty:
                    problem = "missing" if full_key not in present else "empty (0 bytes)"
                    problems.append(ChunkProblem(name, full_key, problem))
                    continue
                if not decode:
                    continue
                sel = tuple(slice(c * s, (c + 1) * s) for c, s in zip(coord, storage))
                try:
                    arr[sel]
                except Exception as e:  # zarr raises ValueError/RuntimeError from codecs
                    problems.append(ChunkProblem(name, full_key, f"does not decode ({str(e).splitlines()[0][:120]})"))
        return problems

    def _content_problems(self, names: Sequence[str], views: Sequence[int] | None,
                          known: Sequence[ChunkProblem]) -> list[ChunkProblem]:
        """Digest and range problems of the blocks (of the arrays in ``names``) whose chunks are all
        there and decode; only blocks marked done have a digest."""
        out: list[ChunkProblem] = []
        if "labels" in names and not any(p.array in ("labels", LABEL_DIGESTS) for p in known):
            out += self._label_problems(self.read("labels"))
        block_names = self.block_names()
        if not set(block_names) <= set(names):
            return out
        n, layout = self.spec.dataset.num_samples, self.spec.layout
        damaged = {self.block_of(p.key) for p in known if p.array in (*block_names, DIGESTS)}
        digests, state = self.read_grid(DIGESTS), self.progress()
        for v in range(self.spec.views.total) if views is None else views:
            for b in range(layout.num_blocks(n)):
                if state[v, b] != DONE or (v, b) in damaged:
                    continue
                problem = self.block_problem(v, b, self.read_block(v, b), int(digests[v, b]))
                if problem:
                    out.append(ChunkProblem(DIGESTS, f"{DIGESTS}/c/{v}/{b}", problem))
        return out

    def nbytes_stored(self) -> int:
        path = _local_path(self.location)
        if path is not None and path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.name.startswith(".lock"))
        if path is not None:
            return path.stat().st_size
        return int(sync(self.group.store.getsize_prefix("")))


def _some(names: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _top_level_entries(location: str | os.PathLike) -> list[str]:
    """Names directly in a location (files and folders; for URLs, keys and prefixes); none if absent."""
    path = _local_path(location)
    if path is not None:
        return [p.name for p in path.iterdir()] if path.is_dir() else []
    with remote_errors(location):
        return sync(_collect(_zarr_store(location, read_only=True).list_dir("")))


@contextlib.contextmanager
def remote_errors(location: str | os.PathLike) -> Iterator[None]:
    """Turn what a remote store's client raises (a missing bucket, an endpoint nobody answers at,
    refused credentials) into one CacheError naming the location, instead of a traceback."""
    try:
        yield
    except CacheError:
        raise
    except Exception as e:
        client = type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs")
        if _local_path(location) is not None or not (client or isinstance(e, OSError)):
            raise
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CacheError(
            f"cannot use {location}: {detail}; check the URL, that the bucket exists, and the endpoint "
            "(AWS_ENDPOINT_URL) and credentials"
        ) from None


def _attrs(spec: CacheSpec, provenance: Provenance) -> dict[str, Any]:
    spec_json = spec.to_json()
    return {"spec": spec_json, "spec_sha256": spec_digest(spec_json), "provenance": provenance.to_json()}


async def _collect(it: Any) -> list[str]:
    return [k async for k in it]


async def _sizes(store: Any, keys: Sequence[str]) -> list[int]:
    return list(await asyncio.gather(*(store.getsize(k) for k in keys)))


def _flock(location: str, name: str, *, shared: bool, wait: bool, busy: str | None) -> Iterator[None]:
    path = _local_path(location)
    if path is None or path.suffix == ".zip":
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / f".lock{name}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise CacheBusy(busy or (
                f"another logitcache process is writing {location}: wait for it to finish, or dump to another --out"
            )) from None
        yield
    finally:
        os.close(fd)


def flock(
    location: str | os.PathLike, name: str = "", *, shared: bool = False, wait: bool = False, busy: str | None = None
) -> contextlib.AbstractContextManager[None]:
    """Hold an advisory flock on ``.lock<name>`` inside a local store location; no-op for URLs.

    The location need not hold a store yet. The kernel drops the lock when its process dies,
    even by SIGKILL, so a killed dump never leaves a stale lock behind.
    """
    return contextlib.contextmanager(_flock)(str(location), name, shared=shared, wait=wait, busy=busy)


def read_lock(location: str | os.PathLike) -> int | None:
    """A shared flock on a store's ``.lock-read``, held until the returned descriptor is closed, so
    that ``dump --overwrite`` cannot delete the store under a reader.

    Only where that file exists (every dump makes it): opening a store for reading never writes
    to it, and works on read-only files. None for URLs, zips and copies left without lock files,
    which are not protected.
    """
    path = _local_path(location)
    if path is None or not path.is_dir():
        return None
    try:
        fd = os.open(path / f".lock{READ_LOCK}", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CacheBusy(f"{location} is being replaced by `logitcache dump --overwrite`: wait for it to finish") from None
    return fd
