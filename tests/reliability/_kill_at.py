"""Run the real ``logitcache`` CLI and SIGKILL it at an exact point (or pause it there).

Used by the reliability tests as ``python _kill_at.py POINT -- <logitcache argv>``. The
command is the installed CLI's own ``main``; the only change is one wrapped function that, on
its N-th call (counting from 0), kills the whole process with SIGKILL, which no handler,
``finally`` or ``atexit`` can intercept: what is on disk afterwards is exactly what a crashed
process leaves (a power cut is another matter: see docs/guarantees.md). Points:

``mark:N``       before the N-th progress-marker write (N marker writes done; 0: none yet)
``block:N``      inside the N-th block write, after its first array is written (marker says WRITING)
``chunk:N``      half-way through the N-th object zarr writes (half its bytes in zarr's temporary file)
``create:N``     before the N-th array of a new store is created (a half-created store)
``finalize``     when every block is done, before the store is marked complete
``meta``         half-way through writing the group's zarr.json that marks the store complete
``delete:N``     while ``--overwrite`` deletes an old store, after N of its entries are gone
``step:N``       before the N-th optimizer step of ``train``
``hold:N:FILE``  before the N-th optimizer step of ``train``, wait until FILE exists, then go on
``save:NAME:N``  half-way through the N-th ``torch.save`` whose target is NAME (``last.pt``, ``best.pt``)
``pause:N:FILE`` before the N-th marker write, wait until FILE exists, then go on (nothing killed)
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import sys
import time
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: SIGKILL is delivered before the call returns


class _Counter:
    def __init__(self, target: int) -> None:
        self.target, self.calls = target, 0

    def hit(self) -> bool:
        hit = self.calls == self.target
        self.calls += 1
        return hit


def _install(point: str) -> None:
    import torch
    import zarr
    from zarr.storage import _local

    from logitcache.store.zarr_store import ZarrStore

    kind, *args = point.split(":")
    if kind in ("mark", "pause"):
        counter, release = _Counter(int(args[0])), (Path(args[1]) if kind == "pause" else None)
        mark = ZarrStore.mark

        def marking(self, view, block, state):
            if counter.hit():
                if release is None:
                    _die()
                while not release.exists():
                    time.sleep(0.01)
            return mark(self, view, block, state)

        ZarrStore.mark = marking
    elif kind == "block":
        counter, write_block = _Counter(int(args[0])), ZarrStore.write_block

        def writing(self, view, rows, arrays):
            if counter.hit():
                first = next(iter(arrays))
                self._write_rows(first, view, rows, arrays[first])
                _die()
            return write_block(self, view, rows, arrays)

        ZarrStore.write_block = writing
    elif kind in ("chunk", "meta"):
        counter, atomic_write = _Counter(int(args[0]) if args else 0), _local._atomic_write
        armed = [kind == "chunk"]

        @contextlib.contextmanager
        def tearing(path, mode, exclusive=False):
            with atomic_write(path, mode, exclusive) as f:
                if armed[0] and (kind == "chunk" or path.name == "zarr.json") and counter.hit():
                    yield _HalfThenDie(f)
                else:
                    yield f

        _local._atomic_write = tearing
        if kind == "meta":  # arm only for the write that marks the store complete
            set_provenance = ZarrStore.set_provenance

            def completing(self, provenance):
                armed[0] = provenance.complete
                return set_provenance(self, provenance)

            ZarrStore.set_provenance = completing
    elif kind == "create":
        counter, create_array = _Counter(int(args[0])), zarr.Group.create_array

        def creating(self, *a, **k):
            if counter.hit():
                _die()
            return create_array(self, *a, **k)

        zarr.Group.create_array = creating
    elif kind == "finalize":
        dump_module = importlib.import_module("logitcache.dump")
        dump_module._test_accuracy = lambda *a, **k: _die()
    elif kind == "delete":
        import shutil

        counter, rmtree, unlink = _Counter(int(args[0])), shutil.rmtree, Path.unlink

        def removing(remove):
            def wrapped(*a, **k):
                if counter.hit():
                    _die()
                return remove(*a, **k)

            return wrapped

        delete = ZarrStore.delete

        def deleting(self):
            shutil.rmtree, Path.unlink = removing(rmtree), removing(unlink)
            try:
                return delete(self)
            finally:
                shutil.rmtree, Path.unlink = rmtree, unlink

        ZarrStore.delete = deleting
    elif kind in ("step", "hold"):
        counter, step = _Counter(int(args[0])), torch.optim.SGD.step
        release = Path(args[1]) if kind == "hold" else None

        def stepping(self, *a, **k):
            if counter.hit():
                if release is None:
                    _die()
                while not release.exists():
                    time.sleep(0.01)
            return step(self, *a, **k)

        torch.optim.SGD.step = stepping
    elif kind == "save":
        name, counter, save = args[0], _Counter(int(args[1])), torch.save

        def saving(obj, f, *a, **k):
            # atomic saves write a temporary ".NAME.xxxx.tmp" beside NAME; a plain save writes NAME.
            target = Path(f).name if isinstance(f, (str, os.PathLike)) else ""
            if (target == name or target.startswith(f".{name}.")) and counter.hit():
                buf = io.BytesIO()
                save(obj, buf, *a, **k)
                data = buf.getvalue()
                with open(f, "wb") as out:
                    out.write(data[: len(data) // 2])
                    out.flush()
                _die()
            return save(obj, f, *a, **k)

        torch.save = saving
    else:
        raise SystemExit(f"unknown kill point {point!r}")


class _HalfThenDie:
    """A file whose first write stores half its bytes, then kills the process."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.f.write(view[: len(view) // 2])
        self.f.flush()
        _die()
        return 0


if __name__ == "__main__":
    point, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: _kill_at.py POINT -- ARGS..."
    _install(point)
    from logitcache_cli.main import main

    main(argv)
