"""Shared constants and helpers of the experiment tests."""

from __future__ import annotations

from pathlib import Path

SYNTHETIC = "synthetic:n=64,size=8"
# Options of every run in these tests: two epochs, CPU.
RUN_ARGS = ("--epochs", "2", "--device", "cpu")


def sweep_argv(cache: Path, out: Path, *extra: str) -> list[str]:
    """``logitcache sweep`` of resnet8 on the experiment cache with RUN_ARGS, plus ``extra``."""
    return ["sweep", "--cache", str(cache), "--out", str(out), "--student", "resnet8", "--dataset", SYNTHETIC,
            *extra, *RUN_ARGS]
