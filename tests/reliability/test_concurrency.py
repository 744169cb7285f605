"""Concurrent processes: one writer per store, any number of readers, read-only stores.

Two ``dump`` processes started together at one new store: one wins, the other refuses with
``CacheBusy`` (exit 2) without touching the store, and the winner's store equals an
uninterrupted one. Four ``train`` processes reading one store at once all train exactly as a
lone one does, and threads sharing a reader get what decoding the arrays gives. Training,
``info`` and ``verify`` never modify a store, and work from one nobody may write to.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from logitcache.store.encodings import get_encoding
from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import ZarrStore

SYNTHETIC = "synthetic:n=64,size=8"
CACHE = dict(dataset=SYNTHETIC, topk=3, chunk_samples=16)  # shared with tests/store


def _state(path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under a folder, lock files included: bytes, mtime and mode."""
    return {p.relative_to(path).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(path.rglob("*")) if p.is_file()}


def _train(cache, out, *extra) -> list[str]:
    return ["train", "--student", "resnet8", "--dataset", SYNTHETIC, "--cache", str(cache), "--out", str(out),
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet", *extra]


def test_two_dumps_at_one_new_store(dump_args, dump_reference, start_at, run_cli, assert_same_store, tmp_path):
    """Both start at once and pause after their first block; whichever took the lock first is
    still paused when the other has already refused."""
    ref = dump_reference()
    out, release = tmp_path / "c.zarr", tmp_path / "release"
    command = ["dump", *dump_args, "--out", out]
    procs = [start_at(f"pause:2:{release}", command) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "neither dump refused"
            time.sleep(0.01)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate()
        assert loser.returncode == 2, err
        assert err.startswith("error: another logitcache process is writing") and err.count("\n") == 1, err
        # A third writer, while the winner holds the store: refused, and nothing in the store changes.
        before = _state(out)
        third = run_cli(command)
        assert third.code == 2 and "another logitcache process is writing" in third.err
        assert _state(out) == before
        # Nor may `verify --repair` rewrite markers under it (block (0, 0) is done: damage it first).
        chunk = out / "lse" / "c" / "0" / "0"
        good, mtime = chunk.read_bytes(), chunk.stat().st_mtime_ns
        chunk.write_bytes(good[:-1])
        damaged = _state(out)
        repair = run_cli(["verify", out, "--samples", "0", "--repair"])
        assert repair.code == 2 and "another logitcache process is writing" in repair.err, repair.err
        assert _state(out) == damaged
        chunk.write_bytes(good)
        os.utime(chunk, ns=(mtime, mtime))
        assert winner.poll() is None  # still paused: the refusals really were concurrent
        release.touch()
        _, err = winner.communicate(timeout=120)
        assert winner.returncode == 0, err
    finally:
        release.touch()
        for p in procs:
            p.kill()
            p.wait()
    assert_same_store(ref, out)


def test_four_trainings_read_one_store_at_once(make_cache, run_cli, tmp_path):
    cache = make_cache(**CACHE)
    before = _state(cache)
    alone = tmp_path / "alone"
    assert run_cli(_train(cache, alone)).code == 0
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1")
    script = os.path.join(os.path.dirname(sys.executable), "logitcache")
    procs = [subprocess.Popen([script, *_train(cache, tmp_path / f"run{j}")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for j in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    want = torch.load(alone / "last.pt", weights_only=True)["model"]
    for j in range(4):
        got = torch.load(tmp_path / f"run{j}" / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(got[k], want[k]) for k in want), f"run {j} trained differently"
    assert _state(cache) == before  # readers wrote nothing, not even a lock file


def test_threads_sharing_a_reader(make_cache):
    """Eight threads read random batches through one reader (and its background prefetch) at once."""
    path = make_cache(**CACHE)
    store = ZarrStore.open(path)
    encoding = get_encoding(store.spec.encoding, store.spec.dataset.num_classes)
    arrays = {f.name: store.read(f.name) for f in encoding.fields()}
    labels = store.read("labels").astype(np.int64)
    for budget in (1 << 30, 0):
        reader = CacheReader(path, memory_budget=budget)
        errors: list[BaseException] = []

        def work(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(20):
                    views, samples = rng.integers(0, 3, 40), rng.integers(0, 64, 40)
                    reader.prefetch(int(rng.integers(0, 3)))
                    got = reader.read(views, samples)
                    rows = {k: a[views, samples] for k, a in arrays.items()}
                    want = encoding.decode(rows, torch.from_numpy(labels[samples]))
                    assert torch.equal(got.logits, want.logits) and torch.equal(got.target, want.target)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                errors.append(e)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader.close()
        assert not errors, errors[0]


def test_overwrite_waits_for_readers(make_cache, copy_store, run_cli, snapshot, tmp_path):
    """``dump --overwrite`` deletes the store first: under a training run that would read zeros for
    the missing chunks, or the new cache's logits. Readers hold ``.lock-read`` shared, so the
    overwrite refuses (exit 2) and changes nothing until the last reader has closed."""
    path = tmp_path / "c.zarr"
    args = ["dump", "--teacher", "resnet8", "--dataset", SYNTHETIC, "--random-init", "--views", "2", "--topk", "3",
            "--chunk-samples", "16", "--device", "cpu", "--quiet", "--out", path]
    assert run_cli(args).code == 0
    readers = [CacheReader(path), CacheReader(path)]
    before = snapshot(path)
    other = [*args, "--views", "1", "--overwrite"]
    for reader in readers:
        refused = run_cli(other)
        assert refused.code == 2 and refused.err.count("\n") == 1, refused.err
        assert f"{path} is being read (by a training run?)" in refused.err
        assert snapshot(path) == before
        reader.close()
    assert run_cli(other).code == 0
    assert ZarrStore.open(path).spec.views.count == 1


def test_a_store_nobody_may_write_to(make_cache, copy_store, run_cli, tmp_path):
    """``chmod -R a-w``, then train, info and verify from it. Root ignores permissions, so the proof
    that holds everywhere is the second one: not a byte, mode or mtime of the store changes."""
    path = copy_store(make_cache(**CACHE), tmp_path / "c.zarr")
    (path / ".lock-read").touch()  # as a dump leaves it: readers lock it, read-only or not
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        before = _state(path)
        assert run_cli(_train(path, tmp_path / "run")).code == 0
        assert (tmp_path / "run" / "last.pt").exists()
        assert run_cli(["info", path, "--quiet"]).code == 0
        assert run_cli(["verify", path, "--random-init", "--device", "cpu"]).code == 0
        reader = CacheReader(path)
        assert reader.store.group.store.read_only  # zarr itself refuses writes through a reader
        with pytest.raises(Exception):  # noqa: B017 - zarr raises ValueError for read-only stores
            reader.store.array("lse")[0, 0] = 1.0
        reader.close()
        assert _state(path) == before
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
