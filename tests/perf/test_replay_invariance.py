"""Replay does not depend on how the dump was run: a student with another batch size, number of
loader workers or device reads the same (view, sample) pairs, and gets the teacher logits of
the very images it trains on.

Uses an image folder (images of several sizes, decoded and cropped in DataLoader workers: the
path where worker count could matter) and a random-init resnet8 teacher with full fp32 logits,
so stored and live logits can be compared directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_files import write_png

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.loader import ViewBatch, augmented_batches
from logitcache.store.reader import CacheReader
from logitcache.teacher import build_teacher
from logitcache.train import epoch_order, global_batches
from logitcache.views import ViewSpec

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """30 random images of three sizes in three classes, with train/ and val/ splits."""
    root = tmp_path_factory.mktemp("replay-folder")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 30), ("val", 6)):
        for j in range(count):
            h, w = ((20, 28), (32, 24), (17, 17))[j % 3]
            (root / split / f"c{j % 3}").mkdir(parents=True, exist_ok=True)
            write_png(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8),
                      str(root / split / f"c{j % 3}" / f"{j:02d}.png"))
    return f"imagefolder:{root}"


# Plain crops (flipped on the device), and the strong per-sample ops with mixed views (flipped,
# augmented and mixed with their partners in the workers).
STRONG = {"aa": "rand-m9-mstd0.5-inc1", "reprob": 0.5, "mixup": 0.8, "cutmix": 1.0}


@pytest.fixture(scope="module", params=[{}, STRONG], ids=["crop", "strong+mix"])
def dumps(folder, tmp_path_factory, request):
    """The same cache dumped twice: batch 5 with no workers, and batch 16 with two workers."""
    out = {}
    for batch_size, workers in ((5, 0), (16, 2)):
        path = tmp_path_factory.mktemp("replay-cache") / "c.zarr"
        result = dump(DumpConfig(
            teacher="resnet8", dataset=folder, out=str(path), random_init=True, views=2, augmentation="resized_crop:16",
            encoding="full", dtype="fp32", chunk_samples=8, device="cpu", batch_size=batch_size, workers=workers,
            progress=False, strong=request.param,
        ))
        assert result.complete
        out[(batch_size, workers)] = path
    return out


def test_dumps_with_other_batch_sizes_and_workers_store_the_same_pairs(dumps):
    a, b = (CacheReader(p) for p in dumps.values())
    assert a.spec.differences(b.spec) == ["batch_size: 5 vs 16"]
    everything = np.arange(a.spec.dataset.num_samples)
    for v in range(a.num_views):
        assert np.array_equal(a.seeds(v), b.seeds(v))
        # Float results may differ in the last bits between batch compositions, nothing more.
        torch.testing.assert_close(a.read(v, everything).logits, b.read(v, everything).logits, atol=1e-5, rtol=1e-5)
    a.close(), b.close()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_size, workers", [(7, 0), (4, 2)])
def test_student_replays_the_images_whose_logits_were_stored(folder, dumps, batch_size, workers, device):
    """Batches built as ``train`` builds them (a seeded epoch order, a random view per sample):
    the teacher's logits of the images the student gets equal the stored logits of its pairs."""
    dev = torch.device(device)
    dataset = open_dataset(folder, "train")
    teacher = build_teacher("resnet8", dataset.num_classes, checkpoint=None, random_init=True, seed=0, device=dev)
    for path in dumps.values():
        reader = CacheReader(path)
        spec = ViewSpec.from_json(reader.spec.views.augmentation)
        rng = np.random.default_rng(batch_size)
        batches, views = [], []
        for g in global_batches(epoch_order(3, 1, len(dataset)), batch_size):
            v = rng.integers(1, reader.num_views, len(g))  # augmented views only, mixed within a batch
            seeds = np.array([reader.seeds(int(view))[i] for view, i in zip(v, g)], dtype=np.uint32)
            batches.append(ViewBatch(samples=g, seeds=seeds, clean=np.zeros(len(g), dtype=bool)))
            views.append(v)
        seen = 0
        for (batch, images), v in zip(augmented_batches(dataset, spec, batches, device=dev, workers=workers), views):
            assert images.device.type == dev.type
            with torch.inference_mode():
                live = teacher(images).float().cpu()
            torch.testing.assert_close(live, reader.read(v, batch.samples).logits, atol=1e-4, rtol=1e-4)
            seen += len(batch)
        assert seen == len(dataset)
        reader.close()
