"""Plain helpers of the stage-two tests (the fixtures are in ``conftest.py``): reading run
folders, comparing weights, and the records the spies keep."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logitcache.store.reader import CacheReader
from logitcache.teacher_view import TeacherView


def read_metrics(out: Path) -> list[dict]:
    """The records of ``metrics.jsonl``, in file order."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict saved in a run's ``last.pt`` or ``best.pt``."""
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over every floating tensor of two state dicts (same keys)."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def views_of(reader: CacheReader, samples: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The stored view each replayed (sample, seed) pair belongs to, found from the cache's seeds.

    Fails if a seed matches no stored view of its sample, or more than one.
    """
    matches = np.stack([reader.seeds(v)[samples] == seeds for v in range(reader.num_views)])  # (V, B)
    assert (matches.sum(axis=0) == 1).all(), "a replayed seed is not exactly one stored view's seed"
    return matches.argmax(axis=0)


@dataclass
class Step:
    """One training step as the loop ran it."""

    call: int  # which loop epoch of the test it belongs to: 1, 2, ... over every run of the test
    samples: np.ndarray  # (B,) sample indices
    seeds: np.ndarray  # (B,) the view seeds replayed for them
    images: torch.Tensor  # (B, C, H, W) what the student was given
    epoch: int | None = None  # the epoch the loop told the method
    teacher: TeacherView | None = None  # what the method was given
    hparams: dict[str, Any] = field(default_factory=dict)  # what the method was given
    losses: dict[str, float] = field(default_factory=dict)  # what it returned


@dataclass
class ReplaySpy:
    """The steps of every training epoch run in a test; epoch ``call`` counts from 1 over all runs."""

    steps: list[Step] = field(default_factory=list)
    calls: int = 0

    def of(self, call: int) -> list[Step]:
        return [s for s in self.steps if s.call == call]

    def samples(self, call: int) -> np.ndarray:
        return np.concatenate([s.samples for s in self.of(call)])

    def seeds(self, call: int) -> np.ndarray:
        return np.concatenate([s.seeds for s in self.of(call)])

    def reset(self) -> None:
        self.steps.clear()
        self.calls = 0


@dataclass
class ReaderSpy:
    """Every ``read`` of the cache: (views, samples, logits) per call, in order."""

    reads: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = field(default_factory=list)

    def pairs(self) -> list[tuple[int, int]]:
        return [(int(v), int(s)) for views, samples, _ in self.reads for v, s in zip(views, samples)]

    def logits_by_pair(self) -> dict[tuple[int, int], torch.Tensor]:
        return {(int(v), int(s)): row for views, samples, logits in self.reads
                for v, s, row in zip(views, samples, logits)}


