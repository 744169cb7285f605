"""Fixtures of the experiment tests (sweep, compare, report, --label-fraction): one tiny sweep made
once per session, on a synthetic full-logit cache (resnet8 --random-init teacher, clean view +
2 views)."""

from __future__ import annotations

from pathlib import Path

import pytest

from logitcache.sweep import SweepConfig, run_sweep

from experiment_helpers import RUN_ARGS, SYNTHETIC


@pytest.fixture(scope="session")
def experiment_cache(make_cache) -> Path:
    """synthetic:n=64,size=8, every logit in fp32 (clean view + 2 views)."""
    return make_cache(dataset=SYNTHETIC, chunk_samples=16, encoding="full", dtype="fp32")


@pytest.fixture(scope="session")
def finished_sweep(experiment_cache, tmp_path_factory) -> Path:
    """ce and kd × seeds 0, 1, two processes at a time (the library call); never modify it."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    run_sweep(SweepConfig(student="resnet8", dataset=SYNTHETIC, methods=("ce", "kd"), seeds=(0, 1), out=str(out),
                          cache=str(experiment_cache), train_args=RUN_ARGS, jobs=2), echo=lambda m: None)
    return out
