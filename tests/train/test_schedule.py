"""The resolved schedule and hyper-parameters of a run: milestones that each decay once inside
the run, a default warm-up fitted to the run length, pair presets only for their pair, and the
settings block ``train`` prints before its first epoch."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache.methods import get_method
from logitcache.train import MILESTONE_FRACTIONS, RECIPE_EPOCHS, TrainConfig
from train_helpers import read_json, read_metrics

SYNTHETIC = "synthetic:n=64,size=8"
BASE = ["--student", "resnet8", "--dataset", SYNTHETIC, "--device", "cpu", "--workers", "0", "--quiet"]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _block(out: str) -> dict[str, str]:
    """The settings block's lines by their label, checked to come before the first epoch line."""
    lines = out.splitlines()
    start = lines.index("settings:")
    assert all(not line.startswith("epoch ") for line in lines[:start]), out
    block = {}
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        label, _, text = line.strip().partition(" ")
        block[label] = text.strip()
    assert list(block) == ["schedule", "forward", "method", "hparams", "views", "selection"], out
    assert lines[start + 1 + len(block)].startswith("epoch 1/"), "the block comes right before the first epoch"
    return block


# --------------------------------------------------------------------------- milestones
@settings(deadline=None, max_examples=300)
@given(epochs=st.integers(1, 2000))
def test_default_milestones_decay_once_each_inside_the_run(epochs):
    stones = TrainConfig(student="s", dataset="d", out="o", epochs=epochs).resolved_milestones()
    assert all(1 <= m < epochs for m in stones), "a milestone at or after the last epoch does nothing"
    assert list(stones) == sorted(set(stones)), "a repeated milestone decays twice in one step"
    assert set(stones) <= {round(f * epochs) for f in MILESTONE_FRACTIONS}
    if epochs >= 16:  # long enough for three distinct epochs: the published recipe's shape
        assert len(stones) == 3


def test_the_published_recipe_is_unchanged():
    assert TrainConfig(student="s", dataset="d", out="o").resolved_milestones() == (150, 180, 210)


def test_a_three_epoch_run_decays_once_and_says_so(synthetic_cache, tmp_path, run_cli):
    """Before: milestones [2, 2, 3] took lr from 0.05 to 0.0005 in one step after epoch 2."""
    out = tmp_path / "run"
    done = run_cli(["train", "--method", "kd", "--cache", synthetic_cache, *BASE, "--epochs", "3", "--out", out])
    assert done.code == 0, done.err
    assert [m["lr"] for m in read_metrics(out)] == pytest.approx([0.05, 0.05, 0.005])
    assert read_json(out / "config.json")["milestones"] == [2]
    schedule = _block(done.out)["schedule"]
    assert schedule.startswith("3 epochs, lr 0.05 x0.1 after epoch 2 (default: 62.5%, 75.0%, 87.5% of 3 epochs")
    assert "SGD momentum 0.9, weight decay 0.0005, batch 64" in schedule


@pytest.mark.parametrize(("epochs", "milestones", "message"), [
    (2, "150,180", "--milestones 150,180 outside the run of --epochs 2"),
    (8, "3,8", "--milestones 8 outside the run of --epochs 8"),
    (8, "0,4", "--milestones 0 outside the run"),
    (8, "4,4", "must increase and name each epoch once"),
    (8, "5,3", "must increase and name each epoch once"),
])
def test_milestones_that_cannot_act_as_written_are_refused(synthetic_cache, tmp_path, run_cli, epochs, milestones,
                                                           message):
    out = tmp_path / "run"
    refused = run_cli(["train", "--method", "kd", "--cache", synthetic_cache, *BASE, "--epochs", epochs,
                       "--milestones", milestones, "--out", out])
    assert refused.code == 2
    assert message in _one_error_line(refused.err)
    assert not out.exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--lr", "-1", "--lr must be >= 0, got -1"),
    ("--lr", "nan", "--lr must be >= 0, got nan"),
    ("--momentum", "-0.5", "--momentum must be in [0, 1), got -0.5"),
    ("--momentum", "1", "--momentum must be in [0, 1), got 1"),
    ("--weight-decay", "-1", "--weight-decay must be >= 0, got -1"),
    ("--lr-decay", "0", "--lr-decay must be in (0, 1], got 0"),
    ("--lr-decay", "-1", "--lr-decay must be in (0, 1], got -1"),
])
def test_optimizer_settings_sgd_cannot_use_are_refused(tmp_path, run_cli, option, value, message):
    """Before: a traceback from torch.optim.SGD, or an lr stopped or reversed at a milestone."""
    out = tmp_path / "run"
    refused = run_cli(["train", "--method", "ce", *BASE, "--epochs", "2", option, value, "--out", out])
    assert refused.code == 2
    assert _one_error_line(refused.err) == f"error: {message}"
    assert not out.exists()


# --------------------------------------------------------------------------- warm-up
@pytest.mark.parametrize("method", ["dkd", "rld", "dkd+loca"])
def test_the_default_warmup_is_scaled_to_a_short_run(synthetic_cache, train_run, replay_spy, method):
    """Before: DKD/RLD kept their 20-epoch warm-up in a 4-epoch run (KD terms at most 20 % weight)."""
    result, out = train_run(method=method, cache=synthetic_cache, epochs=4)
    assert result.hparams["warmup"] == 1 == replay_spy.steps[0].hparams["warmup"]
    assert read_json(out / "config.json")["hparam_sources"]["warmup"] == "default 20 of 240 epochs, scaled to the run"


@pytest.mark.parametrize(("epochs", "warmup"), [(1, 1), (4, 1), (30, 2), (120, 10), (240, 20), (480, 20)])
def test_warmup_keeps_its_share_of_the_recipe_and_is_never_lengthened(epochs, warmup):
    from logitcache.train import _resolve_method

    config = TrainConfig(student="resnet8", dataset="d", out="o", method="dkd", epochs=epochs)
    assert _resolve_method(config, "resnet8").values["warmup"] == warmup
    assert warmup == min(20, max(1, round(20 * epochs / RECIPE_EPOCHS)))


def test_a_warmup_set_by_hand_is_kept_or_refused_when_longer_than_the_run(synthetic_cache, tmp_path, run_cli):
    out = tmp_path / "kept"
    done = run_cli(["train", "--method", "dkd", "--cache", synthetic_cache, *BASE, "--epochs", "2",
                    "--set", "warmup=2", "--out", out])
    assert done.code == 0, done.err
    assert read_json(out / "config.json")["hparams"]["warmup"] == 2
    assert "warmup=2 [--set]" in _block(done.out)["hparams"]
    out = tmp_path / "refused"
    refused = run_cli(["train", "--method", "rld", "--cache", synthetic_cache, *BASE, "--epochs", "4",
                       "--set", "warmup=20", "--out", out])
    assert refused.code == 2
    line = _one_error_line(refused.err)
    assert "warmup=20 (--set) is longer than --epochs 4" in line and "--set warmup=N with N <= 4" in line
    assert not out.exists()


# --------------------------------------------------------------------------- presets
@pytest.fixture(scope="module")
def resnet56_cache(make_cache):
    return make_cache(teacher="resnet56", dataset=f"{SYNTHETIC},classes=10", chunk_samples=32)


def test_auto_preset_is_said_with_every_hyperparameter_before_the_first_epoch(resnet56_cache, tmp_path, run_cli):
    """Before: a resnet56 cache and a resnet20 student ran dkd with beta = 2 and nothing said it."""
    out = tmp_path / "run"
    done = run_cli(["train", "--method", "dkd", "--cache", resnet56_cache, *BASE, "--student", "resnet20",
                    "--epochs", "1", "--out", out])
    assert done.code == 0, done.err
    block = _block(done.out)
    assert block["method"] == "dkd, preset resnet56-resnet20 (auto: the published setting for resnet56 -> resnet20)"
    assert block["hparams"] == ("ce_weight=1.0, alpha=1.0, beta=2.0 [preset resnet56-resnet20], temperature=4.0, "
                                "warmup=1 [default 20 of 240 epochs, scaled to the run], logit_stand=False")
    assert read_json(out / "config.json")["preset"] == "resnet56-resnet20"


def test_a_pair_preset_for_other_models_is_refused_unless_forced(synthetic_cache, tmp_path, run_cli):
    out = tmp_path / "run"
    args = ["train", "--method", "dkd", "--cache", synthetic_cache, *BASE, "--epochs", "1",
            "--preset", "resnet56-resnet20", "--out", out]
    refused = run_cli(args)
    assert refused.code == 2
    line = _one_error_line(refused.err)
    assert "--preset resnet56-resnet20 is the published setting of the pair resnet56-resnet20" in line
    assert "distills resnet8 into resnet8" in line and "--force-preset" in line
    assert not out.exists()

    forced = run_cli([*args, "--force-preset"])
    assert forced.code == 0, forced.err
    saved = read_json(out / "config.json")
    assert saved["preset"] == "resnet56-resnet20" and saved["config"]["force_preset"] is True
    assert saved["hparams"]["beta"] == get_method("dkd").presets["resnet56-resnet20"]["beta"]
    assert _block(forced.out)["method"] == "dkd, preset resnet56-resnet20"


def test_no_preset_and_no_hyperparameters_read_as_such(tmp_path, run_cli):
    done = run_cli(["train", "--method", "ce", *BASE, "--epochs", "1", "--out", tmp_path / "run"])
    assert done.code == 0, done.err
    block = _block(done.out)
    assert block["method"] == "ce, preset none"
    assert block["hparams"] == "(none)"
    assert block["selection"].startswith("best.pt by test accuracy (optimistic: selected on the test set")
