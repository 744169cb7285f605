"""The teacher a run learns from is the teacher asked for, and config.json says which it was.

A cache home holds caches of two checkpoints of one architecture (``resnet8`` with two sets of
seeded weights, ``a`` and ``b``, dumped on the shipped digits; ``a`` twice, with 1 and 2 views).
``train --teacher resnet8 --checkpoint X`` must use a cache of exactly X's weights, whichever is
newer; without ``--checkpoint`` the two teachers are refused rather than picked from; a
``--checkpoint`` beside ``--cache`` must be that cache's teacher (unless it runs online); and a
resumed run reads exactly the cache and teacher weights its config.json recorded — a cache
overwritten with another teacher, a newer matching cache, a changed online checkpoint are refused
or ignored, never silently trained on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from logitcache.cache_home import list_caches
from logitcache.dump import DumpConfig, dump
from logitcache.models import create_model
from logitcache.teacher import teacher_weights_sha256

TRAIN = ["train", "--method", "kd", "--student", "resnet8", "--dataset", "digits", "--batch-size", "256",
         "--device", "cpu", "--workers", "0", "--quiet"]
STEPS = 6  # digits: 1,438 samples in batches of 256


def _one_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(create_model("resnet8", num_classes=10).state_dict(), path)
    return path


def _dump(checkpoint: Path, out: Path, views: int = 1) -> Path:
    done = dump(DumpConfig(teacher="resnet8", checkpoint=str(checkpoint), dataset="digits", out=str(out),
                           views=views, topk=5, chunk_samples=512, device="cpu", progress=False))
    assert done.complete
    return out


class Teachers:
    """Checkpoints a, b, c (c has no cache), their weights hashes, and a home holding the caches
    ``a1`` (a, 1 view), ``a2`` (a, 2 views) and ``b1`` (b, 1 view)."""

    def __init__(self, root: Path) -> None:
        self.ckpt = {name: _checkpoint(root / f"{name}.pt", seed) for name, seed in (("a", 1), ("b", 2), ("c", 3))}
        self.sha = {name: teacher_weights_sha256("resnet8", 10, checkpoint=p) for name, p in self.ckpt.items()}
        self.home = root / "home"
        self.cache = {"a1": _dump(self.ckpt["a"], self.home / "a1.zarr"),
                      "b1": _dump(self.ckpt["b"], self.home / "b1.zarr"),
                      "a2": _dump(self.ckpt["a"], self.home / "a2.zarr", views=2)}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Teachers:
    return Teachers(tmp_path_factory.mktemp("teachers"))


@pytest.fixture
def home(teachers, monkeypatch) -> Path:
    monkeypatch.setenv("LOGITCACHE_HOME", str(teachers.home))
    return teachers.home


def _record(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


# --------------------------------------------------------------------------- 16.1: the cache home
def test_ls_tells_two_checkpoints_of_one_architecture_apart(teachers, run_cli):
    listed = run_cli(["ls", "--home", teachers.home])
    assert listed.code == 0, listed.err
    entries = {e.location: e for e in list_caches(str(teachers.home))}
    for name, cache in teachers.cache.items():
        below = listed.out.split(str(cache), 1)[1].splitlines()[1]  # the entry's line under its location
        acc = entries[str(cache)].teacher_test_accuracy
        assert f"resnet8 weights {teachers.sha[name[0]][:12]}, teacher test acc {acc:.2f}%, on digits" in below


@pytest.mark.parametrize("wanted", ["a", "b"])
def test_checkpoint_chooses_the_cache_of_exactly_its_weights(teachers, home, tmp_path, run_cli, wanted):
    out = tmp_path / "run"
    done = run_cli([*TRAIN, "--epochs", "1", "--teacher", "resnet8", "--checkpoint", teachers.ckpt[wanted],
                    "--out", out])
    assert done.code == 0, done.err
    record = _record(out)
    used = record["cache"]["location"]
    # Of the caches of those weights, the newest (ties by name), whichever teacher was dumped last.
    assert used == next(e.location for e in list_caches(str(home)) if e.spec.teacher.weights_sha256 == teachers.sha[wanted])
    assert record["teacher"] == {"name": "resnet8", "weights_sha256": teachers.sha[wanted], "logits": "cache"}
    line = next(x for x in done.out.splitlines() if x.startswith("using cache"))
    assert line.startswith(f"using cache {used}: resnet8 weights {teachers.sha[wanted][:12]}, teacher test acc ")
    if wanted == "a":  # two caches of those weights: the line says which other one matched
        other = ({teachers.cache["a1"], teachers.cache["a2"]} - {Path(used)}).pop()
        assert f"newest of 2 caches of this teacher (also matching: {other.name})" in line


def test_two_teachers_of_one_architecture_are_not_picked_from(teachers, home, tmp_path, run_cli):
    out = tmp_path / "run"
    line = _one_line(run_cli([*TRAIN, "--epochs", "1", "--teacher", "resnet8", "--out", out]))
    assert "3 caches" in line and "2 different teachers" in line and "--checkpoint" in line and "--cache" in line
    for name in teachers.cache:
        assert f"{name}.zarr: resnet8 weights {teachers.sha[name[0]][:12]}" in line
    assert not out.exists()


def test_a_checkpoint_no_cache_was_made_from_is_refused_naming_the_near_misses(teachers, home, tmp_path, run_cli):
    out = tmp_path / "run"
    line = _one_line(run_cli([*TRAIN, "--epochs", "1", "--teacher", "resnet8", "--checkpoint", teachers.ckpt["c"],
                              "--out", out]))
    for name in teachers.cache:
        assert f"{name}.zarr: teacher weights {teachers.sha[name[0]][:12]}, not {teachers.sha['c'][:12]}" in line
    assert not out.exists()


def test_a_checkpoint_without_its_architecture_is_refused(teachers, home, tmp_path, run_cli):
    out = tmp_path / "run"
    line = _one_line(run_cli([*TRAIN, "--epochs", "1", "--checkpoint", teachers.ckpt["a"], "--out", out]))
    assert "add --teacher NAME" in line
    assert not out.exists()


# --------------------------------------------------------------------------- 16.2: --checkpoint with --cache
def test_a_checkpoint_of_another_teacher_than_the_cache_is_refused(teachers, tmp_path, run_cli):
    out = tmp_path / "run"
    line = _one_line(run_cli([*TRAIN, "--epochs", "1", "--cache", teachers.cache["a1"], "--checkpoint",
                              teachers.ckpt["b"], "--out", out]))
    assert teachers.sha["a"][:12] in line and teachers.sha["b"][:12] in line and "--teacher-online" in line
    assert not out.exists()


def test_the_cache_teachers_own_checkpoint_is_accepted(teachers, tmp_path, run_cli):
    out = tmp_path / "run"
    done = run_cli([*TRAIN, "--epochs", "1", "--cache", teachers.cache["a1"], "--checkpoint", teachers.ckpt["a"],
                    "--out", out])
    assert done.code == 0, done.err
    assert _record(out)["teacher"] == {"name": "resnet8", "weights_sha256": teachers.sha["a"], "logits": "cache"}


def test_an_online_teacher_beside_a_cache_is_recorded_as_what_it_is(teachers, tmp_path, run_cli):
    out = tmp_path / "run"
    done = run_cli([*TRAIN, "--epochs", "1", "--cache", teachers.cache["a1"], "--teacher-online", "--checkpoint",
                    teachers.ckpt["b"], "--out", out])
    assert done.code == 0, done.err
    record = _record(out)
    assert record["teacher"] == {"name": "resnet8", "weights_sha256": teachers.sha["b"], "logits": "online",
                                 "checkpoint": str(teachers.ckpt["b"])}
    assert record["cache"]["location"] == str(teachers.cache["a1"])  # its views, not its logits
    assert (f"teacher resnet8 online, weights {teachers.sha['b'][:12]} from {teachers.ckpt['b']}; "
            f"views from cache {teachers.cache['a1']}") in done.out


@pytest.mark.parametrize("option", [["--checkpoint", "CKPT"], ["--teacher-online", "--teacher", "resnet8",
                                                                 "--checkpoint", "CKPT"],
                                    ["--random-init-teacher"]], ids=["checkpoint", "online", "random-init"])
def test_teacher_options_for_a_method_without_a_teacher_are_refused(teachers, tmp_path, run_cli, option):
    out = tmp_path / "run"
    option = [str(teachers.ckpt["a"]) if o == "CKPT" else o for o in option]
    line = _one_line(run_cli([*TRAIN, "--method", "ce", "--epochs", "1", *option, "--out", out]))
    assert "method ce trains without a teacher: drop" in line
    assert not out.exists()


# --------------------------------------------------------------------------- 17.4: --resume
def _killed_run(kill_at, out: Path, *args) -> None:
    """A two-epoch run SIGKILLed in its second epoch (last.pt holds epoch 1)."""
    kill_at(f"step:{STEPS + 2}", [*TRAIN, "--epochs", "2", *args, "--out", out])
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_resume_refuses_a_cache_overwritten_with_another_teacher(teachers, tmp_path, run_cli, kill_at, copy_store):
    cache, out = copy_store(teachers.cache["a1"], tmp_path / "c.zarr"), tmp_path / "run"
    _killed_run(kill_at, out, "--cache", cache)
    before = _files(out)
    overwritten = run_cli(["dump", "--teacher", "resnet8", "--checkpoint", teachers.ckpt["b"], "--dataset", "digits",
                           "--views", "1", "--topk", "5", "--chunk-samples", "512", "--device", "cpu", "--quiet",
                           "--out", cache, "--overwrite"])
    assert overwritten.code == 0, overwritten.err
    line = _one_line(run_cli([*TRAIN, "--epochs", "2", "--cache", cache, "--out", out, "--resume"]))
    assert f"{cache} now holds other logits than the run started with" in line
    assert f"teacher.weights_sha256: '{teachers.sha['a']}' vs '{teachers.sha['b']}'" in line
    assert _files(out) == before


def test_resume_reads_the_recorded_cache_not_a_newer_match(teachers, tmp_path, monkeypatch, run_cli, kill_at,
                                                           copy_store):
    home = tmp_path / "home"
    monkeypatch.setenv("LOGITCACHE_HOME", str(home))
    first = copy_store(teachers.cache["a1"], home / "first.zarr")
    out = tmp_path / "run"
    _killed_run(kill_at, out, "--teacher", "resnet8")
    assert _record(out)["cache"]["location"] == str(first)
    newer = _dump(teachers.ckpt["a"], home / "newer.zarr")  # the same teacher, dumped after the run began
    assert list_caches(str(home))[0].location == str(newer)

    done = run_cli([*TRAIN, "--epochs", "2", "--teacher", "resnet8", "--out", out, "--resume"])
    assert done.code == 0, done.err
    assert f"using cache {first}:" in done.out
    assert _record(out)["cache"]["location"] == str(first)

    # The recorded cache gone: refused naming it, not replaced by the one still there.
    shutil.rmtree(first)
    (out / "summary.json").unlink()  # as if killed again before the end
    line = _one_line(run_cli([*TRAIN, "--epochs", "2", "--teacher", "resnet8", "--out", out, "--resume"]))
    assert f"the run to resume trained from {first}" in line


def test_resume_refuses_an_online_teachers_changed_checkpoint(teachers, tmp_path, run_cli, kill_at):
    ckpt, out = tmp_path / "t.pt", tmp_path / "run"
    shutil.copy(teachers.ckpt["a"], ckpt)
    online = ["--teacher-online", "--teacher", "resnet8", "--checkpoint", ckpt, "--views", "2"]
    _killed_run(kill_at, out, *online)
    assert _record(out)["teacher"]["weights_sha256"] == teachers.sha["a"]
    before = _files(out)
    shutil.copy(teachers.ckpt["b"], ckpt)  # other weights under the same name
    line = _one_line(run_cli([*TRAIN, "--epochs", "2", *online, "--out", out, "--resume"]))
    assert f"its teacher had weights {teachers.sha['a'][:12]}, --checkpoint {ckpt} holds {teachers.sha['b'][:12]}" in line
    assert _files(out) == before
