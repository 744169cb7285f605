"""CacheReader: any (view, sample) order gives what decoding the stored arrays gives."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache.datasets import open_dataset
from logitcache.errors import CacheCorrupt, CacheIncomplete, CacheMismatch
from logitcache.store.encodings import get_encoding
from logitcache.store.encodings._base import index_dtype
from logitcache.store.format import Provenance
from logitcache.store.reader import CacheReader, check_matches
from logitcache.store.zarr_store import ZarrStore
from logitcache.teacher_view import TeacherView
from logitcache.verify import verify
from logitcache.views import view_seeds

SYNTHETIC = "synthetic:n=64,size=8"
VARIANTS = {
    "digits-topk5-fp16": {},
    "synthetic-full-fp32": dict(dataset=SYNTHETIC, encoding="full", dtype="fp32", chunk_samples=16),
    "synthetic-topk3-q8-sharded": dict(dataset=SYNTHETIC, topk=3, dtype="q8", chunk_samples=8, shard_chunks=2),
    "synthetic-topk4-bf16-noclean": dict(dataset=SYNTHETIC, topk=4, dtype="bf16", chunk_samples=16, clean_view=False),
}
TENSORS = ("target", "full_logits", "topk_values", "topk_indices", "lse", "target_logit")


@pytest.fixture(scope="module", params=list(VARIANTS))
def store(request, make_cache):
    path = make_cache(**VARIANTS[request.param])
    s = ZarrStore.open(path)
    group = zarr.open_group(str(path), mode="r")
    arrays = {name: group[name][:] for name in s.array_names()}  # straight through zarr
    return path, s.spec, arrays


def _direct(spec, arrays, views, samples) -> TeacherView:
    encoding = get_encoding(spec.encoding, spec.dataset.num_classes)
    rows = {f.name: arrays[f.name][views, samples] for f in encoding.fields()}
    return encoding.decode(rows, torch.from_numpy(arrays["labels"][samples].astype(np.int64)))


def _assert_same(a: TeacherView, b: TeacherView) -> None:
    assert a.num_classes == b.num_classes
    for name in TENSORS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert torch.equal(a.logits, b.logits)


def _pairs(spec, seed, size):
    rng = np.random.default_rng(seed)
    return rng.integers(0, spec.views.total, size), rng.integers(0, spec.dataset.num_samples, size)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 300), budget=st.sampled_from(["all", "one view", "none"]))
def test_read_equals_direct_decode(store, seed, size, budget):
    path, spec, arrays = store
    views, samples = _pairs(spec, seed, size)
    if size > 3:
        samples[1], views[1] = samples[0], views[0]  # duplicates
        samples[3] = samples[2]
    view_bytes = get_encoding(spec.encoding, spec.dataset.num_classes).raw_bytes_per_sample() * spec.dataset.num_samples
    memory = {"all": 1 << 30, "one view": view_bytes, "none": 0}[budget]
    reader = CacheReader(path, memory_budget=memory)
    try:
        got = reader.read(views, samples)
        _assert_same(got, _direct(spec, arrays, views, samples))
        assert got.batch_size == size
        assert torch.equal(got.target, torch.from_numpy(arrays["labels"][samples].astype(np.int64)))
        # Read again in another order: the same rows, permuted.
        perm = np.random.default_rng(seed).permutation(size)
        again = reader.read(views[perm], samples[perm])
        _assert_same(again, _direct(spec, arrays, views[perm], samples[perm]))
    finally:
        reader.close()


def test_scalar_view_broadcasts(store):
    path, spec, arrays = store
    reader = CacheReader(path)
    samples = np.array([5, 1, 5, 0])
    v = spec.views.total - 1
    _assert_same(reader.read(v, samples), _direct(spec, arrays, np.full(4, v), samples))
    reader.close()


def test_seeds_and_clean_view(store):
    path, spec, arrays = store
    reader = CacheReader(path)
    for v in range(reader.num_views):
        assert np.array_equal(reader.seeds(v), view_seeds(spec.views.seed, v, np.arange(spec.dataset.num_samples)))
        assert reader.is_clean(v) == (spec.views.clean and v == 0)
    assert np.array_equal(reader.labels, open_dataset(spec.dataset.name).labels)
    reader.close()


def test_prefetch_reads_the_view_in_the_background(digits_cache):
    reader = CacheReader(digits_cache)
    samples = np.arange(0, 1438, 7)
    want = CacheReader(digits_cache, memory_budget=0).read(2, samples)
    reader.prefetch(2)
    reader.prefetch(2)  # a second request is a no-op, not a second read
    reader._pending[2].result()
    calls = []
    reader.store.read = lambda *a, **k: calls.append(a)  # any further store read would be recorded
    _assert_same(reader.read(2, samples), want)
    assert calls == []  # served from the prefetched slice
    reader.close()


def test_prefetch_is_a_no_op_without_memory(digits_cache):
    reader = CacheReader(digits_cache, memory_budget=0)
    reader.prefetch(1)
    assert reader._pending == {}
    reader.close()


def test_out_of_range_indices(digits_cache):
    reader = CacheReader(digits_cache)
    with pytest.raises(IndexError, match="sample index out of range 0..1437"):
        reader.read(0, np.array([1438]))
    with pytest.raises(IndexError, match="view index out of range 0..2"):
        reader.read(np.array([3]), np.array([0]))
    with pytest.raises(IndexError):
        reader.read(0, np.array([-1]))
    reader.close()


def test_incomplete_store_is_refused(digits_cache, copy_store, tmp_path):
    path = copy_store(digits_cache, tmp_path / "c.zarr")
    store = ZarrStore.open(path, read_only=False)
    store.set_provenance(Provenance(**{**store.provenance.to_json(), "complete": False}))
    with pytest.raises(CacheIncomplete, match="has not finished.*re-run the same `logitcache dump`"):
        CacheReader(path)


def test_missing_chunk_is_refused_on_open(digits_cache, copy_store, tmp_path):
    path = copy_store(digits_cache, tmp_path / "c.zarr")
    (path / "lse" / "c" / "1" / "3").unlink()
    with pytest.raises(CacheCorrupt, match="1 chunk\\(s\\) missing.*lse/c/1/3.*verify --repair"):
        CacheReader(path)
    CacheReader(path, check=False).close()  # the caller's choice: zarr then reads zeros there


def test_corrupt_chunk_fails_the_read(digits_cache, copy_store, tmp_path):
    path = copy_store(digits_cache, tmp_path / "c.zarr")
    chunk = path / "topk_gaps" / "c" / "2" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[-6] ^= 0x01
    chunk.write_bytes(bytes(raw))
    for budget in (1 << 30, 0):
        reader = CacheReader(path, memory_budget=budget)
        with pytest.raises(CacheCorrupt, match="topk_gaps/c/2/1/0: does not decode"):
            reader.read(2, np.array([300]))
        _assert_same(reader.read(1, np.array([300])), CacheReader(digits_cache).read(1, np.array([300])))
        reader.close()


# --------------------------------------------------------------------------- check_matches
def _matching(spec):
    ds = open_dataset(spec.dataset.name, spec.dataset.split)
    return dict(dataset_name=ds.name, split=ds.split, num_samples=len(ds), num_classes=ds.num_classes,
                fingerprint=ds.fingerprint, augmentation=ds.train_view.to_json())


def test_check_matches_accepts_its_own_data(digits_cache):
    spec = ZarrStore.open(digits_cache).spec
    check_matches(spec, **_matching(spec))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(split="test"), "split: cache has train, training data has test"),
        (dict(num_classes=100), "number of classes: cache has 10, training data has 100"),
        (dict(num_samples=64), "number of samples: cache has 1438, training data has 64"),
        (dict(fingerprint="0" * 64), "dataset fingerprint: cache has 91a6fb334182a3be, training data has 0000000000000000"),
        (dict(augmentation={"kind": "crop", "size": 8, "padding": 2}), "augmentation: cache has"),
    ],
)
def test_check_matches_names_the_difference(digits_cache, change, message):
    spec = ZarrStore.open(digits_cache).spec
    with pytest.raises(CacheMismatch, match="does not match the training data") as err:
        check_matches(spec, **{**_matching(spec), **change})
    assert message in str(err.value)
    assert "dump one for it" in str(err.value)


def test_check_matches_refuses_a_cache_of_other_data(digits_cache):
    spec = ZarrStore.open(digits_cache).spec
    other = open_dataset(SYNTHETIC)
    with pytest.raises(CacheMismatch) as err:
        check_matches(spec, dataset_name=other.name, split="train", num_samples=len(other),
                      num_classes=other.num_classes, fingerprint=other.fingerprint)
    text = str(err.value)
    assert "(digits, train)" in text and f"({SYNTHETIC}, train)" in text
    assert "number of samples: cache has 1438, training data has 64" in text and "dataset fingerprint" in text


def _as_format_2(path, read_indices, reseal) -> None:
    """Rewrite a store as format 2 wrote it: class indices as whole integers in ``topk_indices`` /
    ``sample_indices``, a spec of format 2 without ``indices``, digests over those arrays."""
    store = ZarrStore.open(path, read_only=False)
    spec, classes = store.spec, store.spec.dataset.num_classes
    name = "topk_indices" if spec.encoding.kind == "topk" else "sample_indices"
    values, packed = read_indices(path, name), store.block_names()[1]
    store.spec = dataclasses.replace(spec, format_version=2, encoding=dataclasses.replace(spec.encoding, indices="int"))
    store.set_provenance(store.provenance)  # writes the spec with the provenance
    store.ensure_arrays(get_encoding(store.spec.encoding, classes).fields())
    store.array(name)[:] = values.astype(index_dtype(classes))
    shutil.rmtree(path / packed)
    reseal(path)


@pytest.mark.parametrize("variant", ["digits-topk5-fp16", "synthetic-sampled6"])
def test_a_store_of_format_2_reads_as_it_was_written(variant, make_cache, copy_store, read_indices, reseal, tmp_path):
    """Format 3 packs class indices; a format-2 store (whole integers) is still read, pair for pair
    the same teacher information, and verifies."""
    fields = VARIANTS.get(variant) if variant in VARIANTS else dict(
        dataset=SYNTHETIC, encoding="sampled", topk=None, samples=6, sample_temperature=2.0, chunk_samples=16)
    src = make_cache(**fields)
    path = copy_store(src, tmp_path / "v2.zarr")
    _as_format_2(path, read_indices, reseal)
    meta = json.loads((path / "zarr.json").read_text())["attributes"]["logitcache"]["spec"]
    assert meta["format_version"] == 2 and "indices" not in meta["encoding"]
    assert ZarrStore.open(path).spec.encoding.indices == "int"
    new, old = CacheReader(src), CacheReader(path)
    try:
        views, samples = _pairs(new.spec, 0, 500)
        a, b = new.read(views, samples), old.read(views, samples)
        for name in (*TENSORS, "sample_indices", "sample_counts", "sample_draws"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None) and (x is None or torch.equal(torch.as_tensor(x), torch.as_tensor(y))), name
    finally:
        new.close(), old.close()
    assert verify(path, samples=0).ok
