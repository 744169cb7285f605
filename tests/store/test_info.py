"""cache_info: sizes and teacher statistics, checked against the stored arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logitcache.evaluate import expected_calibration_error
from logitcache.info import cache_info
from logitcache.store.format import Provenance
from logitcache.store.zarr_store import ZarrStore

SYNTHETIC = "synthetic:n=64,size=8"


def test_statistics_of_a_full_store_are_exact(make_cache):
    path = make_cache(dataset=SYNTHETIC, encoding="full", dtype="fp32", chunk_samples=16)
    info = cache_info(path, progress=False)
    store = ZarrStore.open(path)
    logits, labels = torch.from_numpy(store.read("logits")), torch.from_numpy(store.read("labels")).long()
    assert info.pairs == 3 * 64
    assert info.raw_bytes == sum(store.read(n).nbytes for n in store.array_names())
    assert info.compression_ratio == pytest.approx(info.raw_bytes / info.bytes_on_disk)
    assert info.bytes_per_pair == pytest.approx(info.bytes_on_disk / 192)
    assert info.bytes_on_disk == store.nbytes_stored()
    for stats, views in ((info.clean, [0]), (info.augmented, [1, 2])):
        z = logits[views].reshape(-1, 10)
        y = labels.repeat(len(views))
        p = torch.softmax(z.double(), dim=1)
        assert stats.views == views and stats.samples == 64 * len(views)
        assert stats.misinstruction_rate == pytest.approx(float((z.argmax(1) != y).double().mean()))
        assert stats.mean_entropy == pytest.approx(float(-(p * p.log()).sum(1).mean()), rel=1e-5)
        assert stats.mean_target_prob == pytest.approx(float(p.gather(1, y[:, None]).mean()), rel=1e-5)
        conf, pred = p.max(1)
        assert stats.ece == pytest.approx(expected_calibration_error(conf.float(), pred == y), abs=1e-6)
    assert info.notes == []


def test_topk_store_notes_the_rebuilt_entropy(digits_cache):
    info = cache_info(digits_cache, progress=False)
    assert info.pairs == 3 * 1438 and info.clean.samples == 1438 and info.augmented.samples == 2876
    assert any("rebuilt distribution" in n for n in info.notes)
    assert 0 <= info.augmented.misinstruction_rate <= 1 and info.augmented.mean_entropy <= np.log(10) + 1e-6


def test_no_clean_view(make_cache):
    info = cache_info(make_cache(dataset=SYNTHETIC, topk=4, dtype="bf16", chunk_samples=16, clean_view=False), progress=False)
    assert info.clean is None and info.augmented.views == [0, 1]


def test_incomplete_store_gets_sizes_and_a_note(digits_cache, copy_store, tmp_path):
    path = copy_store(digits_cache, tmp_path / "c.zarr")
    store = ZarrStore.open(path, read_only=False)
    store.set_provenance(Provenance(**{**store.provenance.to_json(), "complete": False}))
    info = cache_info(path, progress=False)
    assert info.clean is None and info.augmented is None and info.bytes_on_disk > 0
    assert info.notes == ["the dump has not finished: re-run the same dump command to complete it"]
