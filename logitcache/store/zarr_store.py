"""The one module that talks to zarr: create, open, lock, write and read a logitcache store.

A store location is a local path, a ``.zip`` file (read-only: a zip of a store folder's
contents) or an fsspec URL (``file://``, ``s3://``, ``memory://``...) handed to zarr's own
store classes.

Integrity: every chunk (and every shard index) carries a crc32c checksum appended by zarr's
``crc32c`` codec, so a flipped or truncated chunk fails to decode instead of returning data;
a chunk that is missing altogether (which zarr would silently read as fill values) is found by
listing the store against the chunk grid. Writes are whole blocks (a shard, or a chunk when
unsharded) and each block has a progress marker written after its data, so a killed dump never
leaves a half-written block marked done.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import zipfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync
from zarr.errors import ContainsArrayError, ContainsGroupError
from zarr.storage import FsspecStore, LocalStore, ZipStore

from ..errors import CacheBusy, CacheCorrupt, CacheError, CacheMismatch, CacheNotFound
from .encodings import Field, get_encoding
from .format import ATTR, CacheSpec, Provenance

PROGRESS = "progress"
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
    def open(cls, location: str | os.PathLike, *, read_only: bool = True) -> ZarrStore:
        """Open an existing store; the format version is checked before anything is read."""
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
        spec = CacheSpec.from_json(meta["spec"])
        return cls(location, group, spec, Provenance.from_json(meta.get("provenance", {})))

    @classmethod
    def create(cls, location: str | os.PathLike, spec: CacheSpec, provenance: Provenance, fields: Sequence[Field]) -> ZarrStore:
        """Create the group (with its metadata, in one write) and every array.

        Fails if the location already holds a store; a store whose creation was killed half-way
        is completed by :meth:`ensure_arrays` when it is opened for resuming.
        """
        store = _zarr_store(location, read_only=False)
        meta = {ATTR: {"spec": spec.to_json(), "provenance": provenance.to_json()}}
        try:
            with remote_errors(location):
                group = zarr.create_group(store=store, overwrite=False, attributes=meta)
        except (ContainsGroupError, ContainsArrayError, FileExistsError):
            raise CacheMismatch(f"{location} already holds a zarr store: pass --overwrite to replace it") from None
        self = cls(location, group, spec, provenance)
        self.ensure_arrays(fields)
        return self

    def ensure_arrays(self, fields: Sequence[Field]) -> None:
        """Create whichever of the spec's arrays do not exist yet (all of them for a new store)."""
        spec, group = self.spec, self.group
        n, views, layout = spec.dataset.num_samples, spec.views.total, spec.layout
        sharded = layout.shard_chunks > 0
        path = _local_path(self.location)
        if path is not None and path.suffix != ".zip":  # readers lock it without creating it (they never write)
            (path / f".lock{READ_LOCK}").touch()

        def exists(name: str) -> bool:
            try:
                return name in group
            except (ValueError, TypeError):  # its zarr.json is damaged: array() refuses it, naming the fix
                self.array(name)
                raise

        # Probe names one by one: listing the group would also meet the lock files.
        existing = {name for name in ["labels", "seeds", *(f.name for f in fields), PROGRESS] if exists(name)}

        def add(name: str, shape: tuple[int, ...], dtype: str, per_view: bool) -> None:
            if name in existing:
                return
            dt = np.dtype(dtype)
            lead, lead_chunk = ((views,), (1,)) if per_view else ((), ())
            chunks = (*lead_chunk, min(layout.chunk_samples, n), *shape)
            shards = (*lead_chunk, min(layout.block_samples, n), *shape) if sharded else None
            if sharded and shards[len(lead)] % chunks[len(lead)]:
                shards = None  # fewer samples than a shard: one chunk per block is the same thing
            group.create_array(
                name, shape=(*lead, n, *shape), dtype=dt, chunks=chunks, shards=shards,
                compressors=_codecs(spec, dt), fill_value=0, config=_ZARR_CONFIG,
            )

        add("labels", (), "int32", per_view=False)
        add("seeds", (), "uint32", per_view=True)
        for f in fields:
            add(f.name, f.trailing, f.dtype, per_view=True)
        if PROGRESS not in existing:
            group.create_array(
                PROGRESS, shape=(views, layout.num_blocks(n)), dtype="uint8", chunks=(1, 1),
                compressors=[Crc32cCodec()], fill_value=0, config=_ZARR_CONFIG,
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
        self.group.attrs[ATTR] = {"spec": self.spec.to_json(), "provenance": self.provenance.to_json()}

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
        fields = get_encoding(self.spec.encoding, self.spec.dataset.num_classes).fields()
        return ["labels", "seeds", *(f.name for f in fields), PROGRESS]

    def write_labels(self, labels: np.ndarray) -> None:
        self._overwrite("labels", (slice(None),), labels.astype(np.int32), self.storage_keys("labels"))

    def write_block(self, view: int, rows: range, arrays: dict[str, np.ndarray]) -> None:
        """Write one block of every per-view array; ``rows`` must be a whole block."""
        for name, data in arrays.items():
            arr = self.array(name)
            shard = (view, rows.start // arr.shards[1], *(0,) * (arr.ndim - 2)) if arr.shards else None
            keys = [arr.metadata.encode_chunk_key(shard)] if shard else []
            self._overwrite(name, (view, slice(rows.start, rows.stop)), data, keys)

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
        arr = self.array(PROGRESS)
        try:
            return arr[:]
        except Exception:  # a torn marker write: read one by one, treating bad ones as not done
            out = np.zeros(arr.shape, dtype=np.uint8)
            for v in range(arr.shape[0]):
                for b in range(arr.shape[1]):
                    with contextlib.suppress(Exception):
                        out[v, b] = arr[v, b]
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
            bad = self.check_chunks([name], views=None if view is None else [view], decode=True)
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
        arr = self.array(parts[0])
        view, chunk = int(parts[2]), int(parts[3])
        return view, chunk * (arr.shards or arr.chunks)[1] // self.spec.layout.block_samples

    def listed_keys(self) -> set[str]:
        store = self.group.store
        return set(sync(_collect(store.list_prefix(""))))

    def check_chunks(
        self, names: Sequence[str] | None = None, *, views: Sequence[int] | None = None, decode: bool = True
    ) -> list[ChunkProblem]:
        """Every storage object of the given arrays present, not empty and (optionally) decoding cleanly."""
        names = list(names) if names is not None else self.array_names()
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
