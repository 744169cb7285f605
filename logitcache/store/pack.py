"""Pack a store into one ``.zip`` file for sending, and unpack it again.

The zip holds the store's keys at its root, uncompressed (every chunk is compressed already),
so zarr's ``ZipStore`` reads it in place: every command accepts ``cache.zip`` wherever it
accepts a store, read-only.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .._utils import check_output_location
from ..errors import BadInput, CacheIncomplete
from .zarr_store import ZarrStore, _local_path


def pack(store: str | os.PathLike, archive: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a complete local store into ``archive`` (a new .zip file); returns its path."""
    src, dst = _local_path(store), Path(archive)
    if src is None or not src.is_dir():
        raise BadInput(f"pack needs a local store folder, got {store}")
    opened = ZarrStore.open(src)
    if not opened.provenance.complete:
        raise CacheIncomplete(f"{src} is not complete: finish its dump before packing it")
    if dst.suffix != ".zip":
        raise BadInput(f"the archive name must end in .zip, got {dst}")
    if dst.exists() and not overwrite:
        raise BadInput(f"{dst} exists: pass --overwrite to replace it")
    check_output_location(dst, "archive")
    tmp = dst.with_name(f".{dst.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for path in sorted(src.rglob("*")):
            if path.is_file() and not path.name.startswith(".lock"):
                z.write(path, path.relative_to(src).as_posix())
    os.replace(tmp, dst)
    problems = ZarrStore.open(dst).check_chunks(decode=False)
    if problems:
        raise BadInput(f"the packed archive {dst} is missing {problems[0]}: the source store is damaged; verify it")
    return dst


def unpack(archive: str | os.PathLike, store: str | os.PathLike) -> Path:
    """Extract a packed store into a new folder ``store``; returns its path."""
    src, dst = Path(archive), Path(store)
    if not zipfile.is_zipfile(src):
        raise BadInput(f"{src} is not a zip archive made by `logitcache pack`")
    if dst.is_file() or (dst.exists() and any(dst.iterdir())):
        raise BadInput(f"{dst} exists and is not an empty folder: choose another destination")
    check_output_location(dst, "destination")
    ZarrStore.open(src)  # refuses archives that do not hold a logitcache store
    tmp = dst.with_name(f".{dst.name}.tmp")
    with zipfile.ZipFile(src) as z:
        for name in z.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise BadInput(f"{src} holds an unsafe path {name!r}: not a logitcache archive")
        z.extractall(tmp)
    os.replace(tmp, dst)
    return dst
