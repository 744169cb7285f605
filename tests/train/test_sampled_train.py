"""Training from a sampled cache: kd at the sampling temperature trains; every other method, or kd at
another temperature, is refused before the run folder is written, in one line naming the reason."""

from __future__ import annotations

import json

import pytest

from logitcache.cache_home import store_name
from logitcache.methods import list_methods
from logitcache.store.zarr_store import ZarrStore

SYNTHETIC = "synthetic:n=64,size=8"
SAMPLED = dict(dataset=SYNTHETIC, chunk_samples=16, encoding="sampled", topk=None, samples=8, sample_temperature=4.0)


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


def test_a_cache_found_in_the_home_is_one_the_method_is_defined_on(sampled_cache, make_cache, copy_store, tmp_path,
                                                                   monkeypatch, run_cli):
    """Without --cache, a newer sampled cache is passed over (a near miss, with why) for a method
    that is not defined on draws, and picked for one that is."""
    home = tmp_path / "home"
    monkeypatch.setenv("LOGITCACHE_HOME", str(home))
    sampled = copy_store(sampled_cache, home / store_name(ZarrStore.open(sampled_cache).spec))
    base = ["--student", "resnet8", "--dataset", SYNTHETIC, "--epochs", "1", "--device", "cpu", "--quiet"]

    kd = run_cli(["train", "--method", "kd", *base, "--out", tmp_path / "kd"])  # drawn at kd's T = 4: usable
    assert kd.code == 0, kd.err
    assert f"using cache {sampled}" in kd.out
    refused = run_cli(["train", "--method", "dkd", *base, "--out", tmp_path / "dkd"])
    assert refused.code == 2
    assert f"{sampled.name}: sampled, and dkd is not defined on a sampled cache here" in refused.err
    assert not (tmp_path / "dkd").exists()

    topk = make_cache(dataset=SYNTHETIC, chunk_samples=16)
    copy_store(topk, home / store_name(ZarrStore.open(topk).spec))
    done = run_cli(["train", "--method", "dkd", *base, "--out", tmp_path / "dkd"])
    assert done.code == 0, done.err
    assert f"using cache {home / store_name(ZarrStore.open(topk).spec)}" in done.out


def test_label_fraction_is_refused_on_draws(sampled_cache, run_cli, tmp_path):
    """Hidden labels are replaced by the teacher's top-1 class, which draws do not give."""
    out = tmp_path / "run"
    result = run_cli(["train", "--method", "kd", "--set", "temperature=4", "--label-fraction", "0.5", "--cache",
                      sampled_cache, "--student", "resnet8", "--dataset", SYNTHETIC, "--epochs", "1", "--device", "cpu",
                      "--quiet", "--out", out])
    assert result.code == 2, result.out
    assert result.err.strip().splitlines()[-1].startswith("error: --label-fraction labels the hidden samples")
    assert not out.exists()
