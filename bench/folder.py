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

Dump and training: the same folder with 64-pixel views (`resized_crop:64`), so that a small
model's forward stays near the cost of decoding a 500×375 JPEG and the data path shows; resnet8
(random init) as teacher and as student, one loader worker. The dump (clean view + 1 augmented
view, full fp32) against bare teacher forwards over the same batches augmented beforehand; a
training epoch distilling from that cache (`kd`) against a plain CE epoch on the same images
(`ce`), the data path of both included (`seconds` of the epoch in `metrics.jsonl`). They
alternate, a fresh store or run folder each time.
"""

from __future__ import annotations

import json
import shutil
import time
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


def _dump_and_train(ctx: Ctx, root: Path) -> tuple[list[list[str]], list[list[str]], float, float]:
    repeats = ctx.n(3, 1)
    name = f"imagefolder:{root.parent}"
    base = DumpConfig(teacher="resnet8", dataset=name, out="", random_init=True, views=1, clean_view=True,
                      augmentation="resized_crop:64", encoding="full", dtype="fp32", chunk_samples=120,
                      batch_size=BATCH, device="cpu", workers=1, progress=False)
    dataset = open_dataset(name, "train")
    n = len(dataset)
    spec = ViewSpec.parse("resized_crop:64")
    teacher = build_teacher("resnet8", dataset.num_classes, checkpoint=None, random_init=True, seed=0,
                            device=torch.device("cpu"))
    batches = [ViewBatch(samples=np.arange(s, min(s + BATCH, n)), seeds=view_seeds(0, v, np.arange(s, min(s + BATCH, n))),
                         clean=np.full(min(BATCH, n - s), v == 0)) for v in (0, 1) for s in range(0, n, BATCH)]
    images = [x for _, x in augmented_batches(dataset, spec, batches, device=torch.device("cpu"))]
    _bare(teacher, images[:2])  # warm-up
    loops, walls, bares, cache = [], [], [], Path(ctx.workdir) / "folder-cache.zarr"
    for r in range(repeats):
        shutil.rmtree(cache, ignore_errors=True)
        ctx.quiet()
        t = time.perf_counter()
        result = dump(replace(base, out=str(cache)))
        walls.append(time.perf_counter() - t)
        loops.append(result.seconds)
        ctx.quiet()
        bares.append(_bare(teacher, images))
    dump_ratio = median([b / s for b, s in zip(bares, loops)])
    dump_rows = [
        ["stage-one loop (`DumpResult.seconds`) vs bare forwards", fmt_ms(median(loops)), fmt_ms(median(bares)),
         f"**{dump_ratio:.3f}**", "met" if dump_ratio >= TARGET_DUMP else "MISSED"],
        ["`dump()` end to end (also: fingerprint, store, teacher test accuracy on val/)", fmt_ms(median(walls)),
         "", f"{median(bares) / median(walls):.3f}", ""],
    ]
    epoch: dict[str, list[float]] = {"kd": [], "ce": []}
    config = TrainConfig(student="resnet8", dataset=name, out="", cache=str(cache), epochs=1, batch_size=BATCH,
                         device="cpu", workers=1, progress=False, preset=None)
    for r in range(repeats):
        for method in ("kd", "ce"):
            out = Path(ctx.workdir) / f"folder-run-{method}"
            shutil.rmtree(out, ignore_errors=True)
            ctx.quiet()
            train(replace(config, method=method, out=str(out)))  # ce with the cache: its views, no logits
            epoch[method].append(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["seconds"])
    train_ratio = median([k / c for k, c in zip(epoch["kd"], epoch["ce"])])
    train_rows = [[f"kd from the cache / ce, resnet8, {n} images a {BATCH}", fmt_ms(median(epoch["kd"])),
                   fmt_ms(median(epoch["ce"])), f"**{train_ratio:.3f}**",
                   "met" if train_ratio <= TARGET_TRAIN else "MISSED"]]
    return dump_rows, train_rows, dump_ratio, train_ratio


def run(ctx: Ctx) -> Section:
    count = ctx.n(240, 64)
    root = jpeg_folder(ctx.workdir / "folder-bench" / "train", [(375, 500)], count)
    jpeg_folder(ctx.workdir / "folder-bench" / "val", [(375, 500)], 32)
    rows, ratios = _pipeline(ctx, root)
    dump_rows, train_rows, dump_ratio, train_ratio = _dump_and_train(ctx, root)
    ctx.shared["folder_ratios"] = ratios
    body = "\n\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        table(["view", "loading", "logitcache", "torchvision", "logitcache / torchvision", f"target ≥ {TARGET_PIPELINE:g}"], rows),
        table(["dump (resnet8, 64-pixel views, 1 worker)", "dump", "bare forwards", "bare / dump", f"target ≥ {TARGET_DUMP:g}"],
              dump_rows),
        table(["training epoch (64-pixel views, 1 worker)", "cached KD", "CE", "KD / CE", f"target ≤ {TARGET_TRAIN:g}"],
              train_rows),
    ])
    return Section(title="9. Image folders", body=body)
