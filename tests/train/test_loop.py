"""The training loop as it runs: which views each epoch replays, that the teacher information
belongs to the student's image, what a run folder holds, the learning-rate schedule, and that
every registered method trains from either encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitcache.errors import BadInput, CacheMismatch
from logitcache.methods import get_method, list_methods
from logitcache.store.reader import CacheReader
from logitcache.teacher import build_teacher
from train_helpers import read_json, read_metrics, views_of, weights

DIGITS_N = 1438


# --------------------------------------------------------------------------- view policy
def test_cycle_policy_replays_view_e_mod_v_for_every_sample(digits_cache, train_run, replay_spy):
    train_run(dataset="digits", cache=digits_cache, epochs=3)
    reader = CacheReader(digits_cache)
    assert list(reader.spec.views.augmented) == [1, 2]
    for epoch, view in ((1, 1), (2, 2), (3, 1)):
        samples, seeds = replay_spy.samples(epoch), replay_spy.seeds(epoch)
        assert np.array_equal(np.sort(samples), np.arange(DIGITS_N)), "each sample once per epoch"
        assert (views_of(reader, samples, seeds) == view).all()
        # The replayed seeds are the stored ones, not merely seeds of the right view.
        assert np.array_equal(seeds, reader.seeds(view)[samples])


def _random_views(run, spy, reader, **fields) -> list[np.ndarray]:
    """(epoch -> (N,) view of each sample) as a random-policy run replayed them."""
    spy.reset()
    run(**fields)
    out = []
    for epoch in (1, 2):
        samples, seeds = spy.samples(epoch), spy.seeds(epoch)
        assert np.array_equal(np.sort(samples), np.arange(reader.spec.dataset.num_samples))
        per_sample = np.empty(len(samples), dtype=np.int64)
        per_sample[samples] = views_of(reader, samples, seeds)
        out.append(per_sample)
    return out


def test_random_policy_is_a_seeded_choice_per_epoch_and_sample(digits_cache, train_run, replay_spy):
    reader = CacheReader(digits_cache)
    common = dict(dataset="digits", cache=digits_cache, epochs=2, view_policy="random")
    first = _random_views(train_run, replay_spy, reader, name="a", **common)
    for views in first:
        assert set(np.unique(views)) == {1, 2}, "only augmented views, never the clean view 0"
        assert 0.45 < (views == 1).mean() < 0.55
    changed = (first[0] != first[1]).mean()
    assert 0.4 < changed < 0.6, "epochs draw independently"

    # Reproducible, and a function of (seed, epoch, sample) only: not of the batch size.
    again = _random_views(train_run, replay_spy, reader, name="b", batch_size=32, **common)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    other_seed = _random_views(train_run, replay_spy, reader, name="c", seed=1, **common)
    assert 0.4 < (first[0] != other_seed[0]).mean() < 0.6


# --------------------------------------------------------------------------- teacher == student image
@pytest.mark.parametrize("policy", ["cycle", "random"])
def test_teacher_view_belongs_to_the_students_image(synthetic_full_cache, train_run, replay_spy, policy):
    reader = CacheReader(synthetic_full_cache)
    train_run(cache=synthetic_full_cache, epochs=2, batch_size=16, view_policy=policy)
    teacher = build_teacher(reader.spec.teacher.name, reader.spec.dataset.num_classes, checkpoint=None,
                            random_init=True, seed=reader.spec.views.seed)
    assert len(replay_spy.steps) == 2 * 4
    for step in replay_spy.steps:
        assert step.epoch == step.call
        views = views_of(reader, step.samples, step.seeds)
        stored = reader.read(views, step.samples)
        assert step.teacher is not None and step.teacher.exact
        # The method got the cache's logits of exactly these (view, sample) pairs ...
        assert torch.equal(step.teacher.logits, stored.logits)
        assert torch.equal(step.teacher.target, torch.from_numpy(reader.labels[step.samples]))
        # ... and they are the teacher's logits of the very images the student was given.
        with torch.inference_mode():
            live = teacher(step.images)
        torch.testing.assert_close(live, step.teacher.logits, atol=1e-4, rtol=1e-4)


def test_teacher_logits_do_not_belong_to_another_view(synthetic_full_cache, train_run, replay_spy):
    """The check above can fail: the other stored view of the same samples has other logits."""
    reader = CacheReader(synthetic_full_cache)
    train_run(cache=synthetic_full_cache, batch_size=64)
    step = replay_spy.steps[0]
    other = reader.read(np.full(len(step.samples), 2), step.samples)  # epoch 1 of cycle shows view 1
    assert (step.teacher.logits - other.logits).abs().max() > 1e-2


# --------------------------------------------------------------------------- batch size
def test_replay_does_not_depend_on_batch_size(make_cache, train_run, reader_spy):
    # 97 = 3·32 + 1 = 64 + 33: a batch size of 32 leaves a last batch of one sample, 64 does not.
    cache = make_cache(dataset="synthetic:n=97,size=8", chunk_samples=16)
    read = {}
    for batch_size in (32, 64):
        reader_spy.reads.clear()
        train_run(f"b{batch_size}", dataset="synthetic:n=97,size=8", cache=cache, epochs=2, batch_size=batch_size,
                  view_policy="random")
        pairs = reader_spy.pairs()
        assert len(pairs) == 2 * 97 and sorted(s for _, s in pairs) == sorted(2 * list(range(97))), \
            f"batch size {batch_size}: every sample read once per epoch"
        read[batch_size] = reader_spy.logits_by_pair()
    assert read[32].keys() == read[64].keys()
    for pair, logits in read[32].items():
        assert torch.equal(logits, read[64][pair]), pair


# --------------------------------------------------------------------------- run folder
def test_run_folder_records_metrics_summary_and_config(synthetic_cache, train_run):
    result, out = train_run(method="dkd", cache=synthetic_cache, epochs=2, overrides=("beta=2",))
    assert sorted(p.name for p in out.iterdir()) == [".lock-run", "best.pt", "config.json", "last.pt",
                                                     "metrics.jsonl", "summary.json"]
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("lr", "train_loss", "train_ce", "train_tckd", "train_nckd", "train_acc", "test_top1", "test_top5", "test_nll",
                    "test_ece", "seconds", "samples_per_second"):
            assert key in m, key
        assert np.isfinite(m["train_loss"]) and m["train_loss"] == pytest.approx(m["train_ce"] + m["train_tckd"] + m["train_nckd"])
    summary = read_json(out / "summary.json")
    accs = [m["test_top1"] for m in metrics]
    assert summary["best_acc"] == max(accs) == result.best_acc
    assert summary["best_epoch"] == 1 + accs.index(max(accs))
    assert summary["last_acc"] == accs[-1]
    assert summary["epochs"] == 2
    assert (summary["teacher_forwards_saved"], summary["teacher_forwards_run"]) == (2 * 64, 0)
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == summary["best_epoch"]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2

    config = read_json(out / "config.json")
    assert config["config"]["method"] == "dkd" and config["config"]["epochs"] == 2
    # The default warm-up (20 of 240 epochs) is fitted to the 2-epoch run.
    assert config["hparams"] == {**get_method("dkd").defaults(), "beta": 2.0, "warmup": 1} == summary["hparams"]
    assert config["cache"]["location"] == str(synthetic_cache)
    assert config["cache"]["spec"]["teacher"]["name"] == "resnet8"
    teacher = CacheReader(synthetic_cache).spec.teacher
    assert config["teacher"] == {"name": "resnet8", "weights_sha256": teacher.weights_sha256, "logits": "cache"}
    assert config["lr"] == 0.05 and config["device"] == "cpu"
    assert config["versions"]["torch"] == torch.__version__


def test_labels_only_run_saves_no_teacher_forwards(train_run):
    result, out = train_run(method="ce", epochs=2)
    assert (result.teacher_forwards_saved, result.teacher_forwards_run) == (0, 0)
    config = read_json(out / "config.json")
    assert config["cache"] is None and config["teacher"] is None and config["hparams"] == {}


def test_milestone_schedule(train_run):
    _, out = train_run(method="ce", epochs=8)
    # 62.5 / 75 / 87.5 % of 8 epochs: lr drops after epochs 5, 6 and 7 (mdistiller: epoch > milestone).
    assert read_json(out / "config.json")["milestones"] == [5, 6, 7]
    lrs = [m["lr"] for m in read_metrics(out)]
    assert lrs == pytest.approx([0.05] * 5 + [0.005, 0.0005, 0.00005])

    _, out = train_run("custom", method="ce", epochs=4, lr=0.2, milestones=(1, 3), lr_decay=0.5)
    assert [m["lr"] for m in read_metrics(out)] == pytest.approx([0.2, 0.1, 0.1, 0.05])


def test_mobilenet_students_default_to_lr_0_01(train_run):
    _, out = train_run(student="MobileNetV2", method="ce")
    assert read_json(out / "config.json")["lr"] == 0.01
    assert read_metrics(out)[0]["lr"] == pytest.approx(0.01)


def test_training_changes_the_weights_and_learns(train_run):
    """Guard for the equality tests: a run is not a no-op."""
    result, out = train_run(method="ce", epochs=3, dataset="digits", batch_size=64)
    start = train_run("init", method="ce", epochs=1, dataset="digits", lr=0.0, momentum=0.0, weight_decay=0.0)[1]
    assert (weights(out / "last.pt")["fc.weight"] - weights(start / "last.pt")["fc.weight"]).abs().max() > 1e-2
    assert result.best_acc > 50.0  # resnet8 on digits, 3 epochs from labels (chance: 10 %)


def test_diverging_loss_stops_the_run_naming_the_fix(train_run):
    with pytest.raises(BadInput, match=r"loss became (nan|inf) at epoch 1: lower --lr"):
        train_run(method="ce", lr=1e30, batch_size=8)

# --------------------------------------------------------------------------- methods and encodings
@pytest.mark.parametrize("encoding", ["topk", "full"])
@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_from_either_encoding(method, encoding, synthetic_cache, synthetic_full_cache,
                                                  train_run, replay_spy):
    cache = synthetic_cache if encoding == "topk" else synthetic_full_cache
    result, out = train_run(method=method, cache=cache)
    (metrics,) = read_metrics(out)
    info = get_method(method)
    fitted = {"warmup": 1} if "warmup" in info.defaults() else {}  # a default warm-up shortened to the 1-epoch run
    assert replay_spy.steps[0].hparams == result.hparams == {**info.defaults(), **fitted}
    terms = replay_spy.steps[0].losses.keys()
    assert terms and {f"train_{k}" for k in terms} <= metrics.keys()
    assert np.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    assert metrics["train_loss"] == pytest.approx(sum(metrics[f"train_{k}"] for k in terms))
    if info.needs_teacher:
        assert all(s.teacher is not None and s.teacher.exact == (encoding == "full") for s in replay_spy.steps)
        assert result.teacher_forwards_saved == 64
    else:
        assert result.teacher_forwards_saved == 0


# --------------------------------------------------------------------------- mismatches
@pytest.mark.parametrize(("dataset", "difference"), [
    ("synthetic:n=64,size=8", "number of samples: cache has 1438, training data has 64"),
    ("synthetic:n=1438,size=8,classes=10", "dataset fingerprint"),
])
def test_cache_made_for_other_data_is_refused(digits_cache, train_run, tmp_path, dataset, difference):
    with pytest.raises(CacheMismatch, match=difference):
        train_run(dataset=dataset, cache=digits_cache)
    assert not (tmp_path / "run").exists()
