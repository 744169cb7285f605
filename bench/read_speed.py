"""3. Reader: random-access batched reads (a shuffled epoch, batch 128) in samples/s, and how
that compares with the student's consumption rate measured in benchmark 1.

Stores are filled with synthetic teacher-like logits (``_common.SyntheticTeacher``) through
``ZarrStore.create`` + the encodings + ``write_block``: CIFAR-100-shaped (50,000 × 100 classes;
full fp32, full fp16, top-10 fp16, top-10 q8) and ImageNet-shaped (1,281,167 × 1,000 classes,
top-10 fp16 and q8, sharded as ``dump`` shards above 262,144 samples). For each store:

- *view load*: ``CacheReader`` reading one whole view slice into memory (sequential chunk reads +
  decompression + checksums), what happens once per epoch;
- *epoch reads*: every ``CacheReader.read(view, batch)`` of a shuffled epoch with the view slice
  in memory (gather + decode into a ``TeacherView``), and the same followed by
  ``TeacherView.logits`` (the top-k rebuild a method triggers; on a GPU it runs there);
- *prefetch overlap*: the next view's load started with ``prefetch`` at the start of an epoch
  while the main thread does CPU-bound torch work (a stand-in for training); the fraction of the
  load hidden = 1 − (extra time of the work + stall at the first read of the next view) / load;
- *from chunks*: the same batches read row-wise straight from the chunks (the fallback when a
  view exceeds the memory budget), a few batches only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from logitcache.store.format import EncodingInfo
from logitcache.store.reader import CacheReader

from ._common import Ctx, Section, SyntheticTeacher, fill_stores, fmt_ms, fmt_rate, median, spread, synthetic_spec, table

BATCH = 128
LOGITS_SAMPLES = 100_000
TARGET = 20.0
CIFAR = [("full fp32", EncodingInfo(kind="full", dtype="fp32")), ("full fp16", EncodingInfo(kind="full", dtype="fp16")),
         ("top-10 fp16", EncodingInfo(kind="topk", dtype="fp16", k=10)), ("top-10 q8", EncodingInfo(kind="topk", dtype="q8", k=10))]
IMAGENET = [("top-10 fp16", EncodingInfo(kind="topk", dtype="fp16", k=10)),
            ("top-10 q8", EncodingInfo(kind="topk", dtype="q8", k=10))]


def _epoch(reader: CacheReader, view: int, order: np.ndarray, logits: bool) -> float:
    t = time.perf_counter()
    for s in range(0, len(order), BATCH):
        tv = reader.read(view, order[s : s + BATCH])
        if logits:
            tv.logits  # noqa: B018  (the rebuild is the point)
    return time.perf_counter() - t


def _student_work(seconds: float) -> Callable[[], object]:
    """CPU-bound stand-in for training: resnet20 forward/backward/SGD steps at batch 32 (hundreds
    of torch ops a step, each releasing and re-taking the GIL), enough of them for ``seconds``."""
    from logitcache.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 100, (32,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    reps = max(4, round(seconds / min(_time(step) for _ in range(3))))
    return lambda: [step() for _ in range(reps)]


def _overlap(ctx: Ctx, location: str, view_a: int, view_b: int, load: float, trials: int) -> tuple[float, float, float]:
    """(fraction of view_b's load hidden, stall at its first read, extra time of the work).

    Each trial: the work alone, then a fresh reader with view_a in memory ("this epoch") that
    calls ``prefetch(view_b)`` and runs the same work, then reads view_b (the stall).
    """
    work = _student_work(max(0.5, 3 * load))
    extras, stalls = [], []
    for _ in range(trials):
        ctx.quiet()
        alone = _time(work)
        reader = CacheReader(location, check=False)
        try:
            reader.read(view_a, np.arange(4))
            reader.prefetch(view_b)
            busy = _time(work)
            stalls.append(_time(lambda: reader.read(view_b, np.arange(4))))
        finally:
            reader.close()
        extras.append(busy - alone)
    extra, stall = median(extras), median(stalls)
    return 1.0 - min(1.0, max(0.0, extra + stall) / load), stall, extra


_CHILD = """
import sys, time
from logitcache.store.reader import CacheReader
r = CacheReader(sys.argv[1], check=False)
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
r._load(int(sys.argv[2]))
print(time.perf_counter() - t, flush=True)
"""


def _overlap_other_process(ctx: Ctx, location: str, view: int, load: float, trials: int) -> tuple[float, float]:
    """(extra time of the work, load time) when the same view load runs in another process:
    the CPU contention alone, without the GIL that a loader thread shares with training."""
    import subprocess
    import sys

    work = _student_work(max(0.5, 3 * load))
    extras, loads = [], []
    for _ in range(trials):
        ctx.quiet()
        alone = _time(work)
        child = subprocess.Popen([sys.executable, "-c", _CHILD, location, str(view)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        child.stdout.readline()  # imported and opened: only the load is left
        ctx.quiet()
        child.stdin.write("go\n")
        child.stdin.flush()
        busy = _time(work)
        loads.append(float(child.stdout.readline()))
        child.wait()
        extras.append(busy - alone)
    return median(extras), median(loads)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _measure(ctx: Ctx, name: str, location: str, n: int, views: int, repeats: int, chunk_batches: int) -> dict:
    rng = np.random.default_rng(0)
    loads, reads, reads_logits = [], [], []
    for r in range(repeats):
        reader = CacheReader(location, check=r == 0)
        ctx.quiet()
        v = 1 + r % (views - 1) if views > 1 else 0
        t = time.perf_counter()
        reader._slice(v)  # the whole-view read, as the first read of an epoch (or prefetch) does it
        loads.append(time.perf_counter() - t)
        order = rng.permutation(n)
        reads.append(_epoch(reader, v, order, logits=False))
        part = order[:LOGITS_SAMPLES]  # the rebuild's rate per sample does not depend on the epoch size
        reads_logits.append(_epoch(reader, v, part, logits=True) * n / len(part))
        reader.close()
    overlap = _overlap(ctx, location, 1, 0, median(loads), max(3, repeats)) if views > 1 else (float("nan"),) * 3
    chunked = CacheReader(location, check=False, memory_budget=0)
    order = rng.permutation(n)
    t = time.perf_counter()
    for s in range(0, chunk_batches * BATCH, BATCH):
        chunked.read(1 % views, order[s : s + BATCH])
    from_chunks = chunk_batches * BATCH / (time.perf_counter() - t)
    chunked.close()
    return dict(name=name, load=median(loads), load_spread=spread(loads), read=n / median(reads),
                read_spread=spread(reads), read_logits=n / median(reads_logits), overlap=overlap,
                from_chunks=from_chunks, repeats=repeats, chunk_batches=chunk_batches,
                view_mb=CacheReader(location, check=False).encoding.raw_bytes_per_sample() * n / 1e6)


def run(ctx: Ctx) -> Section:
    student_rate = ctx.shared.get("student_rate", {})
    fastest = max(student_rate.values()) if student_rate else float("nan")
    fastest_name = max(student_rate, key=student_rate.get) if student_rate else "?"
    shapes = [
        ("CIFAR-100", ctx.n(50_000, 10_000), 100, 2, CIFAR, ctx.n(5, 2)),
        ("ImageNet", ctx.n(1_281_167, 131_072), 1000, 2, IMAGENET, ctx.n(2, 1)),
    ]
    rows, fill_notes, process_note = [], [], ""
    for shape, n, classes, views, encodings, repeats in shapes:
        synth = SyntheticTeacher(classes)
        labels = synth.labels(n)
        targets = [(str(Path(ctx.workdir) / f"read-{shape}-{name.replace(' ', '-')}.zarr"),
                    synthetic_spec(num_samples=n, num_classes=classes, encoding=enc, views=views - 1, clean=True))
                   for name, enc in encodings]
        t = time.perf_counter()
        fill_stores(targets, labels, synth)
        layout = targets[0][1].layout
        fill_notes.append(f"{shape}: {n:,} samples × {views} views filled in {time.perf_counter() - t:.0f} s "
                          f"(chunks of {layout.chunk_samples}" + (f", shards of {layout.shard_chunks} chunks" if layout.shard_chunks else "")
                          + ", blosc-zstd-5 shuffle + crc32c)")
        if shape == "ImageNet":
            from .storage import chunk_bytes

            ctx.shared["imagenet_store_bytes"] = "; ".join(
                f"{name} {sum(v for k, v in chunk_bytes(loc).items() if k not in ('labels', 'progress')) / (n * views):.2f} B/view"
                for (name, _), (loc, _) in zip(encodings, targets))
        for (name, _), (loc, _) in zip(encodings, targets):
            m = _measure(ctx, name, loc, n, views, repeats, chunk_batches=ctx.n(20, 5) if classes <= 100 else ctx.n(3, 2))
            frac, stall, extra = m["overlap"]
            frac_extra = (frac, extra)
            rows.append([
                shape, name, f"{m['view_mb']:.1f} MB", f"{fmt_ms(m['load'])} ({fmt_rate(n / m['load'])})",
                f"{100 * m['load'] * fastest / n:.3f} %" if fastest == fastest else "-",
                f"{fmt_rate(m['read'])} ± {m['read_spread']:.0f} %", fmt_rate(m["read_logits"]),
                f"{m['read'] / fastest:,.0f}×" if fastest == fastest else "-",
                f"{100 * frac:.0f} % (stall {fmt_ms(stall)}, work {1000 * extra:+.1f} ms)",
                f"{fmt_rate(m['from_chunks'])} ({m['chunk_batches']} batches)", m["repeats"],
            ])
            if shape == "ImageNet" and name == "top-10 fp16":
                extra, load = _overlap_other_process(ctx, loc, 0, m["load"], ctx.n(3, 1))
                process_note = (
                    f"Prefetch thread vs another process: zarr decodes in its own event-loop thread, much of it Python "
                    f"holding the GIL that the training thread also needs between torch ops. The same ImageNet top-10 "
                    f"fp16 view load ({fmt_ms(load)}) run in *another process* (no shared GIL, CPU contention only) "
                    f"slowed the same training work by {1000 * extra:+.0f} ms, against {1000 * frac_extra[1]:+.0f} ms "
                    f"from the reader's prefetch thread (medians of {ctx.n(3, 1)} trials each).")
            ratio = m["read"] / fastest
            ctx.shared.setdefault("read_ratio", {})[f"{shape} {name}"] = ratio
    body = "\n\n".join([
        f"Shuffled epoch of one view, batch {BATCH}, CPU, {torch.get_num_threads()} torch threads. "
        + "; ".join(fill_notes) + ". "
        + f"Student consumption rate from benchmark 1: {fmt_rate(fastest)} ({fastest_name} from a full fp16 "
          "cache, the fastest student, on this CPU).",
        table(["shape", "encoding", "view in memory", "view load (sequential)", "load ÷ student's epoch",
               "epoch reads (± spread)",
               "reads + `.logits`", f"reads ÷ student (target ≥ {TARGET:.0f}×)", "prefetch hidden",
               "from chunks (no memory)", "n epochs"], rows),
        "`view load` is the once-per-epoch cost, and `load ÷ student's epoch` what it is worth against an epoch "
        "of the fastest student; `epoch reads` is the per-batch gather + decode over a whole epoch (`+ .logits`: "
        f"measured on {LOGITS_SAMPLES:,} samples of it); `prefetch hidden` 100 % would mean the next view's "
        "load cost the training thread nothing, `work` is how much longer the stand-in training work took "
        "while the load ran in the background thread.",
        process_note,
    ])
    return Section("3. Reader", body)
