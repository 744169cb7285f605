"""Small helpers shared by the stage loops: devices, atomic files, timestamps, versions, messages."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .errors import BadInput, OutputError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; anything else is checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BadInput(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {device} asked for but no CUDA GPU is visible: use --device cpu (or auto)")
    return dev


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 view``, ``2 views``, ``1,438 samples``: a count with its noun in the right number."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("logitcache")
    except PackageNotFoundError:
        return "unknown"


def check_output_location(path: str | os.PathLike, what: str) -> None:
    """Refuse, before anything is computed or written, an output that could not be created:
    one :class:`OutputError` naming the path and the operating system's reason.

    The test is a real one, because permission bits do not stop root while /proc, /sys or a
    read-only mount still do: an anonymous temporary file in the folder that would hold
    ``path`` (its nearest existing ancestor). It leaves no name behind and does not touch
    ``path`` itself, so it is safe on a store others are reading and under torchrun, where every
    process checks at once. Whether an existing ``path`` may be reused is the caller's question.
    """
    path = Path(path)
    folder = next((p for p in path.parents if p.exists()), path)
    if not folder.is_dir():
        raise OutputError(f"cannot write {what} {path}: {folder} is a file, not a folder; choose another {what}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"cannot write {what} {path}: creating a file in {folder} fails ({e.strerror}); "
                          f"choose another {what}") from None


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what a plain ``open()`` or ``mkdir()`` would give a new file.

    ``mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask, which would hide run files and
    stores from a group that shares them.
    """
    return mode & ~_umask()


def _umask() -> int:
    # Linux reports it without changing it; setting it to read it would race other threads' new files.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), umask_mode(0o666))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temporary file, so a kill never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, umask_mode(0o666))
        finally:
            os.close(fd)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
