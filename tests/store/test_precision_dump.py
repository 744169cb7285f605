"""Dump and verify under ``--precision`` and ``--channels-last``: the teacher's forward runs as
asked, the logits are stored in the ``--dtype`` asked, the spec records how they were computed,
and ``verify`` replays them the same way.

The caches store full fp32 logits, so that what is compared is the forward, not the storage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import ZarrStore
from logitcache.verify import verify

FULL = dict(encoding="full", dtype="fp32")
# bf16 keeps 8 significant bits: a forward under bf16 autocast rounds each layer's output to half
# an ulp (2^-8 relative), and resnet8's logits on digits end within one ulp of fp32's (0.0067 of
# the row's spread measured, 0.85 ulp): two ulps bound it with room for other seeds.
BF16_ULP = 2.0**-7


def _logits(path: Path) -> torch.Tensor:
    """Every stored (view, sample) row, views one after another."""
    reader = CacheReader(path)
    try:
        n = reader.spec.dataset.num_samples
        return torch.cat([reader.read(np.full(n, v), np.arange(n)).logits for v in range(reader.spec.views.total)])
    finally:
        reader.close()


@pytest.fixture(scope="module")
def fp32_cache(make_cache) -> Path:
    return make_cache(**FULL)


@pytest.fixture(scope="module")
def bf16_cache(make_cache) -> Path:
    return make_cache(**FULL, precision="bf16")


def test_a_bf16_teacher_stores_logits_close_to_fp32s_and_says_how_they_were_made(fp32_cache, bf16_cache, run_cli):
    a, b = _logits(fp32_cache), _logits(bf16_cache)
    spread = a.max(dim=1).values - a.min(dim=1).values
    assert float(((b - a).abs().max(dim=1).values / spread).max()) <= 2 * BF16_ULP
    assert float((b - a).abs().max()) > 1e-3  # the forward did run in bf16: fp32 noise here is 1e-7
    assert float((b.argmax(dim=1) == a.argmax(dim=1)).double().mean()) >= 0.99
    fp32_spec, bf16_spec = ZarrStore.open(fp32_cache).spec, ZarrStore.open(bf16_cache).spec
    assert bf16_spec.precision == "bf16" and bf16_spec.to_json()["precision"] == "bf16"
    assert fp32_spec.short_id() != bf16_spec.short_id()  # another teacher output, another cache-home name
    assert {"precision", "channels_last"}.isdisjoint(fp32_spec.to_json())  # fp32 stores keep their spec JSON
    assert "forward      bf16 " in run_cli(["info", bf16_cache, "--no-stats"]).out


def test_verify_replays_a_bf16_teacher_in_bf16_and_still_finds_a_wrong_logit(bf16_cache, copy_store, reseal, tmp_path):
    report = verify(bf16_cache, random_init=True, device="cpu", samples=128)
    # Like with like: a replay in fp32 would differ by the 1e-3 and more of the test above.
    assert report.ok and report.pairs_checked == 128 and report.max_abs_error < 1e-4, report.problems
    path = copy_store(bf16_cache, tmp_path / "c.zarr")
    logits = zarr.open_group(str(path), mode="r+")["logits"]
    view = logits[1]
    spread = view.max(axis=1) - view.min(axis=1)
    view[:, 3] += 0.25 * spread  # a quarter of each row's spread: far beyond bf16's few ulps
    logits[1] = view
    report = verify(reseal(path), random_init=True, device="cpu", samples=128)
    assert not report.ok and all(p.startswith("view 1 sample ") and "differ" in p for p in report.problems)


def test_channels_last_stores_what_the_contiguous_forward_does(fp32_cache, make_cache):
    path = make_cache(**FULL, channels_last=True)
    # Other convolution kernels, the same values up to fp32 rounding (1.3e-7 measured).
    torch.testing.assert_close(_logits(path), _logits(fp32_cache), rtol=1e-5, atol=1e-5)
    spec = ZarrStore.open(path).spec
    assert spec.channels_last and spec.to_json()["channels_last"] is True and "precision" not in spec.to_json()
    assert verify(path, random_init=True, device="cpu", samples=32).ok


def test_a_dump_with_another_precision_is_refused_on_a_store_with_blocks(digits_cache, digits_args, copy_store,
                                                                         snapshot, run_cli, tmp_path):
    """A store's blocks never mix precisions: resuming with another --precision is refused, naming it."""
    path = copy_store(digits_cache, tmp_path / "c.zarr")
    before = snapshot(path)
    result = run_cli(["dump", *digits_args, "--precision", "bf16", "--out", path])
    assert result.code == 2 and "precision: 'fp32' vs 'bf16'" in result.err and "--overwrite" in result.err
    assert {k: v for k, v in snapshot(path).items() if not k.startswith(".lock")} == before  # the dump's locks aside
