"""The dump loop as a library call: what it stores, resuming, shard writers, refusals."""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.errors import BadInput, CacheIncomplete, DataError
from logitcache.evaluate import evaluate_model
from logitcache.loader import ViewBatch, augmented_batches
from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import DONE, ZarrStore
from logitcache.teacher import build_teacher
from logitcache.views import ViewSpec, view_seeds

dump_module = importlib.import_module("logitcache.dump")  # the package re-exports the function
SYNTHETIC = "synthetic:n=64,size=8"
BASE = DumpConfig(teacher="resnet8", dataset=SYNTHETIC, out="", random_init=True, views=2, topk=3,
                  chunk_samples=16, device="cpu", progress=False)


def arrays_of(path) -> dict[str, np.ndarray]:
    store = ZarrStore.open(path)
    return {name: store.read(name) for name in store.array_names()}


def assert_same_arrays(a, b) -> None:
    x, y = arrays_of(a), arrays_of(b)
    assert x.keys() == y.keys()
    for name in x:
        assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), name


def test_stored_arrays_are_the_teachers_logits_on_the_replayed_views(make_cache):
    path = make_cache(dataset=SYNTHETIC, encoding="full", dtype="fp32", chunk_samples=16)
    store = ZarrStore.open(path)
    spec = store.spec
    ds = open_dataset(SYNTHETIC)
    assert spec.views.total == 3 and spec.dataset.fingerprint == ds.fingerprint
    assert np.array_equal(store.read("labels"), ds.labels)
    for v in range(3):
        assert np.array_equal(store.read("seeds", v), view_seeds(0, v, np.arange(64)))
    assert (store.progress() == DONE).all() and store.provenance.complete
    # Replay a few pairs independently of verify: the loader, the teacher, no encoding.
    teacher = build_teacher("resnet8", 10, checkpoint=None, random_init=True, seed=0)
    views, samples = np.array([0, 2, 1, 1, 0]), np.array([63, 0, 17, 18, 5])
    batch = ViewBatch(samples=samples, seeds=view_seeds(0, views, samples), clean=views == 0)
    [(_, images)] = list(augmented_batches(ds, ViewSpec.from_json(spec.views.augmentation), [batch], device=torch.device("cpu")))
    with torch.inference_mode():
        fresh = teacher(images)
    stored = np.stack([store.read("logits", int(v), rows=np.array([i]))[0] for v, i in zip(views, samples)])
    assert np.allclose(stored, fresh.numpy(), rtol=1e-5, atol=1e-5)
    # Provenance: the teacher's accuracy on the clean test split.
    test_acc = evaluate_model(teacher, open_dataset(SYNTHETIC, "test"), device=torch.device("cpu"))["top1"]
    assert store.provenance.teacher_test_accuracy == pytest.approx(test_acc)
    assert store.provenance.teacher_test_samples == 64


def test_two_dumps_write_equal_arrays(tmp_path):
    a = dump(replace(BASE, out=str(tmp_path / "a.zarr")))
    b = dump(replace(BASE, out=str(tmp_path / "b.zarr")))
    assert a.complete and b.complete and a.blocks_written == 12 and a.samples_written == 192
    assert_same_arrays(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_resume_rewrites_exactly_the_unfinished_and_damaged_blocks(tmp_path, make_cache, copy_store):
    ref = make_cache(**{k: getattr(BASE, k) for k in ("dataset", "topk", "chunk_samples")})
    path = copy_store(ref, tmp_path / "c.zarr")
    store = ZarrStore.open(path, read_only=False)
    store.mark(1, 2, 1)  # killed while writing view 1 block 2
    store.mark(2, 3, 0)  # never started
    (path / "lse" / "c" / "2" / "3").unlink()
    chunk = path / "topk_gaps" / "c" / "0" / "1" / "0"  # marked done, but its bytes rotted
    raw = bytearray(chunk.read_bytes())
    raw[-5] ^= 0x10
    chunk.write_bytes(bytes(raw))
    from logitcache.store.format import Provenance

    store.set_provenance(Provenance(**{**store.provenance.to_json(), "complete": False}))
    result = dump(replace(BASE, out=str(path)))
    assert result.notes[0] == "resuming: 10 of 12 blocks already done"
    assert (result.blocks_written, result.blocks_skipped) == (3, 9)
    assert result.complete
    assert_same_arrays(ref, path)
    # Done and complete: a third run writes nothing.
    again = dump(replace(BASE, out=str(path)))
    assert (again.blocks_written, again.blocks_skipped) == (0, 12)


def test_shard_writers_make_the_same_store(tmp_path, make_cache):
    ref = make_cache(**{k: getattr(BASE, k) for k in ("dataset", "topk", "chunk_samples")})
    out = str(tmp_path / "c.zarr")
    first = dump(replace(BASE, out=out, shard=(0, 2)))
    assert not first.complete and first.blocks_written == 6
    assert not ZarrStore.open(out).provenance.complete
    with pytest.raises(CacheIncomplete):
        CacheReader(out)
    second = dump(replace(BASE, out=out, shard=(1, 2)))
    assert second.complete and second.blocks_written == 6
    assert_same_arrays(ref, out)
    with pytest.raises(BadInput, match="--shard 2/2 is invalid"):
        dump(replace(BASE, out=out, shard=(2, 2)))


def test_out_that_is_not_a_store_is_refused_untouched(tmp_path, snapshot):
    (tmp_path / "file").write_text("precious")
    with pytest.raises(BadInput, match="exists and is not a logitcache store"):
        dump(replace(BASE, out=str(tmp_path / "file")))
    assert (tmp_path / "file").read_text() == "precious"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    before = snapshot(folder)
    with pytest.raises(BadInput, match="nothing was written"):
        dump(replace(BASE, out=str(folder), overwrite=True))
    assert snapshot(folder) == before


def test_non_finite_teacher_logits_are_not_stored(tmp_path, monkeypatch):
    real = dump_module.build_teacher

    class Poisoned(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            if out.shape[0] > 1 and self.poison:
                out[1, 3] = float("nan")
            return out

    def build(*args, **kwargs):
        model = Poisoned(real(*args, **kwargs))
        model.poison = True
        return model

    monkeypatch.setattr(dump_module, "build_teacher", build)
    out = tmp_path / "c.zarr"
    with pytest.raises(DataError, match="NaN/inf logits for sample 1 \\(view 0\\).*not written"):
        dump(replace(BASE, out=str(out)))
    store = ZarrStore.open(out)
    assert not store.provenance.complete and not (store.progress() == DONE).any()


def test_overwrite_replaces_a_store_made_with_other_settings(tmp_path):
    out = str(tmp_path / "c.zarr")
    dump(replace(BASE, out=out))
    result = dump(replace(BASE, out=out, views=1, overwrite=True))
    assert result.complete and result.notes == [
        f"--overwrite: replaced {out}, which was made with other settings (views.count: 2 vs 1)",
        "augmentation: crop(8, pad=1)+flip",
    ]
    store = ZarrStore.open(out)
    assert store.spec.views.count == 1 and store.array("seeds").shape == (2, 64)


def test_fsspec_url_store(tmp_path, make_cache):
    ref = make_cache(**{k: getattr(BASE, k) for k in ("dataset", "topk", "chunk_samples")})
    url = f"memory://{tmp_path.name}/c.zarr"
    assert dump(replace(BASE, out=url)).complete
    assert_same_arrays(ref, url)
    reader = CacheReader(url)
    assert reader.read(1, np.arange(64)).batch_size == 64
    reader.close()
    again = dump(replace(BASE, out=url))
    assert again.notes == ["resuming: 12 of 12 blocks already done"] and again.blocks_written == 0
    replaced = dump(replace(BASE, out=url, views=1, overwrite=True))
    assert replaced.complete and ZarrStore.open(url).array("seeds").shape == (2, 64)


def test_zipped_store_is_read_only(tmp_path, make_cache):
    import zipfile

    from logitcache.errors import CacheError
    from logitcache.info import cache_info
    from logitcache.verify import verify

    ref = make_cache(**{k: getattr(BASE, k) for k in ("dataset", "topk", "chunk_samples")})
    packed = tmp_path / "c.zip"
    with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(ref.rglob("*")):
            if f.is_file() and not f.name.startswith(".lock"):
                z.write(f, f.relative_to(ref).as_posix())
    assert_same_arrays(ref, packed)
    assert cache_info(packed, progress=False).augmented.samples == 128
    assert verify(packed, random_init=True, device="cpu").ok
    with pytest.raises(CacheError, match="packed store and read-only: `logitcache unpack` it"):
        ZarrStore.open(packed, read_only=False)


def test_image_folder_dump_verifies(tmp_path):
    from image_files import write_png

    from logitcache.verify import verify

    gen = torch.Generator().manual_seed(0)
    for j in range(12):
        h, w = (20, 28) if j % 2 else (24, 18)
        (tmp_path / "imgs" / f"c{j % 3}").mkdir(parents=True, exist_ok=True)
        write_png(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8),
                  str(tmp_path / "imgs" / f"c{j % 3}" / f"{j}.png"))
    config = replace(BASE, dataset=f"imagefolder:{tmp_path / 'imgs'}", out=str(tmp_path / "c.zarr"), topk=2,
                     chunk_samples=4, augmentation="resized_crop:16", workers=1)
    result = dump(config)
    assert result.complete and result.teacher_test_accuracy is None  # no val/ folder: unknown, not an error
    report = verify(config.out, samples=10_000, random_init=True, device="cpu")
    assert report.ok and report.pairs_checked == 36, report.problems
