"""Model selection: ``--val-fraction`` holds out a seeded share of the training split that is
never trained on (its stored views are never read) and picks ``best.pt`` on its clean images;
without it, selection on the test set is kept and labelled optimistic."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache.datasets import open_dataset
from logitcache.evaluate import evaluate_model
from logitcache.models import create_model, load_checkpoint
from logitcache.train import holdout_split
from train_helpers import read_json, read_metrics, weights

train_module = importlib.import_module("logitcache.train")  # the module; logitcache.train is also the function
SYNTHETIC, N = "synthetic:n=64,size=8", 64


@settings(deadline=None, max_examples=200)
@given(n=st.integers(2, 5000), fraction=st.floats(0, 0.99), seed=st.integers(0, 2**31))
def test_the_holdout_is_a_pure_seeded_partition(n, fraction, seed):
    train, held = holdout_split(n, fraction, seed)
    assert len(held) == round(fraction * n)
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(n)), "a partition of the split"
    again = holdout_split(n, fraction, seed)
    assert np.array_equal(train, again[0]) and np.array_equal(held, again[1]), "a resumed run holds out the same"


def test_other_seeds_hold_out_other_samples():
    assert not np.array_equal(holdout_split(1000, 0.1, 0)[1], holdout_split(1000, 0.1, 1)[1])


def test_held_out_samples_are_never_trained_on_and_select_best(synthetic_cache, train_run, replay_spy, reader_spy):
    result, out = train_run(method="kd", cache=synthetic_cache, epochs=3, val_fraction=0.25)
    trained, held = holdout_split(N, 0.25, 0)
    assert len(held) == 16
    for epoch in (1, 2, 3):
        assert np.array_equal(np.sort(replay_spy.samples(epoch)), trained), f"epoch {epoch} trains on the rest, once"
    assert not {s for _, s in reader_spy.pairs()} & set(held.tolist()), "no stored view of a held-out sample is read"

    metrics = read_metrics(out)
    val = [m["val_top1"] for m in metrics]
    best = int(np.argmax(val))  # the first epoch of the best validation accuracy
    summary = read_json(out / "summary.json")
    assert (summary["selection"], summary["best_epoch"], summary["val_samples"]) == ("val", best + 1, 16)
    assert summary["best_val_acc"] == val[best]
    assert summary["best_acc"] == metrics[best]["test_top1"] == result.best_acc, "test accuracy at the best val epoch"
    assert summary["teacher_forwards_saved"] == 3 * 48
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == best + 1
    selection = read_json(out / "config.json")["selection"]
    assert {k: selection[k] for k in ("by", "fraction", "seed", "samples")} == {
        "by": "val", "fraction": 0.25, "seed": 0, "samples": 16}

    # Validation is on the clean images of the held-out training samples, by the best epoch's model.
    model = create_model("resnet8", num_classes=10)
    load_checkpoint(model, out / "best.pt")
    held_set = open_dataset(SYNTHETIC, "train").subset(held)
    assert evaluate_model(model, held_set, device=torch.device("cpu"))["top1"] == pytest.approx(val[best])


def test_without_a_holdout_selection_on_test_is_labelled_optimistic(synthetic_cache, tmp_path, run_cli):
    out = tmp_path / "run"
    done = run_cli(["train", "--method", "kd", "--cache", synthetic_cache, "--student", "resnet8", "--dataset",
                    SYNTHETIC, "--epochs", "1", "--device", "cpu", "--quiet", "--out", out])
    assert done.code == 0, done.err
    assert "best by test accuracy (optimistic: selected on the test set)" in done.out.splitlines()[-2]
    summary = read_json(out / "summary.json")
    assert (summary["selection"], summary["best_val_acc"]) == ("test", None)
    assert read_json(out / "config.json")["selection"] == {"by": "test"}

    out = tmp_path / "val"
    done = run_cli(["train", "--method", "kd", "--cache", synthetic_cache, "--student", "resnet8", "--dataset",
                    SYNTHETIC, "--epochs", "1", "--device", "cpu", "--quiet", "--val-fraction", "0.25", "--out", out])
    assert done.code == 0, done.err
    summary = read_json(out / "summary.json")
    assert (f"test top-1 {summary['best_acc']:.2f}% at epoch 1, best by validation accuracy "
            f"({summary['best_val_acc']:.2f}% on 16 held-out training images)") in done.out
    assert "selection  best.pt by validation accuracy on 16 of 64 training images" in done.out


@pytest.mark.parametrize(("fraction", "message"), [
    ("1", "--val-fraction must be in [0, 1)"),
    ("-0.1", "--val-fraction must be in [0, 1)"),
    ("0.001", "holds out 0"),
    ("0.99", "leaves at least one image to validate on and two to train on"),
])
def test_a_holdout_that_cannot_work_is_refused(synthetic_cache, tmp_path, run_cli, fraction, message):
    out = tmp_path / "run"
    refused = run_cli(["train", "--method", "kd", "--cache", synthetic_cache, "--student", "resnet8", "--dataset",
                       SYNTHETIC, "--epochs", "1", "--device", "cpu", "--quiet", "--val-fraction", fraction,
                       "--out", out])
    assert refused.code == 2
    lines = refused.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in refused.err, refused.err
    assert not out.exists()


def test_resume_keeps_the_holdout_and_the_selection(synthetic_cache, train_run, monkeypatch):
    fields = dict(method="kd", cache=synthetic_cache, epochs=3, val_fraction=0.25)
    _, whole = train_run("whole", **fields)

    real = train_module.evaluate_model
    calls = {"n": 0}

    def stop_in_epoch_2(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1's test and validation passes ran: last.pt holds epoch 1
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "evaluate_model", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_run("cut", **fields)
    monkeypatch.setattr(train_module, "evaluate_model", real)
    _, cut = train_run("cut", **fields, resume=True)

    assert read_metrics(cut) == [{**m, **{k: r[k] for k in ("seconds", "samples_per_second")}}
                                 for m, r in zip(read_metrics(whole), read_metrics(cut))]
    for name in ("best.pt", "last.pt"):
        a, b = weights(whole / name), weights(cut / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = read_json(whole / "summary.json"), read_json(cut / "summary.json")
    for key in ("selection", "best_epoch", "best_acc", "best_val_acc", "val_samples"):
        assert a[key] == b[key], key
    assert read_json(whole / "config.json")["selection"] == read_json(cut / "config.json")["selection"]
