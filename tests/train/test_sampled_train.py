"""Training from a sampled cache: kd at the sampling temperature trains; every other method, or kd at
another temperature, is refused before the run folder is written, in one line naming the reason."""

from __future__ import annotations

import json

import pytest

from logitcache.methods import list_methods

SYNTHETIC = "synthetic:n=64,size=8"
SAMPLED = dict(dataset=SYNTHETIC, chunk_samples=16, encoding="sampled", samples=8, sample_temperature=4.0)


@pytest.fixture(scope="module")
def sampled_cache(make_cache):
    return make_cache(**SAMPLED)


def test_kd_trains_from_draws_at_the_sampling_temperature(sampled_cache, train_run):
    result, out = train_run("kd", method="kd", cache=sampled_cache)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["train_kd"] > 0 and metrics[0]["test_nll"] > 0
    assert json.loads((out / "config.json").read_text())["cache"]["spec"]["encoding"]["kind"] == "sampled"


@pytest.mark.parametrize(("method", "extra", "expects"), [
    ("kd", ["--set", "temperature=2"], "KD at T=2 needs the teacher's softmax at T=2 but the draws were made at T=4"),
    ("kd", ["--logit-stand", "--set", "temperature=4"], "logit standardisation z-scores all teacher logits"),
    *[(m, [], "is not defined on a sampled cache") for m in list_methods() if m not in ("ce", "kd")],
])
def test_undefined_methods_are_refused_before_anything_is_written(sampled_cache, run_cli, tmp_path, method, extra,
                                                                   expects):
    out = tmp_path / "run"
    result = run_cli(["train", "--method", method, *extra, "--cache", sampled_cache, "--student", "resnet8",
                      "--dataset", SYNTHETIC, "--epochs", "1", "--device", "cpu", "--quiet", "--out", out])
    assert result.code == 2, result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {method} is not defined on a sampled cache: "), result.err
    assert expects in lines[0] and "Traceback" not in result.err
    assert not out.exists()


def test_ce_ignores_the_draws(sampled_cache, train_run):
    _, out = train_run("ce", method="ce", cache=sampled_cache)
    assert (out / "summary.json").exists()
