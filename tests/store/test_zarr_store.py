"""ZarrStore: the on-disk layout that docs/format.md describes, integrity checks, locks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from logitcache.errors import CacheBusy, CacheCorrupt, CacheMismatch, CacheNotFound
from logitcache.store.encodings import get_encoding
from logitcache.store.format import (
    ATTR,
    FORMAT_VERSION,
    spec_digest,
    CacheSpec,
    CodecInfo,
    DatasetInfo,
    EncodingInfo,
    Layout,
    Provenance,
    TeacherInfo,
    ViewsInfo,
)
from logitcache.store.zarr_store import DIGESTS, DONE, LABEL_DIGESTS, PROGRESS, WRITING, ZarrStore, flock
from logitcache.views import ViewSpec

PROV = Provenance(tool_version="test", created_at="2026-01-01T00:00:00+00:00")


def _spec(n=300, classes=10, views=2, chunk=64, shard=0, encoding=None, codec=None) -> CacheSpec:
    return CacheSpec(
        teacher=TeacherInfo(name="resnet8", weights_sha256="0" * 64, num_classes=classes),
        dataset=DatasetInfo(name="synthetic", split="train", num_samples=n, num_classes=classes, fingerprint="x"),
        views=ViewsInfo(count=views, clean=True, seed=0, augmentation=ViewSpec(kind="crop", size=8).to_json()),
        encoding=encoding or EncodingInfo(kind="topk", dtype="fp32", k=3),  # fp32: stores topk_values as they are
        codec=codec or CodecInfo(),
        layout=Layout(chunk_samples=chunk, shard_chunks=shard),
        batch_size=64,
    )


def _create(path, spec: CacheSpec) -> ZarrStore:
    return ZarrStore.create(path, spec, PROV, get_encoding(spec.encoding, spec.dataset.num_classes).fields())


def _fill(store: ZarrStore, seed: int = 0) -> dict[str, np.ndarray]:
    """Write every block with random data and mark it done; return what was written."""
    rng = np.random.default_rng(seed)
    spec = store.spec
    n, layout = spec.dataset.num_samples, spec.layout
    written = {}
    encoding = get_encoding(spec.encoding, spec.dataset.num_classes)
    for name in store.block_names():
        arr = store.array(name)
        if name == "topk_indices_packed":  # classes in range, as the encoding packs them
            classes = rng.integers(0, spec.dataset.num_classes, (*arr.shape[:2], spec.encoding.k))
            data = encoding.store_indices("topk_indices", classes.reshape(-1, spec.encoding.k))[name].reshape(arr.shape)
        else:
            data = rng.integers(0, 200, arr.shape).astype(arr.dtype)
        written[name] = data
    store.write_labels(rng.integers(0, spec.dataset.num_classes, n))
    for v in range(spec.views.total):
        for b in range(layout.num_blocks(n)):
            rows = layout.block_range(b, n)
            store.write_block(v, rows, {name: d[v, rows.start : rows.stop] for name, d in written.items()})
            store.mark(v, b, DONE)
    return written


@pytest.mark.parametrize(
    ("encoding", "arrays"),
    [
        (EncodingInfo(kind="topk", dtype="fp16", k=3),
         {"topk_indices_packed": ((2,), "uint8"), "top_logit": ((), "float32"), "topk_gaps": ((2,), "float16"),
          "lse": ((), "float32"), "target_logit": ((), "float32")}),
        (EncodingInfo(kind="topk", dtype="q8", k=3),
         {"topk_indices_packed": ((2,), "uint8"), "topk_gaps": ((2,), "uint8"), "lse_gap": ((), "uint16"),
          "target_gap": ((), "uint16")}),
        (EncodingInfo(kind="full", dtype="bf16"), {"top_logit": ((), "float32"), "logit_gaps": ((10,), "uint16")}),
    ],
    ids=["topk-fp16", "topk-q8", "full-bf16"],
)
def test_created_layout(tmp_path, encoding, arrays):
    spec = _spec(encoding=encoding)
    store = _create(tmp_path / "c.zarr", spec)
    assert store.array_names() == ["labels", "seeds", *arrays, PROGRESS, DIGESTS, LABEL_DIGESTS]
    labels, seeds, progress = store.array("labels"), store.array("seeds"), store.array(PROGRESS)
    assert (labels.shape, labels.dtype, labels.chunks) == ((300,), np.dtype("int32"), (64,))
    assert (seeds.shape, seeds.dtype, seeds.chunks) == ((3, 300), np.dtype("uint32"), (1, 64))
    assert (progress.shape, progress.dtype, progress.chunks) == ((3, 5), np.dtype("uint8"), (1, 1))
    for name, (trailing, dtype) in arrays.items():
        arr = store.array(name)
        assert (arr.shape, arr.dtype, arr.chunks, arr.shards) == ((3, 300, *trailing), np.dtype(dtype), (1, 64, *trailing), None)
    meta = json.loads((tmp_path / "c.zarr" / "topk_indices_packed" / "zarr.json").read_text()) if encoding.kind == "topk" else \
        json.loads((tmp_path / "c.zarr" / "logit_gaps" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert meta["fill_value"] == 0
    pmeta = json.loads((tmp_path / "c.zarr" / PROGRESS / "zarr.json").read_text())
    assert [c["name"] for c in pmeta["codecs"]] == ["bytes", "crc32c"]
    group = json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())
    assert group["attributes"][ATTR] == {"spec": spec.to_json(), "spec_sha256": spec_digest(spec.to_json()),
                                         "provenance": PROV.to_json()}
    assert (store.progress() == 0).all()
    again = ZarrStore.open(tmp_path / "c.zarr")
    assert again.spec == spec and again.provenance == PROV


def test_sharded_layout_and_block_keys(tmp_path):
    store = _create(tmp_path / "c.zarr", _spec(n=300, chunk=32, shard=4))
    arr = store.array("lse")
    assert arr.chunks == (1, 32) and arr.shards == (1, 128)
    assert store.array("labels").shards == (128,)
    assert store.array(PROGRESS).shape == (3, 3)
    keys = store.storage_keys("lse")
    assert sorted(keys) == sorted(f"c/{v}/{s}" for v in range(3) for s in range(3))
    assert store.block_of("lse/c/2/1") == (2, 1)
    written = _fill(store)
    assert np.array_equal(store.read("lse"), written["lse"])
    # Unsharded: a chunk is a block.
    plain = _create(tmp_path / "p.zarr", _spec(n=300, chunk=32))
    assert plain.array("lse").shards is None and plain.block_of("lse/c/1/9") == (1, 9)


def test_uncompressed_without_checksum(tmp_path):
    store = _create(tmp_path / "c.zarr", _spec(codec=CodecInfo(compressor="none", checksum=False)))
    meta = json.loads((tmp_path / "c.zarr" / "lse" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes"]
    written = _fill(store)
    assert np.array_equal(store.read("topk_values"), written["topk_values"])


def test_write_and_read_rows(tmp_path):
    store = _create(tmp_path / "c.zarr", _spec())
    written = _fill(store)
    assert (store.progress() == DONE).all()
    rows = np.array([299, 0, 5, 5, 128])
    assert np.array_equal(store.read("topk_values", 1, rows=rows), written["topk_values"][1, rows])
    assert np.array_equal(store.read("seeds", 2), written["seeds"][2])
    assert np.array_equal(store.read("lse", 0, rows=slice(10, 20)), written["lse"][0, 10:20])


def test_open_errors(tmp_path):
    with pytest.raises(CacheNotFound, match="no cache at"):
        ZarrStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CacheNotFound, match="no zarr.json"):
        ZarrStore.open(tmp_path / "plain")
    zarr.create_group(store=str(tmp_path / "other.zarr"))
    with pytest.raises(CacheNotFound, match="not a logitcache store"):
        ZarrStore.open(tmp_path / "other.zarr")
    assert not ZarrStore.exists(tmp_path / "missing") and not ZarrStore.exists(tmp_path / "plain")
    _create(tmp_path / "c.zarr", _spec())
    assert ZarrStore.exists(tmp_path / "c.zarr")
    with pytest.raises(CacheMismatch, match="already holds a zarr store"):
        _create(tmp_path / "c.zarr", _spec())


def test_newer_format_version_is_refused_on_open(tmp_path):
    _create(tmp_path / "c.zarr", _spec())
    meta_path = tmp_path / "c.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"][ATTR]["spec"]["format_version"] = FORMAT_VERSION + 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CacheMismatch, match=f"format version {FORMAT_VERSION + 1} is newer"):
        ZarrStore.open(tmp_path / "c.zarr")


def test_missing_and_corrupt_chunks_are_found(tmp_path):
    store = _create(tmp_path / "c.zarr", _spec())
    _fill(store)
    assert store.check_chunks() == []
    (tmp_path / "c.zarr" / "lse" / "c" / "1" / "2").unlink()
    chunk = tmp_path / "c.zarr" / "topk_values" / "c" / "0" / "3" / "0"  # (view, chunk, trailing)
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    problems = {(p.array, p.key): p.problem for p in store.check_chunks()}
    assert problems.keys() == {("lse", "lse/c/1/2"), ("topk_values", "topk_values/c/0/3/0")}
    assert problems[("lse", "lse/c/1/2")] == "missing"
    assert problems[("topk_values", "topk_values/c/0/3/0")].startswith("does not decode")
    assert [p.key for p in store.check_chunks(decode=False)] == ["lse/c/1/2"]
    assert store.check_chunks(["lse"], views=[0, 2]) == []
    # Reading through a corrupt chunk never returns data: it raises, naming the chunk and the fix.
    with pytest.raises(CacheCorrupt, match="topk_values chunk topk_values/c/0/3/0.*verify"):
        store.read("topk_values", 0)
    assert store.read("topk_values", 1).shape == (300, 3)  # other views are fine


@pytest.mark.parametrize("shard", [0, 2])
def test_all_zero_blocks_are_written_after_reopening(tmp_path, shard):
    # The dump writes through a store it opened (not the one that created the arrays); a block
    # of zeros (labels sorted by class, all class 0) must still be written, or it reads as lost.
    _create(tmp_path / "c.zarr", _spec(n=300, chunk=32, shard=shard))
    store = ZarrStore.open(tmp_path / "c.zarr", read_only=False)
    store.write_labels(np.zeros(300, dtype=np.int64))
    n, layout = 300, store.spec.layout
    for v in range(3):
        for b in range(layout.num_blocks(n)):
            rows = layout.block_range(b, n)
            zeros = {name: np.zeros((len(rows), *store.array(name).shape[2:]), store.array(name).dtype)
                     for name in ("seeds", "topk_values", "topk_indices_packed", "lse", "target_logit")}
            store.write_block(v, rows, zeros)
            store.mark(v, b, DONE)
    assert ZarrStore.open(tmp_path / "c.zarr").check_chunks() == []


def test_torn_progress_marker_counts_as_not_done(tmp_path):
    store = _create(tmp_path / "c.zarr", _spec())
    for b in range(5):
        store.mark(0, b, DONE)
    store.mark(1, 0, WRITING)
    marker = tmp_path / "c.zarr" / PROGRESS / "c" / "0" / "2"
    marker.write_bytes(marker.read_bytes()[:-1] + b"\x00")  # bad checksum
    state = store.progress()
    assert state[0].tolist() == [DONE, DONE, 0, DONE, DONE]
    assert state[1].tolist() == [WRITING, 0, 0, 0, 0]


def test_missing_array_is_corruption(tmp_path):
    import shutil

    _create(tmp_path / "c.zarr", _spec())
    shutil.rmtree(tmp_path / "c.zarr" / "lse")
    with pytest.raises(CacheCorrupt, match="array 'lse' is missing"):
        ZarrStore.open(tmp_path / "c.zarr").array("lse")


def test_delete_keeps_lock_files(tmp_path):
    path = tmp_path / "c.zarr"
    with flock(path):
        _create(path, _spec())
    ZarrStore.open(path).delete()
    assert sorted(p.name for p in path.iterdir()) == [".lock", ".lock-read"]
    assert not ZarrStore.exists(path)


def test_nbytes_stored_counts_data_not_locks(tmp_path):
    path = tmp_path / "c.zarr"
    with flock(path):
        store = _create(path, _spec())
    _fill(store)
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".lock")]
    assert store.nbytes_stored() == sum(p.stat().st_size for p in files) > 0


def test_flock_excludes_a_second_writer(tmp_path):
    path = tmp_path / "c.zarr"
    with flock(path):
        with pytest.raises(CacheBusy, match="another logitcache process is writing"):
            with flock(path):
                pass
    with flock(path, shared=True), flock(path, shared=True):  # shard writers share the store
        with pytest.raises(CacheBusy):
            with flock(path):
                pass
    with flock(path):  # released
        pass
