"""Helpers for the scale-out tests: the installed console scripts, run as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.skip(f"the {name} console script is not installed")
    return str(path)


@pytest.fixture
def run_script():
    """``run_script(name, argv) -> CompletedProcess``: ``logitcache`` or ``torchrun`` in a subprocess."""

    def run(name: str, argv: list, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1")
        return subprocess.run([_script(name), *map(str, argv)], env=env, capture_output=True, text=True,
                              timeout=timeout)

    return run


@pytest.fixture
def start_script():
    """``start_script(name, argv) -> Popen`` with stdout/stderr pipes."""

    def start(name: str, argv: list) -> subprocess.Popen:
        env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1")
        return subprocess.Popen([_script(name), *map(str, argv)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    return start
