"""The loader: (view, sample) pairs -> normalised augmented batches, in memory and from folders."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from image_files import write_png

from logitcache.datasets import open_dataset
from logitcache.loader import ViewBatch, augmented_batches, clean_batches
from logitcache.views import ViewSpec, view_seeds

CPU = torch.device("cpu")


def _pairs(n: int, views: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    v, i = np.meshgrid(np.arange(views), np.arange(n), indexing="ij")
    return v.ravel(), i.ravel()


def _batches(views, samples, batch_size, dump_seed=0, clean_view=True) -> list[ViewBatch]:
    out = []
    for s in range(0, len(samples), batch_size):
        v, i = views[s : s + batch_size], samples[s : s + batch_size]
        out.append(ViewBatch(samples=i, seeds=view_seeds(dump_seed, v, i), clean=(v == 0) & clean_view))
    return out


def _run(dataset, spec, batches, **kw) -> torch.Tensor:
    got = list(augmented_batches(dataset, spec, batches, device=CPU, **kw))
    assert len(got) == len(batches) and all(b is want for (b, _), want in zip(got, batches))  # in order
    return torch.cat([x for _, x in got])


def test_in_memory_batches_are_the_view_ops_normalised():
    ds = open_dataset("synthetic:n=64,size=8")
    spec = ds.train_view
    views, samples = _pairs(64, 3)
    out = _run(ds, spec, _batches(views, samples, 50))
    assert out.dtype == torch.float32 and out.shape == (192, 3, 8, 8)
    seeds = view_seeds(0, views, samples)
    want = ds.normalize(spec.apply(ds.images(samples), spec.params(seeds, (8, 8), views == 0)))
    assert torch.equal(out, want)
    # View 0 is the clean image.
    assert torch.equal(out[:64], ds.normalize(ds.images(np.arange(64))))


def test_a_pair_is_the_same_in_any_batch():
    ds = open_dataset("synthetic:n=64,size=8")
    views, samples = _pairs(64, 3)
    ref = _run(ds, ds.train_view, _batches(views, samples, 192))
    rng = np.random.default_rng(0)
    for batch_size in (1, 7, 64):
        perm = rng.permutation(len(samples))
        out = _run(ds, ds.train_view, _batches(views[perm], samples[perm], batch_size))
        assert torch.equal(out, ref[perm])


def test_clean_batches_cover_every_sample_once():
    ds = open_dataset("digits", "test")
    batches = clean_batches(ds, 100)
    assert [len(b) for b in batches] == [100, 100, 100, 59]
    assert np.array_equal(np.concatenate([b.samples for b in batches]), np.arange(359))
    assert all(b.clean.all() for b in batches)
    out = _run(ds, ds.train_view, batches)
    assert torch.equal(out, ds.normalize(ds.images(np.arange(359))))


@pytest.fixture(scope="module")
def folder_and_memory(tmp_path_factory):
    """The same 24 images (two sizes) as an image folder and as in-memory tensors."""
    root = tmp_path_factory.mktemp("folder")
    gen = torch.Generator().manual_seed(0)
    images = []
    for j in range(24):
        h, w = (20, 28) if j % 2 else (32, 24)
        img = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
        (root / f"c{j % 3}").mkdir(exist_ok=True)
        write_png(img, str(root / f"c{j % 3}" / f"{j:02d}.png"))
        images.append(img)
    ds = open_dataset(f"imagefolder:{root}")
    by_file = {f"c{j % 3}/{j:02d}.png": img for j, img in enumerate(images)}
    return ds, [by_file[f] for f in ds.files]


@pytest.mark.parametrize("strong", [{}, {"aa": "rand-m9-mstd0.5-inc1", "reprob": 0.5}], ids=["plain", "strong"])
@pytest.mark.parametrize("workers", [0, 1])
def test_folder_batches_equal_per_image_views(folder_and_memory, workers, strong):
    """Decoded files resampled in workers, a batch's plans drawn at once, equal each in-memory
    image's view made alone."""
    ds, images = folder_and_memory
    spec = ViewSpec(kind="resized_crop", size=12, flip=True, **strong)
    views, samples = _pairs(len(ds), 2)
    batches = _batches(views, samples, 10, dump_seed=4)
    out = _run(ds, spec, batches, workers=workers)
    seeds = view_seeds(4, views, samples)
    want = []
    for v, i, s in zip(views, samples, seeds):
        params = spec.params(np.asarray([s]), images[i].shape[1:], clean=bool(v == 0))
        want.append(spec.apply_each([images[i]], params)[0])
    assert torch.equal(out, ds.normalize(torch.stack(want)))
    # Some flips happened, and the flipped ones are mirrored (the device-side flip path).
    flips = spec.params(seeds, np.array([im.shape[1:] for im in images])[samples], views == 0)[:, 4]
    assert 0 < flips.sum() < len(flips) and not flips[views == 0].any()


def test_a_folder_dump_shows_images_per_second(folder_and_memory, run_cli, tmp_path):
    ds, _ = folder_and_memory
    result = run_cli(["dump", "--teacher", "resnet8", "--dataset", f"imagefolder:{ds.root}", "--random-init",
                      "--augment", "resized_crop:8", "--views", "1", "--topk", "2", "--chunk-samples", "8",
                      "--device", "cpu", "--out", tmp_path / "c.zarr"])
    assert result.code == 0, result.err
    assert re.search(r"dump resnet8: 100%.*\d ?img/s", result.err), result.err[-500:]
