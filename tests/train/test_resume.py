"""Killing and resuming ``logitcache train``, and the run-folder refusals around it.

The kill/resume test kills the installed console script, as a user's run would die: one run
SIGKILLed from outside once its epoch-1 ``last.pt`` exists; the uninterrupted run it is compared
with, the same command with ``--resume`` and the refusals call the CLI in this process.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from train_helpers import read_json, read_metrics, weights

EPOCHS = 3


def _train_args(cache: Path, out: Path, *extra) -> list:
    # resnet20 makes an epoch long enough (~1 s) to kill the run inside epoch 2.
    return ["train", "--student", "resnet20", "--dataset", "digits", "--method", "kd", "--cache", cache,
            "--epochs", EPOCHS, "--device", "cpu", "--workers", "0", "--quiet", "--out", out, *extra]


def _small_args(cache: Path, out: Path, *extra) -> list:
    return ["train", "--student", "resnet8", "--dataset", "synthetic:n=64,size=8", "--method", "kd", "--cache", cache,
            "--epochs", 1, "--device", "cpu", "--workers", "0", "--quiet", "--out", out, *extra]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def finished_run(synthetic_cache, tmp_path, run_cli) -> Path:
    """A finished one-epoch run folder (``_small_args``)."""
    out = tmp_path / "run"
    done = run_cli(_small_args(synthetic_cache, out))
    assert done.code == 0, done.err
    return out


def test_killed_run_resumes_to_the_uninterrupted_result(digits_cache, tmp_path, run_cli, start_console):
    uninterrupted = tmp_path / "uninterrupted"
    done = run_cli(_train_args(digits_cache, uninterrupted))
    assert done.code == 0, done.err

    out = tmp_path / "killed"
    proc = start_console(_train_args(digits_cache, out))
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():  # written atomically at the end of epoch 1
            assert proc.poll() is None, "the run ended before its first epoch was saved"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1, "killed inside epoch 2"
    assert not (out / "summary.json").exists()

    resumed = run_cli(_train_args(digits_cache, out, "--resume"))
    assert resumed.code == 0, resumed.err

    for name in ("last.pt", "best.pt"):
        a, b = weights(uninterrupted / name), weights(out / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs from the uninterrupted run"
    metrics, reference = read_metrics(out), read_metrics(uninterrupted)
    assert [m["epoch"] for m in metrics] == [1, 2, 3], "each epoch exactly once"
    for m, r in zip(metrics, reference):
        for key in ("lr", "train_loss", "train_acc", "test_top1", "test_nll"):
            assert m[key] == r[key], (m["epoch"], key)
    # The summary is the whole run's, not only the resumed part's.
    summary, full = read_json(out / "summary.json"), read_json(uninterrupted / "summary.json")
    for key in ("best_acc", "best_epoch", "last_acc", "epochs", "teacher_forwards_saved", "teacher_forwards_run"):
        assert summary[key] == full[key], key
    assert full["teacher_forwards_saved"] == EPOCHS * 1438


def test_resume_with_other_settings_is_refused_naming_them(synthetic_cache, finished_run, run_cli, snapshot):
    out = finished_run
    before = snapshot(out)
    refused = run_cli(_small_args(synthetic_cache, out, "--resume", "--lr", "0.1", "--batch-size", "32"))
    assert refused.code == 2
    line = _one_error_line(refused.err)
    assert "--lr" in line and "--batch-size" in line and "--epochs" not in line
    assert snapshot(out) == before


def test_resume_of_a_finished_run_is_refused(synthetic_cache, finished_run, run_cli, snapshot):
    out = finished_run
    before = snapshot(out)
    refused = run_cli(_small_args(synthetic_cache, out, "--resume"))
    assert refused.code == 2
    assert "finished" in _one_error_line(refused.err)
    assert snapshot(out) == before


def test_resume_with_nothing_to_resume_is_refused(synthetic_cache, tmp_path, run_cli):
    for out in (tmp_path / "missing", tmp_path):
        refused = run_cli(_small_args(synthetic_cache, out, "--resume"))
        assert refused.code == 2
        assert "nothing to resume" in _one_error_line(refused.err)
    assert list(tmp_path.iterdir()) == []
    # A last.pt without the run's config.json cannot be checked against the options: refused, untouched.
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "last.pt").write_bytes(b"not a run")
    refused = run_cli(_small_args(synthetic_cache, stray, "--resume"))
    assert refused.code == 2
    assert "nothing to resume" in _one_error_line(refused.err)
    assert [p.name for p in stray.iterdir()] == ["last.pt"]


def test_existing_run_folder_is_refused_untouched(synthetic_cache, finished_run, tmp_path, run_cli, snapshot):
    for out in (finished_run, tmp_path / "other"):
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("mine")
        before = snapshot(out)
        refused = run_cli(_small_args(synthetic_cache, out))
        assert refused.code == 2
        assert "--resume" in _one_error_line(refused.err)
        assert snapshot(out) == before


def test_out_that_is_a_file_is_refused(synthetic_cache, tmp_path, run_cli):
    out = tmp_path / "a_file"
    out.write_text("mine")
    refused = run_cli(_small_args(synthetic_cache, out))
    assert refused.code == 2
    assert str(out) in _one_error_line(refused.err)
    assert out.read_text() == "mine"
