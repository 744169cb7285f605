"""The run folder of ``logitcache train`` holds one run at a time.

Rank 0 holds an exclusive flock on the folder's ``.lock-run`` for the whole run (the mechanism
that guards stores: ``store.zarr_store.flock``), so a second ``train`` with the same ``--out`` —
a new run or a ``--resume`` — is refused instead of interleaving ``metrics.jsonl`` and mixing
checkpoints. The kernel drops the lock when its process dies, even by SIGKILL: a killed run
leaves no stale lock, and ``--resume`` takes it over at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError
from .store.zarr_store import flock

_LOCK_NAME = "-run"
RUN_LOCK_FILE = f".lock{_LOCK_NAME}"  # what flock names the file


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold the run folder's lock (creating the folder) until the block ends.

    Raises:
        CacheBusy: another process holds it: a run is going on in that folder.
        OutputError: the folder cannot be made there (a file in its place, no permission).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the run folder {out} ({e.strerror}): choose another --out") from None
    busy = (f"another `logitcache train` is running in {out} (it holds {out / RUN_LOCK_FILE}): wait for it to "
            "finish or stop it, or choose another --out")
    with flock(out, _LOCK_NAME, busy=busy):
        yield


def holds_run_files(out: Path) -> bool:
    """Whether a folder holds anything but the run lock (which every run leaves, and which is no run)."""
    return out.is_dir() and any(p.name != RUN_LOCK_FILE for p in out.iterdir())
