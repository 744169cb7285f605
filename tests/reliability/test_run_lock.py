"""One run per run folder: a second ``train`` with the same ``--out`` is refused while the first runs.

The first run is the real CLI in a subprocess, held before an optimizer step of its second epoch
(``_kill_at.py hold:N:FILE``), so it is certainly running and has written its first epoch. Then a
new run and a ``--resume`` into its folder are refused in one line and change nothing; the first
run is SIGKILLed, and ``--resume`` goes on at once: the kernel dropped its lock. A library
``train()`` call that raises releases the run folder and the cache's read lock as it returns.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from logitcache.errors import BadInput
from logitcache.train import TrainConfig, train

SYNTHETIC = "synthetic:n=64,size=8"
STEPS = 4  # 64 samples in batches of 16


@pytest.fixture(scope="module")
def cache(make_cache):
    return make_cache(dataset=SYNTHETIC, topk=3, chunk_samples=16)


def _args(cache, out) -> list:
    return ["train", "--student", "resnet8", "--dataset", SYNTHETIC, "--cache", cache, "--out", out, "--epochs", "2",
            "--batch-size", "16", "--device", "cpu", "--workers", "0", "--quiet"]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the first run ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_run_into_a_running_runs_folder_is_refused(cache, tmp_path, start_at, run_cli):
    out = tmp_path / "run"
    first = start_at(f"hold:{STEPS + 1}:{tmp_path / 'never'}", _args(cache, out))
    try:
        _wait_for(out / "last.pt", first)  # epoch 1 is written, epoch 2 is under way
        before = _files(out)
        for extra in (["--resume"], []):
            refused = run_cli([*_args(cache, out), *extra])
            lines = refused.err.strip().splitlines()
            assert refused.code == 2 and len(lines) == 1, refused
            assert lines[0].startswith(f"error: another `logitcache train` is running in {out}"), lines
            assert "choose another --out" in lines[0]
        assert _files(out) == before
    finally:
        first.kill()  # SIGKILL: nothing of it runs again, its lock goes with it
        first.communicate()

    resumed = run_cli([*_args(cache, out), "--resume"])
    assert resumed.code == 0, resumed.err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]


def test_a_train_call_that_raised_holds_no_lock(cache, tmp_path):
    config = TrainConfig(student="resnet8", dataset=SYNTHETIC, cache=str(cache), out=str(tmp_path / "run"), epochs=1,
                         batch_size=16, lr=1e30, device="cpu", workers=0, progress=False)
    with pytest.raises(BadInput, match="loss became") as failed:
        train(config)
    # The exception (and with it the failed call's frames) is still alive here: nothing it opened may be.
    fd = os.open(cache / ".lock-read", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what `dump --overwrite` needs: no reader left
    finally:
        os.close(fd)
    with pytest.raises(BadInput, match="loss became"):  # the run folder's lock is free: --resume gets as far
        train(dataclasses.replace(config, resume=True))
    assert failed.value is not None
