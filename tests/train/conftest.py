"""Fixtures for the stage-two tests: tiny caches, a one-call ``train``, and spies on the loop.

Everything trains ``resnet8`` (or another tiny CIFAR model) for one to three epochs on the
shipped digits (1,438 8×8 images) or on ``synthetic:n=64,size=8``, from caches of a seeded
random-init ``resnet8`` teacher (``make_cache`` in ``tests/conftest.py``, made once per session).

Plain helpers (reading run folders, comparing weights) are in ``train_helpers.py``. The
spies record what the loop really did, not what its config says:

* ``replay_spy`` wraps ``logitcache.train.augmented_batches`` (one call per epoch) and the
  method function, so a test sees, for every training step, the sample indices and view seeds
  that were replayed, the images the student was given, and the ``TeacherView`` the method got.
* ``reader_spy`` wraps ``CacheReader.read`` as the loop uses it: every (view, sample) pair read
  from the cache and the logits returned for it.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from logitcache.store.reader import CacheReader
from logitcache.train import TrainConfig, TrainResult, train
from train_helpers import ReaderSpy, ReplaySpy, Step

# The module, not the function: ``logitcache.train`` is the re-exported ``train`` function.
train_module = importlib.import_module("logitcache.train")

SYNTHETIC = "synthetic:n=64,size=8"
# The synthetic caches: the digits dump's settings (resnet8, --random-init, 2 views, seed 0).
SYNTHETIC_CACHE = dict(dataset=SYNTHETIC, chunk_samples=16)
BASE_RUN = dict(student="resnet8", dataset=SYNTHETIC, epochs=1, device="cpu", workers=0, progress=False)


# --------------------------------------------------------------------------- caches
@pytest.fixture(scope="session")
def synthetic_cache(make_cache) -> Path:
    """synthetic:n=64,size=8: clean view + 2 views, top-5 fp16."""
    return make_cache(**SYNTHETIC_CACHE)


@pytest.fixture(scope="session")
def synthetic_full_cache(make_cache) -> Path:
    """synthetic:n=64,size=8: clean view + 2 views, every logit in fp32."""
    return make_cache(**SYNTHETIC_CACHE, encoding="full", dtype="fp32")


@pytest.fixture(scope="session")
def digits_full_cache(make_cache) -> Path:
    """digits: clean view + 2 views, every logit in fp32 (cache == online needs exact logits)."""
    return make_cache(encoding="full", dtype="fp32")


# --------------------------------------------------------------------------- running
@pytest.fixture
def train_run(tmp_path):
    """``train_run(name, **TrainConfig fields) -> (TrainResult, run folder)``.

    Defaults: resnet8 on synthetic:n=64,size=8, one epoch, CPU, no progress bars; the run
    folder is ``tmp_path / name``.
    """

    def run(name: str = "run", **fields: Any) -> tuple[TrainResult, Path]:
        out = tmp_path / name
        fields = {**BASE_RUN, "out": str(out), **{k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}}
        return train(TrainConfig(**fields)), out

    return run


# --------------------------------------------------------------------------- spies
@pytest.fixture
def replay_spy(monkeypatch) -> ReplaySpy:
    """Record every training step of every ``train`` call in this test (see the module docstring).

    ``augmented_batches`` is called once per training epoch by the loop (evaluation imports its
    own copy), so its n-th call is epoch n of a single run; ``reset()`` starts counting again.
    """
    spy = ReplaySpy()
    real_batches = train_module.augmented_batches
    real_get_method = train_module.get_method

    def batches(dataset, spec, view_batches, **kw):
        spy.calls += 1
        call = spy.calls
        for batch, images in real_batches(dataset, spec, view_batches, **kw):
            spy.steps.append(Step(call=call, samples=batch.samples.copy(), seeds=batch.seeds.copy(),
                                  images=images.detach().clone()))
            yield batch, images

    def get_method(name):
        info = real_get_method(name)

        def fn(student_logits, teacher, target, *, epoch, **hparams):
            step = spy.steps[-1]  # the loop asks for a batch, then computes its loss
            step.epoch, step.teacher, step.hparams = epoch, teacher, hparams
            losses = info.fn(student_logits, teacher, target, epoch=epoch, **hparams)
            step.losses = {k: float(v.detach()) for k, v in losses.items()}
            return losses

        return dataclasses.replace(info, fn=fn)

    monkeypatch.setattr(train_module, "augmented_batches", batches)
    monkeypatch.setattr(train_module, "get_method", get_method)
    return spy


@pytest.fixture
def reader_spy(monkeypatch) -> ReaderSpy:
    """Record every (view, sample) pair the training loop reads from a cache, with its logits."""
    spy = ReaderSpy()

    class SpyReader(CacheReader):
        def read(self, views, samples):
            view = super().read(views, samples)
            v = np.broadcast_to(np.asarray(views), np.shape(samples)).copy()
            spy.reads.append((v, np.asarray(samples).copy(), view.logits.clone()))
            return view

    monkeypatch.setattr(train_module, "CacheReader", SpyReader)
    return spy
