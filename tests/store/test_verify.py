"""verify: integrity, provenance and replay checks; repair + re-dump restores the store."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import zarr

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.errors import CacheMismatch
from logitcache.models import create_model
from logitcache.store.encodings.topk import GAP_STEP
from logitcache.store.zarr_store import DONE, ZarrStore
from logitcache.verify import verify

verify_module = importlib.import_module("logitcache.verify")  # the package re-exports the function
SYNTHETIC = "synthetic:n=64,size=8"
CONFIGS = {
    "topk-fp16": dict(dataset=SYNTHETIC, topk=3, chunk_samples=16),
    "full-fp32": dict(dataset=SYNTHETIC, encoding="full", dtype="fp32", chunk_samples=16),
    "topk-q8": dict(dataset=SYNTHETIC, topk=3, dtype="q8", chunk_samples=8, shard_chunks=2),
}
# Largest |stored - fresh fp32| a fresh store may show: float noise for fp32, half a step of the
# stored gaps for fp16 (random-init logits lie within a few nats of each other), half a step for q8.
MAX_ERROR = {"topk-fp16": 2.0**-11 * 4, "full-fp32": 1e-4, "topk-q8": GAP_STEP / 2 + 1e-4}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_fresh_store_verifies(make_cache, name):
    report = verify(make_cache(**CONFIGS[name]), samples=10_000, random_init=True, device="cpu")
    assert report.ok, report.problems
    assert report.pairs_checked == 192
    assert report.max_abs_error <= MAX_ERROR[name]
    store = ZarrStore.open(make_cache(**CONFIGS[name]))
    assert report.chunks_checked == sum(len(store.storage_keys(n)) for n in store.array_names())


@pytest.mark.parametrize("name", ["full-fp32", "topk-q8"])
def test_a_changed_value_is_found_by_replay(make_cache, copy_store, reseal, tmp_path, name):
    path = copy_store(make_cache(**CONFIGS[name]), tmp_path / "c.zarr")
    field = "logits" if name == "full-fp32" else "lse_gap"
    arr = zarr.open_group(str(path), mode="r+")[field]
    value = arr[2, 41]
    arr[2, 41] = value + (np.float32(0.5) if name == "full-fp32" else np.uint16(400))  # checksums stay valid
    assert [p.problem for p in ZarrStore.open(path).check_chunks()] == [
        "view 2 block 2: content does not match its digest (a chunk from elsewhere, or never written)"]
    reseal(path)  # as if the dump had computed that value: only the replay can tell
    assert ZarrStore.open(path).check_chunks() == []
    report = verify(path, samples=10_000, random_init=True, device="cpu")
    assert len(report.problems) == 1
    assert report.problems[0].startswith("view 2 sample 41: stored logits differ from the replayed teacher")


def test_other_weights_are_refused(make_cache, tmp_path):
    torch.manual_seed(123)
    ckpt = tmp_path / "other.pt"
    torch.save(create_model("resnet8", num_classes=10).state_dict(), ckpt)
    with pytest.raises(CacheMismatch, match="not the ones .* was dumped with \\(sha256 differs\\)"):
        verify(make_cache(**CONFIGS["topk-fp16"]), checkpoint=str(ckpt), device="cpu")


def test_other_data_is_refused(make_cache, monkeypatch):
    monkeypatch.setattr(verify_module, "open_dataset", lambda *a, **k: open_dataset("synthetic:n=64,size=8,seed=9"))
    with pytest.raises(CacheMismatch, match="fingerprint differs"):
        verify(make_cache(**CONFIGS["topk-fp16"]), random_init=True, device="cpu")


def test_changed_seeds_are_found(make_cache, copy_store, reseal, tmp_path):
    path = copy_store(make_cache(**CONFIGS["topk-fp16"]), tmp_path / "c.zarr")
    seeds = zarr.open_group(str(path), mode="r+")["seeds"]
    seeds[1, 5] = seeds[1, 5] + 1
    assert not verify(path, samples=0).ok  # the block's digest
    reseal(path)
    report = verify(path, samples=0)
    assert report.ok  # integrity only
    report = verify(path, samples=1, random_init=True, device="cpu")
    assert "view 1: stored seeds differ from the seeds derived from the dump seed" in report.problems


def test_unfinished_store_is_reported(make_cache, copy_store, tmp_path):
    path = copy_store(make_cache(**CONFIGS["topk-fp16"]), tmp_path / "c.zarr")
    ZarrStore.open(path, read_only=False).mark(2, 1, 1)
    report = verify(path, random_init=True, device="cpu")
    assert report.problems == ["1 block never finished writing: re-run the dump command"]  # not "1 blocks"
    assert report.replay_skipped == "the problems above come first"
    assert report.pairs_checked == 0


def test_repair_then_dump_restores_the_store(make_cache, copy_store, tmp_path):
    ref = make_cache(**CONFIGS["topk-q8"])
    path = copy_store(ref, tmp_path / "c.zarr")
    shard = path / "topk_gaps" / "c" / "1" / "1" / "0"  # view 1, shard 1 (samples 16..31)
    raw = bytearray(shard.read_bytes())
    raw[3] ^= 0x40
    shard.write_bytes(bytes(raw))
    report = verify(path, samples=0)
    assert len(report.problems) == 1 and report.problems[0].startswith("topk_gaps chunk topk_gaps/c/1/1/0: does not decode")
    report = verify(path, samples=0, repair=True)
    assert report.problems[-1].startswith("repair: marked the damaged blocks")
    store = ZarrStore.open(path)
    assert not store.provenance.complete
    assert [tuple(x) for x in np.argwhere(store.progress() != DONE)] == [(1, 1)]
    config = DumpConfig(teacher="resnet8", out=str(path), random_init=True, views=2, device="cpu", progress=False,
                        **CONFIGS["topk-q8"])
    result = dump(config)
    assert result.complete and result.blocks_written == 1
    assert verify(path, samples=10_000, random_init=True, device="cpu").ok
    a, b = ZarrStore.open(ref), ZarrStore.open(path)
    for name in a.array_names():
        assert np.array_equal(a.read(name), b.read(name)), name
