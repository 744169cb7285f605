"""Chunk-aligned, resumable writes of whole blocks, off the teacher's thread.

The protocol that makes a killed dump safe to resume: a block's marker is set to WRITING, its
arrays are written (each chunk file is itself written to a temporary name and renamed by
zarr), and only then is the marker set to DONE. A resumed dump rewrites every block that is not
DONE, which includes every block the killed process was writing; DONE blocks are re-checked
against their checksums before they are trusted.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .zarr_store import DONE, WRITING, ZarrStore


class BlockWriter:
    """Writes blocks in a background thread, at most ``depth`` blocks behind the producer.

    Compression (Blosc releases the GIL) and file writes then overlap with the next block's
    teacher forward passes. Errors surface on the next ``submit`` or on ``close``.
    """

    def __init__(self, store: ZarrStore, depth: int = 2) -> None:
        self.store, self.depth = store, depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="logitcache-writer")
        self._inflight: deque[Future] = deque()

    def _write(self, view: int, block: int, rows: range, arrays: dict[str, np.ndarray]) -> None:
        self.store.mark(view, block, WRITING)
        self.store.write_block(view, rows, arrays)
        self.store.mark(view, block, DONE)

    def submit(self, view: int, block: int, rows: range, arrays: dict[str, np.ndarray]) -> None:
        while len(self._inflight) >= self.depth:
            self._inflight.popleft().result()
        self._inflight.append(self._pool.submit(self._write, view, block, rows, arrays))

    def close(self) -> None:
        """Wait for every submitted block; re-raise the first error."""
        try:
            while self._inflight:
                self._inflight.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
