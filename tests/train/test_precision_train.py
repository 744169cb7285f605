"""``train --precision`` and ``--channels-last``: the student's (and an online teacher's) forward
runs as asked, the methods get fp32 logits, fp16 scales the loss, and the run records it all
and keeps it on ``--resume``."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch

from train_helpers import max_abs_diff, read_json, weights

train_module = importlib.import_module("logitcache.train")  # the package re-exports the function
SYNTHETIC = "synthetic:n=64,size=8"


def _output_dtypes(monkeypatch, builder: str) -> list[torch.dtype]:
    """The dtype of every forward output of the models ``train_module.<builder>`` makes."""
    seen: list[torch.dtype] = []
    real = getattr(train_module, builder)

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        return model

    monkeypatch.setattr(train_module, builder, build)
    return seen


def test_bf16_runs_student_and_online_teacher_under_autocast_and_losses_in_fp32(train_run, monkeypatch):
    students, teachers = _output_dtypes(monkeypatch, "create_model"), _output_dtypes(monkeypatch, "build_teacher")
    given: list[torch.dtype] = []
    real_get_method = train_module.get_method

    def get_method(name):
        info = real_get_method(name)

        def fn(student_logits, *args, **kwargs):
            given.append(student_logits.dtype)
            return info.fn(student_logits, *args, **kwargs)

        return dataclasses.replace(info, fn=fn)

    monkeypatch.setattr(train_module, "get_method", get_method)
    result, out = train_run(method="kd", teacher_online=True, teacher="resnet8", random_init_teacher=True,
                            precision="bf16")
    assert students and set(students) == {torch.bfloat16}  # training steps and evaluation alike
    assert teachers and set(teachers) == {torch.bfloat16}
    assert given and set(given) == {torch.float32}
    assert math.isfinite(result.last_acc)
    config = read_json(out / "config.json")["config"]
    assert config["precision"] == "bf16" and config["channels_last"] is False


@pytest.fixture
def fp16_args(synthetic_cache, tmp_path) -> list:
    return ["train", "--method", "kd", "--cache", synthetic_cache, "--student", "resnet8", "--dataset", SYNTHETIC,
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--workers", "0", "--quiet",
            "--out", tmp_path / "run"]


def test_fp16_scales_the_loss_and_a_resume_keeps_the_precision(fp16_args, run_cli, snapshot, tmp_path):
    done = run_cli([*fp16_args, "--precision", "fp16"])
    assert done.code == 0, done.err
    assert "  forward    fp16 autocast with GradScaler loss scaling (losses in fp32)" in done.out.splitlines()
    out = tmp_path / "run"
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["scaler"]["scale"] >= 1.0  # GradScaler's state, which a resume restores
    before = snapshot(out)
    refused = run_cli([*fp16_args, "--resume"])  # fp32, the default
    assert refused.code == 2 and refused.err.count("\n") == 1 and "--precision 'fp16' -> 'fp32'" in refused.err
    assert snapshot(out) == before


def test_channels_last_trains_what_contiguous_does(synthetic_full_cache, train_run):
    _, a = train_run("a", method="kd", cache=synthetic_full_cache)
    _, b = train_run("b", method="kd", cache=synthetic_full_cache, channels_last=True)
    # Other convolution kernels round differently; four SGD steps keep that near fp32 noise.
    assert max_abs_diff(weights(a / "last.pt"), weights(b / "last.pt")) < 1e-4
    assert read_json(b / "config.json")["config"]["channels_last"] is True


def test_eval_runs_a_checkpoint_at_the_precision_asked(synthetic_full_cache, train_run, run_cli):
    _, out = train_run(method="kd", cache=synthetic_full_cache)
    args = ["eval", "--checkpoint", out / "best.pt", "--dataset", SYNTHETIC, "--device", "cpu"]
    plain, amp = run_cli(args), run_cli([*args, "--precision", "bf16", "--channels-last"])
    assert plain.code == 0 and amp.code == 0, amp.err
    top1 = [float(r.out.splitlines()[-1].split()[1].rstrip("%")) for r in (plain, amp)]
    assert abs(top1[0] - top1[1]) <= 100 * 4 / 64  # up to 4 of the 64 test images may flip with bf16 rounding


def test_an_unknown_precision_is_one_line_before_anything_is_written(fp16_args, run_cli, tmp_path):
    result = run_cli([*fp16_args, "--precision", "fp8"])
    assert result.code == 2 and result.err.strip() == "error: unknown --precision 'fp8': use fp32, bf16, fp16"
    assert not (tmp_path / "run").exists()
