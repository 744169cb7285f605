"""torchrun training: 2 processes (gloo, CPU) train the same student as 1 process, same global batch.

The one-process runs are made in this process, once each (``single``): the torchrun side is what
runs as processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


# Full fp32 caches: the teacher logits are exactly what the online teacher would give.
CASES = {
    # One epoch of digits (22 steps). KD's small CE weight keeps the run well conditioned, so
    # float differences in the reductions stay at 1e-7; CE-weighted runs in their first epoch can
    # amplify them (a ReLU or BatchNorm decision flips), as any two runs with different reduction
    # orders do, which is why the DKD case below compares two steps.
    "kd": ("digits", "kd"),
    "dkd": ("synthetic:n=128,size=8", "dkd"),
}


@pytest.fixture(scope="module")
def caches(make_cache) -> dict[str, Path]:
    return {name: make_cache(dataset=dataset, encoding="full", dtype="fp32", chunk_samples=64)
            for name, (dataset, _) in CASES.items()}


@pytest.fixture(scope="module")
def single(caches, tmp_path_factory, run_cli):
    """``single(case, seed=0) -> run folder``: one process's run of ``case``, made once per module."""
    made: dict[tuple[str, int], Path] = {}

    def run(case: str, seed: int = 0) -> Path:
        if (case, seed) not in made:
            dataset, method = CASES[case]
            out = tmp_path_factory.mktemp("single") / f"{case}-s{seed}"
            done = run_cli([*_train_args(caches[case], out, method, dataset), "--seed", seed])
            assert done.code == 0, done.err
            made[case, seed] = out
        return made[case, seed]

    return run


def _train_args(cache: Path, out: Path, method: str, dataset: str = "digits") -> list:
    return ["train", "--student", "resnet8", "--dataset", dataset, "--method", method, "--cache", cache,
            "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--out", out, "--quiet"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one(caches, single, tmp_path, case, run_script):
    dataset, method = CASES[case]
    multi = tmp_path / "multi"
    two = run_script("torchrun", ["--standalone", "--nproc-per-node", "2", "-m", "logitcache",
                                  *_train_args(caches[case], multi, method, dataset)])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(single(case)), _weights(multi)
    assert list(a) == list(b)  # rank 0 saved the plain model: no "module." prefix, same BatchNorm names
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert diff < 1e-5, diff
    # Rank 0 alone wrote the run folder, once per epoch.
    assert (multi / "metrics.jsonl").read_text().count("\n") == 1
    assert "best by test accuracy" in two.stdout and two.stdout.count("run saved in") == 1


def test_no_sync_bn_normalises_each_share(caches, single, tmp_path, run_script):
    """--no-sync-bn is plain DDP: BatchNorm sees each rank's half of the batch, so its running
    statistics (and with them the weights) part from the single-process run."""
    local = tmp_path / "local"
    two = run_script("torchrun", ["--standalone", "--nproc-per-node", "2", "-m", "logitcache",
                                  *_train_args(caches["kd"], local, "kd"), "--no-sync-bn"])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(single("kd")), _weights(local)
    assert list(a) == list(b)
    assert float((a["bn1.running_var"] - b["bn1.running_var"]).abs().max()) > 1e-4
    assert '"sync_bn": false' in (local / "config.json").read_text()

def test_ranks_differ_from_a_different_seed(single):
    """The comparison above can fail: another seed gives other weights."""
    runs = [_weights(single("kd", seed)) for seed in (0, 1)]
    assert max(float((runs[0][k].double() - runs[1][k].double()).abs().max()) for k in runs[0]) > 1e-2
