"""BlockWriter: the marker protocol (WRITING, data, DONE) and error propagation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from logitcache.store.writer import BlockWriter
from logitcache.store.zarr_store import DONE, WRITING


class RecordingStore:
    """Records the order of marker and data writes; fails on a chosen block."""

    def __init__(self, fail_block: int | None = None) -> None:
        self.events: list[tuple] = []
        self.fail_block = fail_block
        self.lock = threading.Lock()

    def mark(self, view: int, block: int, state: int) -> None:
        with self.lock:
            self.events.append(("mark", view, block, state))

    def write_block(self, view: int, rows: range, arrays: dict) -> None:
        if rows.start // 10 == self.fail_block:
            raise OSError("disk full")
        with self.lock:
            self.events.append(("write", view, rows.start // 10, sorted(arrays)))


def test_each_block_is_marked_writing_then_written_then_done():
    store = RecordingStore()
    writer = BlockWriter(store, depth=2)
    for b in range(5):
        writer.submit(1, b, range(10 * b, 10 * b + 10), {"lse": np.zeros(10), "seeds": np.zeros(10)})
    writer.close()
    assert store.events == [
        event for b in range(5) for event in (("mark", 1, b, WRITING), ("write", 1, b, ["lse", "seeds"]), ("mark", 1, b, DONE))
    ]


def test_a_failed_block_is_never_marked_done_and_the_error_surfaces():
    store = RecordingStore(fail_block=2)
    writer = BlockWriter(store, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for b in range(5):
            writer.submit(0, b, range(10 * b, 10 * b + 10), {"lse": np.zeros(10)})
        writer.close()
    assert ("mark", 0, 2, WRITING) in store.events
    assert ("mark", 0, 2, DONE) not in store.events
    # depth=1: the error surfaces on the next submit, before later blocks are queued behind it.
    assert all(e[2] <= 3 for e in store.events)
