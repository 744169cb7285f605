"""Strong augmentation and mixing options as a careless user and an attacker give them.

Values that would hang a dump (``--aa rand-n100000``), overflow the integer ops (infinite or huge
magnitudes and jitter), poison λ with NaN (tiny or infinite alphas) or be stored yet change no
view (``--mixup-switch-prob`` without both alphas, ``--mixup-prob`` without one, ``--aa ''``) are
one ``error:`` line from ``dump`` and ``train`` with nothing on disk; the options that are taken
say so before work starts, and refusals name the flags that were given. Where timm gives a value a
meaning (``mstd`` above 100: uniform magnitudes; increasing enhance factors kept >= 0.1) it is
replayed with that meaning.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lm_helpers import LM_SEQ_LEN, lm_dump_args

from logitcache.augment import (
    AutoAugment,
    _q8,
    _rand_ops,
    mix_params,
    plan_views,
    run_plan,
)
from logitcache.views import ViewSpec

SYNTHETIC = "synthetic:n=32,size=8"
DUMP = ["dump", "--teacher", "resnet8", "--random-init", "--dataset", SYNTHETIC, "--views", "2", "--device", "cpu",
        "--quiet", "--batch-size", "16"]
TRAIN = ["train", "--student", "resnet8", "--dataset", SYNTHETIC, "--method", "ce", "--epochs", "1",
         "--batch-size", "16", "--device", "cpu", "--quiet"]

# flags -> a phrase of the one line that refuses them
BAD = {
    "jitter inf": (["--color-jitter", "inf"], "--color-jitter must be in [0, 255]"),
    "jitter huge": (["--color-jitter", "1e9"], "--color-jitter must be in [0, 255]"),
    "cutmix inf": (["--cutmix", "inf"], "--cutmix must be finite and >= 0"),
    "mixup tiny": (["--mixup", "1e-5"], "--mixup 1e-05 mixes nothing"),
    "layers that hang": (["--aa", "rand-n100000"], "1 <= n <= 15"),
    "infinite magnitude": (["--aa", "rand-minf-mmaxinf"], "0 <= m <= mmax <= 100"),
    "huge magnitude": (["--aa", "rand-m1e300-mmax1e300"], "0 <= m <= mmax <= 100"),
    "nan mstd": (["--aa", "rand-m9-mstdnan"], "mstd >= 0"),
    "empty aa": (["--aa", ""], "--aa is empty"),
    "switch alone": (["--mixup-switch-prob", "0.3"], "give both --mixup and --cutmix"),
    "switch with one alpha": (["--mixup", "1", "--mixup-switch-prob", "0.3"], "give both --mixup and --cutmix"),
    "prob alone": (["--mixup-prob", "0.3"], "give an alpha"),
    "prob 0": (["--cutmix", "1", "--mixup-prob", "0"], "--mixup-prob 0 mixes no view"),
}


@pytest.mark.parametrize("command", ["dump", "train"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_or_idle_strong_options_are_one_line_and_leave_nothing(case, command, run_cli, one_line, tmp_path):
    flags, phrase = BAD[case]
    out = tmp_path / "out"
    started = time.perf_counter()
    line = one_line(run_cli([*(DUMP if command == "dump" else TRAIN), *flags, "--out", out]))
    assert phrase in line, line
    assert time.perf_counter() - started < 30  # refused, not run (rand-n100000 took minutes)
    assert not out.exists()


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(1e-3, 1e300), cut=st.booleans(), start=st.integers(0, 2**32 - 4096))
def test_lambda_is_a_share_for_any_accepted_alpha(alpha, cut, start):
    """Tiny alphas underflow both Gamma draws to 0 and huge ones overflow their sum: λ stays in
    [0, 1], the blend weight in [0, 256] and the box inside the image (NaN gave λ = -3.6e16)."""
    seeds = np.arange(start, start + 4096, dtype=np.uint32)
    samples = np.arange(4096) % 16
    mix = mix_params(seeds, samples, np.zeros(4096, dtype=bool), 16, (5, 7), mixup=0.0 if cut else alpha,
                     cutmix=alpha if cut else 0.0, prob=1.0, switch_prob=0.5)
    assert np.isfinite(mix.lam).all() and (mix.lam >= 0).all() and (mix.lam <= 1).all()
    assert ((mix.weight >= 0) & (mix.weight <= 256)).all()
    assert ((mix.box >= 0) & (mix.box <= [5, 5, 7, 7])).all()


def _enhance_factors(policy: str, count: int = 3000) -> np.ndarray:
    aa = AutoAugment.parse(policy)
    plans = plan_views(np.arange(count), (8, 8), aa, 0.0, 0.0)
    return np.array([args[0] for plan in plans for name, args in plan
                     if name in ("color", "contrast", "brightness", "sharpness")])


def test_mstd_above_100_draws_the_magnitude_uniformly_as_timm():
    """timm reads ``mstd`` > 100 as uniform magnitudes in [0, m], not a Gaussian clipped to 0 or mmax."""
    assert AutoAugment.parse("rand-m9-mstd101-inc1").canonical() == AutoAugment.parse("rand-m9-mstdinf-inc1").canonical()
    factors = _enhance_factors("rand-m9-mstd101-inc1-n1-p1")
    assert factors.min() >= _q8(1 - 0.81) and factors.max() <= _q8(1 + 0.81)  # |m| never above 9
    inner = (factors > _q8(1 - 0.4)) & (factors < _q8(1 + 0.4))  # m below ~4.4: 49 % of uniform draws
    assert 0.4 < inner.mean() < 0.6


def test_increasing_enhance_factors_stay_at_timms_floor_of_0_1():
    assert _rand_ops(True)["Contrast"](20.0, -1, (8, 8)) == ("contrast", (_q8(0.1),))
    assert _enhance_factors("rand-m20-mmax20-inc1-n1-p1").min() == _q8(0.1)


def test_train_says_the_views_and_augmentation_it_replays(run_cli, tmp_path):
    result = run_cli([*TRAIN, "--aa", "trivial", "--cutmix", "1", "--views", "3", "--out", tmp_path / "run"])
    assert result.code == 0, result.err
    line = next(line for line in result.out.splitlines() if line.startswith("  views"))
    assert ("3 augmented views per sample (derived, seed 0), --view-policy cycle: 1 distinct in 1 epoch; "
            "crop(8, pad=1)+flip + aa trivial + cutmix 1 prob 1") in line, line


def test_refusals_name_the_strong_flags_given(make_cache, lm_files, run_cli, one_line, tmp_path):
    cache = make_cache(dataset=SYNTHETIC, topk=3, chunk_samples=16)
    line = one_line(run_cli([*TRAIN, "--method", "kd", "--cache", cache, "--reprob", "0.3", "--mixup", "1",
                             "--out", tmp_path / "run"]))
    assert "drop --reprob, --mixup, or train without the cache" in line, line
    text = one_line(run_cli(["dump", *lm_dump_args(lm_files, "--aa", "trivial", "--cutmix", "1"),
                             "--out", tmp_path / "c.zarr"]))
    assert "drop --aa, --cutmix" in text, text
    assert not (tmp_path / "run").exists() and not (tmp_path / "c.zarr").exists()


def test_info_epochs_on_a_text_cache_says_what_a_run_shows(lm_cache, run_cli):
    result = run_cli(["info", lm_cache, "--no-stats", "--epochs", "5"])
    assert result.code == 0, result.err
    assert "a run of 5 epochs shows each sample its one clean view every epoch" in result.out


@pytest.mark.parametrize("mixing", [["--mixup", "1"], ["--cutmix", "1", "--mixup-prob", "0.5"]])
def test_a_held_out_image_is_never_a_mixing_partner(mixing, run_cli, one_line, tmp_path):
    """Partners are drawn from every training image (by the dump, for a cache): with --val-fraction
    the student would train on pixels and labels of the images it is selected on."""
    out = tmp_path / "run"
    line = one_line(run_cli([*TRAIN, *mixing, "--val-fraction", "0.25", "--out", out]))
    assert "--val-fraction does not combine with mixed views" in line and "drop --val-fraction" in line, line
    assert not out.exists()


def test_a_resume_names_the_augmentation_flag_it_changes_and_reads_spellings_as_views(run_cli, one_line, tmp_path):
    out = tmp_path / "run"
    assert run_cli([*TRAIN, "--aa", "rand-m9-inc1", "--out", out]).code == 0
    changed = one_line(run_cli([*TRAIN, "--aa", "rand-m9-inc1", "--reprob", "0.2", "--out", out, "--resume"]))
    assert "(--reprob 0.0 -> 0.2)" in changed, changed  # was "--strong {'aa': ...} -> {...}"
    same = one_line(run_cli([*TRAIN, "--aa", "rand-inc1-m9", "--out", out, "--resume"]))  # the same policy
    assert "already finished its 1 epochs" in same, same


@pytest.mark.parametrize(("with_cache", "flags", "phrase"), [(False, ["--reprob", "5"], "--reprob must be in [0, 1]"),
                                                             (True, ["--reprob", "0.3"], "drop --reprob from the options")])
def test_a_sweep_refuses_augmentation_every_run_would_refuse_once(with_cache, flags, phrase, make_cache, run_cli,
                                                                  one_line, tmp_path):
    """Before: each (method, seed) run failed on its own, and the sweep left its folder behind."""
    cache = ["--cache", make_cache(dataset=SYNTHETIC, topk=3, chunk_samples=16)] if with_cache else []
    out = tmp_path / "sweep"
    line = one_line(run_cli(["sweep", "--student", "resnet8", "--dataset", SYNTHETIC, "--methods", "kd,ce", "--seeds",
                             "0", "--out", out, *cache, "--epochs", "1", "--device", "cpu", *flags]))
    assert phrase in line, line
    assert not out.exists()


def test_mixing_a_one_sample_dataset_is_refused(run_cli, one_line, tmp_path):
    """With no partner every view stayed unmixed, while the store recorded mixing."""
    out = tmp_path / "c.zarr"
    args = [a if a != SYNTHETIC else "synthetic:n=1,size=8" for a in DUMP]
    assert "has one: drop them" in one_line(run_cli([*args, "--mixup", "1", "--out", out]))
    assert not out.exists()


@pytest.mark.parametrize("text", ["rand", "rand-n3", "rand-m9-mstd0.5-inc1", "rand-m7-mstd101-mmax12-p0.3"])
def test_rand_strings_mean_what_timm_reads_from_them(text):
    """Defaults included: a string without m is timm's m = 10 (it was 9 here)."""
    timm = pytest.importorskip("timm.data.auto_augment")
    ra, aa = timm.rand_augment_transform(text, {}), AutoAugment.parse(text)
    op = ra.ops[0]
    assert (aa.n, aa.m, aa.p, aa.mstd, aa.mmax) == (ra.num_layers, op.magnitude, op.prob, op.magnitude_std,
                                                    op.magnitude_max or 10)
    assert bool(aa.inc) == any("Increasing" in o.name for o in ra.ops)


def test_view_policy_on_text_is_refused(lm_files, run_cli, one_line, tmp_path):
    """Text has one clean view: --view-policy random would be recorded and pick nothing."""
    out = tmp_path / "run"
    line = one_line(run_cli(["train", "--student", f"hf:{lm_files['student']}", "--method", "ce", "--dataset",
                             f"text:{lm_files['text']}", "--seq-len", LM_SEQ_LEN, "--epochs", "1", "--device", "cpu",
                             "--quiet", "--view-policy", "random", "--out", out]))
    assert "drop --view-policy" in line, line
    assert not out.exists()


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (300, 200)])
def test_the_largest_accepted_values_run_every_op(hw):
    """The limits are where the integer ops still hold: every op at m = mmax = 100, both signs, and
    full-strength jitter and erasing give uint8 images."""
    image = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ops = [f(100.0, s, hw) for inc in (False, True) for f in _rand_ops(inc).values() for s in (-1, 1)]
    assert run_plan(image, ops, 0).dtype == torch.uint8
    widest = AutoAugment.parse("rand-m100-mmax100-n15-p1-mstdinf-inc1")
    for aa, jitter in ((None, 255.0), (widest, 0.0)):
        for seed, plan in enumerate(plan_views(np.arange(20), hw, aa, jitter, 1.0)):
            assert run_plan(image, plan, seed).shape == image.shape


def test_describe_says_a_resized_crops_ratio_and_eval_resize_where_not_torchvisions():
    """What dump, train and info print is the whole spec: a timm model's crop_pct moves eval_resize."""
    spec = ViewSpec(kind="resized_crop", size=224, ratio=(0.5, 2.0), eval_resize=236)
    assert spec.describe() == f"resized_crop(224, scale=(0.08,1), ratio=(0.5,2), eval_resize=236, {spec.resampler})+flip"


def test_a_dump_over_a_store_of_other_augmentation_names_each_field(run_cli, one_line, tmp_path, snapshot):
    out = tmp_path / "c.zarr"
    assert run_cli([*DUMP, "--reprob", "0.25", "--cutmix", "1", "--out", out]).code == 0
    before = snapshot(out)
    line = one_line(run_cli([*DUMP, "--cutmix", "1", "--mixup", "0.5", "--mixup-switch-prob", "0.3", "--out", out]))
    for field in ("reprob: 0.25 vs not set", "mixup: not set vs 0.5", "mixup_switch_prob: not set vs 0.3"):
        assert f"views.augmentation.{field}" in line, line  # was "None": as if the option had that value
    assert snapshot(out) == before
