"""5. Scaling: how dump time, read time and store size grow with samples, views and classes.

Dump: ``dump()`` with a small teacher (resnet8, random init) on synthetic 32×32 images, top-10
fp16, chunks of 512, batch 256; the time is the stage-one loop (``DumpResult.seconds``: seeded
augmentation, forwards, encoding, chunk writes), per (view, sample). Read: one training epoch
from a synthetic-logits store (``_common.fill_stores``) — the view's load into memory plus every
``read`` of a shuffled epoch at batch 128 — and the bytes the reader pulled from the store in
that epoch, against the size of one view: an epoch must read its own view and nothing else,
however many views the store holds.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from logitcache.dump import DumpConfig, dump
from logitcache.store.format import EncodingInfo
from logitcache.store.reader import CacheReader

from ._common import Ctx, Section, SyntheticTeacher, fill_stores, synthetic_spec, table
from .storage import chunk_bytes

BATCH = 128


def _dump_row(ctx: Ctx, what: str, n: int, views: int, classes: int) -> list:
    out = Path(ctx.workdir) / f"scale-dump-{n}-{views}-{classes}.zarr"
    config = DumpConfig(teacher="resnet8", dataset=f"synthetic:n={n},classes={classes},size=32,seed=0", out=str(out),
                        random_init=True, views=views, clean_view=True, encoding="topk", topk=min(10, classes - 1),
                        dtype="fp16", chunk_samples=512, shard_chunks=0, device="cpu", batch_size=256, workers=0,
                        progress=False)
    ctx.quiet()
    result = dump(config)
    pairs = n * (views + 1)
    size = sum(v for k, v in chunk_bytes(out).items() if k not in ("labels", "progress")) / pairs
    shutil.rmtree(out, ignore_errors=True)
    return [what, f"{n:,}", views + 1, classes, f"{result.seconds:.2f} s", f"{1e6 * result.seconds / pairs:.0f} µs",
            f"{size:.1f} B"]


def _read_row(ctx: Ctx, what: str, n: int, views: int, classes: int, enc: EncodingInfo) -> list:
    synth = SyntheticTeacher(classes)
    loc = str(Path(ctx.workdir) / f"scale-read-{n}-{views}-{classes}.zarr")
    spec = synthetic_spec(num_samples=n, num_classes=classes, encoding=enc, views=views - 1, clean=True)
    fill_stores([(loc, spec)], synth.labels(n), synth)
    reader = CacheReader(loc)
    pulled = [0]
    inner = reader.store.read

    def read(*a, **kw):
        out = inner(*a, **kw)
        pulled[0] += out.nbytes
        return out

    reader.store.read = read  # type: ignore[method-assign]
    order = np.random.default_rng(0).permutation(n)
    ctx.quiet()
    t = time.perf_counter()
    for s in range(0, n, BATCH):
        reader.read(1, order[s : s + BATCH])
    seconds = time.perf_counter() - t
    view_bytes = reader.encoding.raw_bytes_per_sample() * n
    reader.close()
    size = sum(v for k, v in chunk_bytes(loc).items() if k not in ("labels", "progress")) / (n * views)
    shutil.rmtree(loc, ignore_errors=True)
    return [what, f"{n:,}", views, classes, enc.describe(), f"{1000 * seconds:.0f} ms", f"{1e9 * seconds / n:.0f} ns",
            f"{pulled[0] / view_bytes:.2f}", f"{size:.1f} B"]


def run(ctx: Ctx) -> Section:
    torch.manual_seed(0)
    dn = ctx.n(1024, 256)
    dump_rows = [_dump_row(ctx, "samples", dn * m, 1, 100) for m in (1, 2, 4)]
    dump_rows += [_dump_row(ctx, "views", dn, v, 100) for v in (3, 7)]
    dump_rows += [_dump_row(ctx, "classes", dn, 1, c) for c in (10, 1000)]
    rn = ctx.n(50_000, 10_000)
    top10 = EncodingInfo(kind="topk", dtype="fp16", k=10)
    read_rows = [_read_row(ctx, "samples", rn * m, 2, 100, top10) for m in (1, 4, 16)]
    read_rows += [_read_row(ctx, "views", rn, v, 100, top10) for v in (8, 32)]
    full = EncodingInfo(kind="full", dtype="fp16")
    read_rows += [_read_row(ctx, "classes", rn, 2, c, full) for c in (10, 100, 1000)]
    body = "\n\n".join([
        "Dump (stage-one loop of `dump()`, resnet8 teacher, top-10 fp16; views include the clean view):",
        table(["varying", "samples", "views", "classes", "loop time", "per (view, sample)", "store B/view"], dump_rows),
        "Read (one epoch: whole-view load + every batch read of a shuffled epoch, batch 128; `pulled / view` = "
        "bytes the reader took from the store in the epoch ÷ one view's decoded size):",
        table(["varying", "samples", "views", "classes", "encoding", "epoch read time", "per sample", "pulled / view",
               "store B/view"], read_rows),
        "Linear means a constant per-(view, sample) or per-sample column down each block; `pulled / view` = 1.00 "
        "means no epoch reads more than its own view, however many the store holds. Store size per view is "
        "constant in samples and views, and grows with classes only for full logits (top-k grows with the index "
        "width: uint8 up to 256 classes, int16 beyond).",
    ])
    return Section("5. Scaling", body)
