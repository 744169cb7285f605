"""Interrupted training: a SIGKILLed ``logitcache train`` resumes to the weights of an uninterrupted run.

The run trains a resnet8 student on 64 synthetic images from a cache, 4 epochs of 4 steps with
lr milestones, so that model, optimizer momentum, scheduler, RNG and epoch all have to come back
right. Each test kills a real ``train`` process (``_kill_at.py``: before the N-th optimizer step,
or half-way through writing ``last.pt`` or ``best.pt``), checks that every checkpoint on disk is
whole, then re-runs the command with ``--resume`` and compares every weight, bit for bit.
"""

from __future__ import annotations

import json

import pytest
import torch

SYNTHETIC = "synthetic:n=64,size=8"
EPOCHS, STEPS = 4, 4  # 64 samples in batches of 16


@pytest.fixture(scope="module")
def cache(make_cache):
    return make_cache(dataset=SYNTHETIC, topk=3, chunk_samples=16)


# Without the cache: the online teacher on views derived from the seeds with strong augmentation and
# mixing, which a resume must derive again identically.
ONLINE_STRONG = ("--teacher-online", "--teacher", "resnet8", "--random-init-teacher", "--aa", "rand-m9-mstd0.5-inc1",
                 "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0")


def _train_args(cache, out, *extra, online: tuple = ()) -> list:
    """The run's command: from the cache, or with ``online`` (ONLINE_STRONG) instead of it."""
    source = online or ("--cache", cache)
    return ["train", "--student", "resnet8", "--dataset", SYNTHETIC, *source, "--out", out,
            "--epochs", str(EPOCHS), "--batch-size", "16", "--milestones", "2,3", "--lr", "0.1",
            "--device", "cpu", "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """``reference(policy, online=()) -> folder`` of an uninterrupted run with that view policy (and
    ``online`` instead of the cache where given), made once."""
    from logitcache_cli.main import main

    made = {}

    def run(policy: str, online: tuple = ()):
        if (policy, online) not in made:
            out = tmp_path_factory.mktemp("run") / "ref"
            with pytest.raises(SystemExit) as done:
                main([str(a) for a in _train_args(cache, out, "--view-policy", policy, online=online)])
            assert done.value.code in (0, None)
            made[policy, online] = out
        return made[policy, online]

    return run


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_whole_checkpoints(out, completed_epochs: int) -> None:
    """last.pt / best.pt either absent (nothing finished yet) or complete and loadable."""
    last, best = out / "last.pt", out / "best.pt"
    if completed_epochs == 0:
        assert not last.exists()
    else:
        state = _load(last)
        assert state["epoch"] == completed_epochs
        assert {"model", "optimizer", "scheduler", "rng", "best_acc", "best_epoch"} <= state.keys()
    if best.exists():
        assert 1 <= _load(best)["epoch"] <= max(1, completed_epochs + 1)


def _assert_same_run(ref, out) -> None:
    a, b = _load(ref / "last.pt"), _load(out / "last.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), f"weight {key} differs"
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"] and torch.equal(a["rng"], b["rng"])
    assert (a["best_acc"], a["best_epoch"]) == (b["best_acc"], b["best_epoch"])
    best_a, best_b = _load(ref / "best.pt"), _load(out / "best.pt")
    assert best_a["epoch"] == best_b["epoch"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])
    metrics = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out)]
    assert [m["epoch"] for m in metrics[1]] == list(range(1, EPOCHS + 1))  # no epoch twice, none missing
    for ma, mb in zip(*metrics):
        assert {k: v for k, v in ma.items() if "second" not in k} == {k: v for k, v in mb.items() if "second" not in k}


# (view policy, kill point, epochs whose last.pt is on disk when it dies)
POINTS = [
    ("cycle", "step:2", 0),  # mid-way through epoch 1: no checkpoint yet
    ("cycle", "step:6", 1),  # mid-way through epoch 2
    ("cycle", "step:13", 3),  # mid-way through the last epoch
    ("cycle", "save:last.pt:1", 1),  # half-way through writing epoch 2's last.pt
    ("cycle", "save:best.pt:0", 0),  # half-way through the very first best.pt
    ("random", "step:6", 1),  # a seeded random view per (epoch, sample)
    ("random", "save:last.pt:0", 0),  # epoch 1's metrics line is written, its last.pt is not
]


@pytest.mark.parametrize(("policy", "point", "completed"), POINTS, ids=[f"{v}-{p}" for v, p, _ in POINTS])
def test_killed_training_resumes_to_the_same_weights(policy, point, completed, reference, cache, kill_at, run_cli,
                                                     tmp_path):
    out = tmp_path / "run"
    command = _train_args(cache, out, "--view-policy", policy)
    kill_at(point, command)
    _assert_whole_checkpoints(out, completed)

    resumed = run_cli([*command, "--resume"])
    assert resumed.code == 0, resumed.err
    _assert_same_run(reference(policy), out)


@pytest.mark.parametrize("policy", ["cycle", "random"])
def test_killed_training_on_derived_strong_mixed_views_resumes_to_the_same_weights(policy, reference, cache, kill_at,
                                                                                  run_cli, tmp_path):
    out = tmp_path / "run"
    command = _train_args(cache, out, "--view-policy", policy, online=ONLINE_STRONG)
    kill_at("step:6", command)
    _assert_whole_checkpoints(out, 1)
    resumed = run_cli([*command, "--resume"])
    assert resumed.code == 0, resumed.err
    _assert_same_run(reference(policy, ONLINE_STRONG), out)


def test_killed_twice(reference, cache, kill_at, run_cli, tmp_path):
    out = tmp_path / "run"
    command = _train_args(cache, out, "--view-policy", "cycle")
    kill_at("step:5", command)
    kill_at("save:last.pt:1", [*command, "--resume"])  # the resumed run dies writing epoch 3's last.pt
    _assert_whole_checkpoints(out, 2)
    assert run_cli([*command, "--resume"]).code == 0
    _assert_same_run(reference("cycle"), out)


def test_a_damaged_last_checkpoint_is_refused_in_one_line(cache, run_cli, tmp_path, damage):
    """Saves are atomic, so only something outside logitcache can damage last.pt: --resume then
    refuses it in one line, naming the file, instead of a traceback."""
    out = tmp_path / "run"
    command = _train_args(cache, out)  # (--epochs 1 would leave its --milestones 2,3 outside the run: refused)
    assert run_cli(command).code == 0
    good = (out / "last.pt").read_bytes()
    for how in ("truncate", "empty"):  # (a flipped byte inside a tensor is not detected: torch files carry no checksum)
        damage(out / "last.pt", how)
        result = run_cli([*command, "--resume"])
        assert result.code == 2 and result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
        assert f"cannot resume from {out / 'last.pt'}: it is unreadable" in result.err
        (out / "last.pt").write_bytes(good)
    torch.save({"model": _load(out / "last.pt")["model"]}, out / "last.pt")  # loadable, but not a run's state
    result = run_cli([*command, "--resume"])
    assert result.code == 2 and "is not a checkpoint written by `logitcache train`" in result.err
