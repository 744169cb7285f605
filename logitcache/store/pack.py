"""Pack a store into one ``.zip`` file for sending, and unpack it again.

The zip holds the store's keys at its root, uncompressed (every chunk is compressed already),
so zarr's ``ZipStore`` reads it in place: every command accepts ``cache.zip`` wherever it
accepts a store, read-only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .. import _utils
from ..errors import BadInput, CacheIncomplete
from .zarr_store import ZarrStore, _local_path, is_partial_write


def pack(store: str | os.PathLike, archive: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a complete local store into ``archive`` (a new .zip file); returns its path.

    Only the store's own files go in: not its lock files, not a killed writer's temporary files,
    not what someone else keeps in the folder.
    """
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
    _utils.check_output_location(dst, "archive")
    # A fresh name (O_EXCL), never a fixed one: a symlink planted at a fixed name would be written through.
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            foreign = set(ZarrStore.foreign_entries(src, opened.array_names()))
            for path in sorted(src.rglob("*")):
                rel = path.relative_to(src)
                if path.is_file() and not (path.name.startswith(".lock") or is_partial_write(path.name)
                                           or rel.parts[0] in foreign):
                    z.write(path, rel.as_posix())
        os.chmod(tmp, _utils.umask_mode(0o666))
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    problems = ZarrStore.open(dst).check_chunks(decode=False)
    if problems:
        raise BadInput(f"the packed archive {dst} is missing {problems[0]}: the source store is damaged; verify it")
    return dst


def unpack(archive: str | os.PathLike, store: str | os.PathLike) -> Path:
    """Extract a packed store into a new folder ``store``; returns its path."""
    src, dst = Path(archive), Path(store)
    if not zipfile.is_zipfile(src):
        raise BadInput(f"{src} is not a zip archive made by `logitcache pack`")
    if dst.is_symlink() or dst.is_file() or (dst.exists() and any(dst.iterdir())):
        raise BadInput(f"{dst} exists and is not an empty folder: choose another destination")
    _utils.check_output_location(dst, "destination")
    ZarrStore.open(src)  # refuses archives that do not hold a logitcache store
    with zipfile.ZipFile(src) as z:
        _check_names(src, z.namelist())
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
        try:
            z.extractall(tmp)
            os.chmod(tmp, _utils.umask_mode(0o777))
            os.replace(tmp, dst)
        except (OSError, zipfile.BadZipFile) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BadInput(f"cannot unpack {src} into {dst} ({e}): nothing was written") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dst


def _check_names(src: Path, names: list[str]) -> None:
    """Refuse entries that would land outside the folder, or a file that another entry needs as a folder."""
    files = {n.rstrip("/") for n in names if not n.endswith("/")}
    for name in names:
        parts = Path(name).parts
        if name.startswith("/") or ".." in parts:
            raise BadInput(f"{src} holds an unsafe path {name!r}: not a logitcache archive")
        clash = next((p for p in ("/".join(parts[:i]) for i in range(1, len(parts))) if p in files), None)
        if clash is not None:
            raise BadInput(f"{src} holds both a file {clash!r} and {name!r} inside it: not a logitcache archive")
