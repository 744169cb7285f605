"""Counter-based seeds and draws: every random number of a view is a hash of its seed and a stream
number, so it depends on nothing else (no generator state, batch, worker or device)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import BadInput


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective avalanche mix of uint64 words."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _hash(*words: np.ndarray | int) -> np.ndarray:
    """Counter-based hash of a tuple of integer words (broadcast), uint64 out."""
    h = np.zeros((), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for w in words:
            h = _mix64(h + np.asarray(w).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    return h


def view_seeds(seed: int, view: int | np.ndarray, index: np.ndarray | Sequence[int]) -> np.ndarray:
    """The uint32 seed of each (view, sample) pair for a dump with base ``seed``.

    Args:
        seed: the dump's base seed (``--seed``).
        view: a view number, or an array broadcast against ``index``.
        index: sample indices.

    Returns:
        uint32 array of the broadcast shape.
    """
    if seed < 0:
        raise BadInput(f"seed must be >= 0, got {seed}")
    return (_hash(seed, view, np.asarray(index)) >> np.uint64(32)).astype(np.uint32)


def _uniform(seeds: np.ndarray, stream: int) -> np.ndarray:
    """float64 in [0, 1) from the seed and a stream number: 53 hash bits, exactly."""
    bits = _hash(seeds.astype(np.uint64), stream) >> np.uint64(11)
    return bits.astype(np.float64) * (1.0 / 9007199254740992.0)


def _randint(seeds: np.ndarray, stream: int, high: np.ndarray) -> np.ndarray:
    """Integers in [0, high) by multiply-shift of 32 hash bits (no float involved)."""
    bits = _hash(seeds.astype(np.uint64), stream) >> np.uint64(32)
    with np.errstate(over="ignore"):
        return ((bits * np.asarray(high).astype(np.uint64)) >> np.uint64(32)).astype(np.int64)
