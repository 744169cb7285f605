"""``train --label-fraction F``: which samples keep their label is a seeded pure function of
(samples, F, seed); KD methods see the teacher's top-1 in place of a missing label (no trace of
the hidden label stays in the teacher view) and drop CE there; ce trains on the labelled share."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache.methods import compute_loss, get_method, list_methods
from logitcache.teacher_view import TeacherView
from logitcache.train import CE_WEIGHT_KEY, labelled_split

from experiment_helpers import SYNTHETIC

train_module = importlib.import_module("logitcache.train")


@settings(deadline=None, max_examples=200)
@given(n=st.integers(2, 3000), fraction=st.floats(0.01, 1), seed=st.integers(0, 2**31))
def test_the_labelled_share_is_a_pure_seeded_subset(n, fraction, seed):
    samples = np.arange(0, 3 * n, 3)  # the trained-on samples, e.g. after a hold-out
    labelled = labelled_split(samples, fraction, seed)
    assert len(labelled) == round(fraction * n)
    assert np.all(np.isin(labelled, samples)) and np.all(np.diff(labelled) > 0), "sorted distinct training samples"
    assert np.array_equal(labelled, labelled_split(samples, fraction, seed)), "a resumed run sees the same labels"


def test_other_seeds_label_other_samples():
    samples = np.arange(1000)
    assert not np.array_equal(labelled_split(samples, 0.1, 0), labelled_split(samples, 0.1, 1))


@settings(deadline=None, max_examples=50)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 4))
def test_a_hidden_label_leaves_no_trace_in_a_topk_view(seed, k):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 10, generator=g) * 3
    values, indices = logits.topk(k, dim=1)
    lse = torch.logsumexp(logits, dim=1)

    def view(labels):
        return TeacherView.from_topk(values, indices, lse, logits.gather(1, labels[:, None])[:, 0], labels, 10)

    a, b = torch.randint(0, 10, (6,), generator=g), torch.randint(0, 10, (6,), generator=g)
    hidden = torch.ones(6, dtype=torch.bool)
    va, vb = view(a).with_teacher_labels(hidden), view(b).with_teacher_labels(hidden)
    assert torch.equal(va.logits, vb.logits), "the rebuild no longer depends on the hidden label"
    assert torch.equal(va.target, indices[:, 0])
    full = TeacherView.from_logits(logits, a).with_teacher_labels(hidden)
    assert torch.equal(full.target, logits.argmax(dim=1)) and torch.equal(full.logits, logits)


@pytest.mark.parametrize("method", [m for m in list_methods() if get_method(m).needs_teacher])
def test_every_kd_method_weighs_its_ce_term_by_ce_weight(method):
    """The loop drops CE per unlabelled sample by re-forming the "ce" term as ce_weight × CE."""
    info = get_method(method)
    hparams = info.defaults()
    assert CE_WEIGHT_KEY in hparams
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    target = torch.randint(0, 10, (8,), generator=g)
    hparams[CE_WEIGHT_KEY] = 0.37
    losses = compute_loss(method, student, TeacherView.from_logits(teacher, target), target, epoch=30, hparams=hparams)
    assert losses["ce"].item() == pytest.approx(0.37 * F.cross_entropy(student, target).item(), rel=1e-5)


def test_unlabelled_rows_add_no_ce_and_keep_their_kd_terms():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    target = torch.randint(0, 10, (8,), generator=g)
    hparams = get_method("dkd").defaults()
    tview = TeacherView.from_logits(teacher, target)
    fn = get_method("dkd").fn
    none = train_module._semi_supervised_losses(fn, student, tview, torch.ones(8, dtype=torch.bool), 30, hparams)
    assert none["ce"].item() == 0
    by_teacher = fn(student, TeacherView.from_logits(teacher, teacher.argmax(1)), teacher.argmax(1), epoch=30, **hparams)
    assert none["nckd"].item() == pytest.approx(by_teacher["nckd"].item()), "DKD's true class is the teacher's top-1"
    half = torch.arange(8) % 2 == 1
    some = train_module._semi_supervised_losses(fn, student, tview, half, 30, hparams)
    per_sample = F.cross_entropy(student, target, reduction="none")
    assert some["ce"].item() == pytest.approx(per_sample[~half].sum().item() / 8), "mean over the whole batch"


def test_label_fraction_end_to_end(experiment_cache, run_cli, tmp_path):
    base = ["train", "--cache", experiment_cache, "--student", "resnet8", "--dataset", SYNTHETIC, "--epochs", "1",
            "--device", "cpu", "--quiet", "--label-fraction", "0.25", "--seed", "2"]
    kd = run_cli([*base, "--method", "kd", "--out", tmp_path / "kd"])
    assert kd.code == 0, kd.err
    assert "16 training images keep their label (--label-fraction 0.25, seed 2); the other 48: KD terms" in kd.out
    record = json.loads((tmp_path / "kd" / "config.json").read_text())
    expected = labelled_split(np.arange(64), 0.25, 2)
    assert record["labels"]["labelled"] == 16 and record["labels"]["of"] == 64 and record["labels"]["seed"] == 2
    import hashlib

    assert record["labels"]["sha256"] == hashlib.sha256(expected.astype("<i8").tobytes()).hexdigest()
    summary = json.loads((tmp_path / "kd" / "summary.json").read_text())
    assert summary["teacher_forwards_saved"] == 64, "the KD student trains on every image"
    ce = run_cli([*base, "--method", "ce", "--out", tmp_path / "ce"])
    assert ce.code == 0, ce.err
    assert "trained on those only (no teacher)" in ce.out


def test_ce_trains_on_the_labelled_share_only(experiment_cache, monkeypatch, tmp_path):
    seen = []
    real = train_module.augmented_batches

    def spy(dataset, spec, view_batches, **kw):
        for batch, images in real(dataset, spec, view_batches, **kw):
            seen.append(batch.samples)
            yield batch, images

    monkeypatch.setattr(train_module, "augmented_batches", spy)
    train_module.train(train_module.TrainConfig(
        method="ce", cache=str(experiment_cache), student="resnet8", dataset=SYNTHETIC, epochs=1, device="cpu",
        progress=False, out=str(tmp_path / "ce"), label_fraction=0.25, seed=2))
    assert np.array_equal(np.sort(np.concatenate(seen)), labelled_split(np.arange(64), 0.25, 2))


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "0.01"])
def test_bad_label_fractions_are_refused_in_one_line(value, experiment_cache, run_cli, tmp_path):
    out = tmp_path / "run"
    result = run_cli(["train", "--cache", experiment_cache, "--student", "resnet8", "--dataset", SYNTHETIC,
                      "--method", "kd", "--device", "cpu", "--out", out, "--label-fraction", value])
    assert result.code == 2 and "--label-fraction" in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_mixed_views_are_refused_with_a_label_fraction(run_cli, tmp_path):
    from logitcache.dump import DumpConfig, dump

    mixed = tmp_path / "mixed.zarr"
    dump(DumpConfig(teacher="resnet8", dataset=SYNTHETIC, out=str(mixed), random_init=True, views=1, encoding="full",
                    chunk_samples=16, strong={"mixup": 0.8}, device="cpu", progress=False))
    out = tmp_path / "run"
    result = run_cli(["train", "--cache", mixed, "--student", "resnet8", "--dataset", SYNTHETIC, "--method", "kd",
                      "--device", "cpu", "--epochs", "1", "--out", out, "--label-fraction", "0.5"])
    assert result.code == 2 and "does not combine with mixed views" in result.err and "Traceback" not in result.err
    assert not out.exists()
