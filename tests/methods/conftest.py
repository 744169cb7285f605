"""Fixtures for the method tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run each method test on one intra-op thread, restoring the setting afterwards.

    The tensors here are tiny (at most 64×100), so extra threads only add synchronisation; on a
    busy two-core machine that overhead made the suite ~10× slower. Only tests/methods uses this.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
