"""``train --opt sgd|adamw|auto`` and ``--clip-grad``: the optimiser a run resolves is the one it
uses, records and resumes with; SGD's recipe stays the image default, AdamW the hf: students'."""

from __future__ import annotations

import math

import pytest
import torch
from lm_helpers import LM_SEQ_LEN
from train_helpers import read_json, weights

SYNTHETIC = "synthetic:n=64,size=8"
IMAGE = ["train", "--method", "ce", "--student", "resnet8", "--dataset", SYNTHETIC, "--device", "cpu",
         "--workers", "0", "--quiet", "--epochs", "1"]


def _lm(lm_files) -> list[str]:
    return ["train", "--method", "ce", "--student", f"hf:{lm_files['student']}", "--dataset",
            f"text:{lm_files['text']}", "--seq-len", str(LM_SEQ_LEN), "--batch-size", "8", "--device", "cpu",
            "--workers", "0", "--quiet", "--epochs", "1"]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _state_keys(out) -> set[str]:
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["optimizer"]["state"]
    return set().union(*(s.keys() for s in state.values()))


def test_an_hf_student_trains_with_adamw_by_default_and_says_so(lm_files, tmp_path, run_cli):
    out = tmp_path / "run"
    done = run_cli([*_lm(lm_files), "--out", out])
    assert done.code == 0, done.err
    assert {"exp_avg", "exp_avg_sq"} <= _state_keys(out), "last.pt holds AdamW's moments"
    record = read_json(out / "config.json")
    assert record["optimizer"] == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, "clip_grad": None,
                                   "betas": [0.9, 0.999]}
    assert record["config"]["opt"] == "auto" and record["lr"] == 1e-3
    assert "AdamW betas 0.9, 0.999 (auto: AdamW for an hf: student), weight decay 0.01" in done.out


def test_an_image_student_keeps_sgd_unless_adamw_is_asked_for(tmp_path, run_cli):
    out = tmp_path / "sgd"
    assert run_cli([*IMAGE, "--out", out]).code == 0
    assert _state_keys(out) == {"momentum_buffer"}
    assert read_json(out / "config.json")["optimizer"] == {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4,
                                                           "clip_grad": None, "momentum": 0.9}
    out = tmp_path / "adamw"
    done = run_cli([*IMAGE, "--opt", "adamw", "--weight-decay", "0.1", "--clip-grad", "2", "--out", out])
    assert done.code == 0, done.err
    assert {"exp_avg", "exp_avg_sq"} <= _state_keys(out)
    assert read_json(out / "config.json")["optimizer"] == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1,
                                                           "clip_grad": 2.0, "betas": [0.9, 0.999]}
    assert "AdamW betas 0.9, 0.999, weight decay 0.1, gradient norm clipped to 2, batch 64" in done.out


def test_clip_grad_bounds_the_step_a_huge_lr_takes(train_run):
    """One plain-SGD step of the whole batch moves the weights by lr * min(|g|, clip)."""
    one_step = {"method": "ce", "batch_size": 64, "opt": "sgd", "momentum": 0.0, "weight_decay": 0.0}
    start = weights(train_run("start", lr=0.0, **one_step)[1] / "last.pt")
    lr, clip = 10.0, 1e-3

    def step_norm(name: str, **extra) -> float:
        end = weights(train_run(name, lr=lr, **one_step, **extra)[1] / "last.pt")
        # parameters only: BatchNorm's running statistics are no step of the optimiser
        return math.sqrt(sum(float((end[k] - start[k]).double().pow(2).sum()) for k in start
                             if end[k].is_floating_point() and "running" not in k))

    clipped, free = step_norm("clipped", clip_grad=clip), step_norm("free")
    assert clipped == pytest.approx(lr * clip, rel=1e-3)
    assert free > 10 * clipped


@pytest.mark.parametrize(("extra", "message"), [
    (["--opt", "adam"], "error: unknown --opt 'adam': use auto, sgd, adamw"),
    (["--clip-grad", "0"], "error: --clip-grad must be > 0 (the largest global gradient norm), got 0"),
    (["--clip-grad", "-1"], "error: --clip-grad must be > 0"),
    (["--clip-grad", "nan"], "error: --clip-grad must be > 0"),
    (["--opt", "adamw", "--weight-decay", "-1"], "error: --weight-decay must be >= 0, got -1"),
    (["--opt", "adamw", "--momentum", "0.9"], "error: --momentum is SGD's, but this run trains with adamw: drop"),
])
def test_bad_optimizer_settings_are_refused_before_anything_is_written(tmp_path, run_cli, extra, message):
    out = tmp_path / "run"
    refused = run_cli([*IMAGE, *extra, "--out", out])
    assert refused.code == 2
    assert _one_error_line(refused.err).startswith(message)
    assert not out.exists()


def test_momentum_with_an_hf_students_default_adamw_is_refused(lm_files, tmp_path, run_cli):
    refused = run_cli([*_lm(lm_files), "--momentum", "0.9", "--out", tmp_path / "run"])
    assert refused.code == 2
    assert "(--opt auto, for an hf: student): drop --momentum" in _one_error_line(refused.err)


def test_resume_compares_the_optimizer_really_used(tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli([*IMAGE, "--out", out]).code == 0
    refused = run_cli([*IMAGE, "--opt", "adamw", "--resume", "--out", out])
    assert refused.code == 2
    assert "--opt 'sgd' -> 'adamw'" in _one_error_line(refused.err)
    # The defaults spelled out are the same run: it gets as far as "already finished".
    same = run_cli([*IMAGE, "--opt", "sgd", "--momentum", "0.9", "--weight-decay", "5e-4", "--lr", "0.05",
                    "--resume", "--out", out])
    assert "already finished its 1 epochs" in _one_error_line(same.err)
