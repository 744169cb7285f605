"""9. Image folders: logitcache's folder data path against torchvision's on the same JPEG files,
and what it costs a dump and a training step.

Images: 240 JPEGs of 500×375 (quality 90, smooth noise: `_common.jpeg_folder`) in 4 classes, as
issue 13 measured, and 32 more in `val/` for the training runs' evaluation. Both pipelines decode
with Pillow and output normalised float32 batches of 32, on the CPU, one torch thread.

Pipelines: logitcache's `augmented_batches` (the seeded RandomResizedCrop 224 + flip of the
training view, or the clean view: shorter side to 256, centre 224, as one resampling of the
centre box) against torchvision's `ImageFolder` + `transforms.v2` [RandomResizedCrop(224) +
RandomHorizontalFlip | Resize(256) + CenterCrop(224)] + PILToTensor + ToDtype(float32, scale) +
Normalize in a `DataLoader`, each with no loader process (one core) and with 2 workers. Every
repeat runs all eight once, interleaved; a ratio is the median over repeats of that repeat's
logitcache / torchvision images/s (range in brackets).

Dump and training: the same folder with small views, so that a small model's forward stays
near the cost of decoding a 500×375 JPEG and the data path shows: 112-pixel views (resnet8's
forward several times the data path) and 64-pixel ones (about equal to it); resnet8 (random
init) as teacher and as student, one loader worker. The dump (one augmented view of every image,
full fp32) against bare teacher forwards over the same batches, augmented beforehand; a training
epoch distilling from the 64-pixel cache (`kd`) against a plain CE epoch on the same views
(`ce`), the data path of both included (`seconds` of the epoch in `metrics.jsonl`). They
alternate, a fresh store or run folder each time; ratios are medians of the per-repeat ratios
(range in brackets).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.loader import ViewBatch, augmented_batches
from logitcache.teacher import build_teacher
from logitcache.train import TrainConfig, train
from logitcache.views import ViewSpec, view_seeds

from ._common import Ctx, Section, fmt_ms, jpeg_folder, median, spread, table, timed

TARGET_PIPELINE = 1.0  # logitcache / torchvision images/s
TARGET_DUMP = 0.9  # bare forwards / dump
TARGET_TRAIN = 1.05  # cached KD epoch / CE epoch
BATCH = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _ours(dataset, view: str, n: int, workers: int) -> float:
    seeds = view_seeds(0, 1, np.arange(n))
    batches = [ViewBatch(samples=np.arange(s, min(s + BATCH, n)), seeds=seeds[s : s + BATCH],
                         clean=np.full(min(BATCH, n - s), view == "clean")) for s in range(0, n, BATCH)]
    return n / timed(lambda: [x for _, x in augmented_batches(dataset, dataset.train_view, batches,
                                                              device=torch.device("cpu"), workers=workers)])


def _torchvision(root: Path, view: str, workers: int) -> float:
    from torchvision import datasets
    from torchvision.transforms import v2

    geometry = ([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip()] if view == "train"
                else [v2.Resize(256), v2.CenterCrop(224)])
    ops = v2.Compose([*geometry, v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    data = datasets.ImageFolder(str(root), transform=ops)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, num_workers=workers)
    return len(data) / timed(lambda: [x for x, _ in loader])


def _pipeline(ctx: Ctx, root: Path) -> tuple[list[list[str]], dict[str, float]]:
    repeats = ctx.n(5, 1)
    dataset = open_dataset(f"imagefolder:{root.parent}", "train")
    n = len(dataset)
    configs = [(view, workers) for view in ("train", "clean") for workers in (0, 2)]
    rates: dict[tuple, list[float]] = {(who, *c): [] for who in ("logitcache", "torchvision") for c in configs}
    _ours(dataset, "train", BATCH, 0), _torchvision(root, "train", 0)  # warm-up: imports, page cache
    for _ in range(repeats):
        for view, workers in configs:
            ctx.quiet()
            rates[("logitcache", view, workers)].append(_ours(dataset, view, n, workers))
            ctx.quiet()
            rates[("torchvision", view, workers)].append(_torchvision(root, view, workers))
    rows, ratios = [], {}
    for view, workers in configs:
        ours, theirs = rates[("logitcache", view, workers)], rates[("torchvision", view, workers)]
        per = [a / b for a, b in zip(ours, theirs)]
        ratios[f"{view}, {workers} workers"] = median(per)
        rows.append([f"{'training (RandomResizedCrop 224 + flip)' if view == 'train' else 'clean (resize 256, centre 224)'}",
                     "1 process, 1 core" if workers == 0 else f"{workers} workers",
                     f"{median(ours):.0f} /s ({spread(ours):.0f} %)", f"{median(theirs):.0f} /s ({spread(theirs):.0f} %)",
                     f"**{median(per):.2f}** ({min(per):.2f}–{max(per):.2f})",
                     "met" if median(per) >= TARGET_PIPELINE else "MISSED"])
    return rows, ratios


def _bare(teacher: torch.nn.Module, images: list[torch.Tensor]) -> float:
    with torch.inference_mode():
        return timed(lambda: [teacher(x).float() for x in images])


def _dump(ctx: Ctx, name: str, size: int) -> tuple[list[str], Path]:
    """One row: the dump of one augmented view of every image in ``size``-pixel views against bare
    forwards over the same batches, alternating; and the last dump's store."""
    repeats = ctx.n(3, 1)
    base = DumpConfig(teacher="resnet8", dataset=name, out="", random_init=True, views=1, clean_view=False,
                      augmentation=f"resized_crop:{size}", encoding="full", dtype="fp32", chunk_samples=120,
                      batch_size=BATCH, device="cpu", workers=1, progress=False)
    dataset = open_dataset(name, "train")
    n = len(dataset)
    teacher = build_teacher("resnet8", dataset.num_classes, checkpoint=None, random_init=True, seed=0,
                            device=torch.device("cpu"))
    batches = [ViewBatch(samples=np.arange(s, min(s + BATCH, n)), seeds=view_seeds(0, 1, np.arange(s, min(s + BATCH, n))),
                         clean=np.zeros(min(BATCH, n - s), bool)) for s in range(0, n, BATCH)]
    images = [x for _, x in augmented_batches(dataset, ViewSpec.parse(f"resized_crop:{size}"), batches,
                                              device=torch.device("cpu"))]
    _bare(teacher, images[:2])  # warm-up
    loops, teacher_s, bares, cache = [], [], [], Path(ctx.workdir) / f"folder-cache-{size}.zarr"
    for _ in range(repeats):
        shutil.rmtree(cache, ignore_errors=True)
        ctx.quiet()
        result = dump(replace(base, out=str(cache)))
        loops.append(result.seconds)
        teacher_s.append(result.teacher_seconds)
        ctx.quiet()
        bares.append(_bare(teacher, images))
    ratio = median([b / s for b, s in zip(bares, loops)])
    row = [f"{size}-pixel views", fmt_ms(median(loops)), fmt_ms(median(teacher_s)), fmt_ms(median(bares)),
           f"**{ratio:.3f}** ({min(b / s for b, s in zip(bares, loops)):.3f}–{max(b / s for b, s in zip(bares, loops)):.3f})",
           "met" if ratio >= TARGET_DUMP else "MISSED"]
    return row, cache


def _train_epochs(ctx: Ctx, name: str, cache: Path) -> list[str]:
    """A cached KD epoch against a CE epoch on the cache's views (ce reads no logits), alternating."""
    epoch: dict[str, list[float]] = {"kd": [], "ce": []}
    config = TrainConfig(student="resnet8", dataset=name, out="", cache=str(cache), epochs=1, batch_size=BATCH,
                         device="cpu", workers=1, progress=False, preset=None)
    for _ in range(ctx.n(3, 1)):
        for method in ("kd", "ce"):
            out = Path(ctx.workdir) / f"folder-run-{method}"
            shutil.rmtree(out, ignore_errors=True)
            ctx.quiet()
            train(replace(config, method=method, out=str(out)))
            epoch[method].append(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["seconds"])
    per = [k / c for k, c in zip(epoch["kd"], epoch["ce"])]
    return [f"kd from the cache / ce, resnet8, 64-pixel views, {BATCH} a batch", fmt_ms(median(epoch["kd"])),
            fmt_ms(median(epoch["ce"])), f"**{median(per):.3f}** ({min(per):.3f}–{max(per):.3f})",
            "met" if median(per) <= TARGET_TRAIN else "MISSED"]


def run(ctx: Ctx) -> Section:
    count = ctx.n(240, 64)
    root = jpeg_folder(ctx.workdir / "folder-bench" / "train", [(375, 500)], count)
    jpeg_folder(ctx.workdir / "folder-bench" / "val", [(375, 500)], 32)
    rows, ratios = _pipeline(ctx, root)
    name = f"imagefolder:{root.parent}"
    dump_rows = [_dump(ctx, name, 112)[0]]
    row, cache = _dump(ctx, name, 64)
    dump_rows.append(row)
    ctx.shared["folder_ratios"] = ratios
    body = "\n\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        table(["view", "loading", "logitcache", "torchvision", "logitcache / torchvision", f"target ≥ {TARGET_PIPELINE:g}"], rows),
        table(["dump, resnet8, 1 loader worker", "stage-one loop (`DumpResult.seconds`)", "of which forward + encode",
               "bare forwards", "bare / dump", f"target ≥ {TARGET_DUMP:g}"], dump_rows),
        table(["training epoch, 1 loader worker", "cached KD", "CE", "KD / CE", f"target ≤ {TARGET_TRAIN:g}"],
              [_train_epochs(ctx, name, cache)]),
    ])
    return Section(title="9. Image folders", body=body)
