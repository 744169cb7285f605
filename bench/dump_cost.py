"""2. Dump cost: ``logitcache.dump`` end to end vs a bare loop of teacher forwards over the same
pre-augmented batches.

The bare loop runs exactly the forwards a dump runs, at the dump's batch size: every batch of
every (view, block) of the store, and the clean test split that ``finalize`` evaluates the
teacher on. Its images are augmented beforehand, outside the timing. The dump is the library
call a user makes (``dump(DumpConfig(...))``): teacher build, dataset fingerprint, weight hash,
store creation, seeded augmentation, forwards, encoding, background chunk writes with their
markers, the completeness check and the test-set evaluation. The two alternate, a fresh store
each time. When the ratio falls short of the target a cProfile of one dump is printed below.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.loader import ViewBatch, augmented_batches, clean_batches
from logitcache.store.format import Layout
from logitcache.teacher import build_teacher
from logitcache.views import view_seeds

from ._common import Ctx, Section, fmt_ms, median, spread, table

TARGET = 0.9


def _dump_batches(config: DumpConfig, n: int) -> list[ViewBatch]:
    """The (view, block, batch) sequence ``dump._run`` feeds the teacher."""
    layout = Layout(chunk_samples=config.chunk_samples, shard_chunks=config.shard_chunks or 0)
    out = []
    for v in range(config.views + int(config.clean_view)):
        for b in range(layout.num_blocks(n)):
            idx = np.arange(layout.block_range(b, n).start, layout.block_range(b, n).stop)
            seeds = view_seeds(config.seed, v, idx)
            for s in range(0, len(idx), config.batch_size):
                sl = slice(s, s + config.batch_size)
                out.append(ViewBatch(samples=idx[sl], seeds=seeds[sl], clean=np.full(len(idx[sl]), config.clean_view and v == 0)))
    return out


def _bare(teacher: torch.nn.Module, images: list[torch.Tensor]) -> float:
    sync = torch.cuda.synchronize if images[0].device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for x in images:
            teacher(x).float()
    sync()
    return time.perf_counter() - t


@dataclass
class DumpTimes:
    """Alternating repeats of a dump and of the bare forwards it runs: seconds per repeat."""

    walls: list[float] = field(default_factory=list)  # dump() end to end
    loops: list[float] = field(default_factory=list)  # its stage-one loop (DumpResult.seconds)
    teacher: list[float] = field(default_factory=list)  # forward + encode in that loop (teacher_seconds)
    bare_stage: list[float] = field(default_factory=list)  # bare forwards of stage one
    bare_all: list[float] = field(default_factory=list)  # the same plus the test split finalize evaluates

    @property
    def ratios(self) -> tuple[float, float]:
        """bare / dump: end to end, and of the stage-one loop alone."""
        return median(self.bare_all) / median(self.walls), median(self.bare_stage) / median(self.loops)

    def tables(self, target: float) -> tuple[list[list], str]:
        """The comparison rows against ``target`` and the detail table of the medians and spreads."""
        ratio_all, ratio_stage = self.ratios
        wall, loop = median(self.walls), median(self.loops)
        rows = [
            ["`dump()` end to end vs forwards of stage one + test evaluation", fmt_ms(wall),
             fmt_ms(median(self.bare_all)), f"{ratio_all:.3f}", "met" if ratio_all >= target else "MISSED"],
            ["stage-one loop (`DumpResult.seconds`) vs forwards of stage one", fmt_ms(loop),
             fmt_ms(median(self.bare_stage)), f"{ratio_stage:.3f}", "met" if ratio_stage >= target else "MISSED"],
        ]
        n = len(self.walls)
        detail = table(["", "median", "spread (range)", "n"], [
            ["dump() wall", fmt_ms(wall), f"{spread(self.walls):.1f} %", n],
            ["stage-one loop", fmt_ms(loop), f"{spread(self.loops):.1f} %", n],
            ["  of which forward + encode in the loop (`teacher_seconds`)", fmt_ms(median(self.teacher)), "", n],
            ["bare forwards, stage one", fmt_ms(median(self.bare_stage)), f"{spread(self.bare_stage):.1f} %", n],
            ["bare forwards, stage one + test split", fmt_ms(median(self.bare_all)), f"{spread(self.bare_all):.1f} %", n],
        ])
        return rows, detail


def time_dumps(ctx: Ctx, base: DumpConfig, teacher: torch.nn.Module, stage_one: list[torch.Tensor],
               evaluation: list[torch.Tensor], repeats: int, name: str, *, keep_last: bool = False) -> DumpTimes:
    """Dumps into ``{name}-{r}.zarr`` alternating with the bare forwards, a fresh store each time
    (``keep_last``: the last store stays, for what is measured on it next)."""
    times = DumpTimes()
    for r in range(repeats):
        out = Path(ctx.workdir) / f"{name}-{r}.zarr"
        ctx.quiet()
        t = time.perf_counter()
        result = dump(replace(base, out=str(out)))
        times.walls.append(time.perf_counter() - t)
        times.loops.append(result.seconds)
        times.teacher.append(result.teacher_seconds)
        if not (keep_last and r == repeats - 1):
            shutil.rmtree(out, ignore_errors=True)
        ctx.quiet()
        s = _bare(teacher, stage_one)
        times.bare_stage.append(s)
        times.bare_all.append(s + _bare(teacher, evaluation))
    return times


def profile_dump(config: DumpConfig, teacher_lines: str) -> list[str]:
    """A cProfile of one dump into ``config.out`` (removed afterwards), as report paragraphs."""
    prof = cProfile.Profile()
    prof.runcall(dump, config)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    text = "\n".join(line for line in buf.getvalue().splitlines() if line.strip())
    shutil.rmtree(config.out, ignore_errors=True)
    return [f"cProfile of one dump (top 12 by own time; {teacher_lines}):", "```\n" + text[-4000:] + "\n```"]


def run(ctx: Ctx) -> Section:
    n, repeats = ctx.n(1024, 256), ctx.n(3, 1)
    teacher_name = "resnet110"
    dataset = f"synthetic:n={n},classes=100,size=32,seed=0"
    base = DumpConfig(teacher=teacher_name, dataset=dataset, out="", random_init=True, views=1, clean_view=True,
                      encoding="topk", topk=10, dtype="bf16", chunk_samples=512, shard_chunks=0, device=str(ctx.device),
                      batch_size=256, workers=0, progress=False)
    device = ctx.device  # where the dump runs its teacher, and the bare loop too
    train_set, test_set = open_dataset(dataset, "train"), open_dataset(dataset, "test")
    teacher = build_teacher(teacher_name, 100, checkpoint=None, random_init=True, seed=0, device=device)
    stage_one = [x for _, x in augmented_batches(train_set, train_set.train_view, _dump_batches(base, n), device=device)]
    evaluation = [x for _, x in augmented_batches(test_set, test_set.train_view, clean_batches(test_set, 256), device=device)]
    _bare(teacher, stage_one[:2])  # warm-up

    times = time_dumps(ctx, base, teacher, stage_one, evaluation, repeats, "dump")
    ratio_all, ratio_stage = times.ratios
    rows, detail = times.tables(TARGET)
    body = [
        f"Teacher {teacher_name} (random init), {n} CIFAR-100-shaped samples (`{dataset}`), clean view + 1 "
        f"augmented view, top-10 bf16 (a random-init resnet110 has logits beyond fp16), chunks of 512 ({-(-n // 512)} blocks a view), batch 256, {ctx.device}, "
        f"{torch.get_num_threads()} torch threads; {len(stage_one)} + {len(evaluation)} forward batches. "
        f"{repeats} alternating repeats.",
        table(["comparison", "dump", "bare forwards", "bare / dump", f"target ≥ {TARGET}"], rows),
        detail,
    ]
    if min(ratio_all, ratio_stage) < TARGET or ctx.shared.get("profile_dump"):
        body += profile_dump(replace(base, out=str(Path(ctx.workdir) / "dump-profile.zarr")),
                             "the teacher's convolutions are the torch `_conv_forward` / `conv2d` lines")
    ctx.shared["dump_ratio"] = ratio_all
    return Section("2. Dump cost", "\n\n".join(body))
