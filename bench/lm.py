"""12. Language models: a token dump against bare teacher forwards over the same tokens, and a
cached-KD student step against a CE step, on the shipped book and tiny causal LMs.

The dump is the library call (``dump(DumpConfig(teacher="hf:...", dataset="text:botchan",
seq_len=L, topk=K))``): tokenisation and fingerprint, store creation, the teacher's forwards over
every packed sequence, top-k selection, encoding, chunk writes and the test-split evaluation.
The bare loop runs the same forwards (the same sequences in the same batches: whole sequences
per block, as the dump feeds them), then the test split, and nothing else. The step comparison is
benchmark 1's lockstep harness on the token loop (``train._train_epoch``, rows = positions):
CE, KD from the top-k cache just dumped, and KD with the teacher online.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig
from logitcache.store.format import Layout
from logitcache.store.reader import CacheReader
from logitcache.teacher import build_teacher

from ._common import Ctx, Section, fmt_ms, median, spread, table
from .dump_cost import TARGET as DUMP_TARGET
from .dump_cost import _bare, profile_dump, time_dumps
from .train_step import _Lockstep, _loss_seconds, _Mode, _rebuild_seconds

TEACHER, DATASET = "hf:tiny-teacher", "text:botchan"
# The shipped student (0.15 M parameters) and a student the teacher's size (0.79 M): the (rows, V)
# work a cached KD step adds is the same for both, the student's own step is not.
STUDENTS = ("hf:tiny-student", "hf:tiny-teacher")
SEQ_LEN, TOPK, DUMP_BATCH, STEP_BATCH = 128, 16, 32, 16
STEP_TARGET = 1.05
MODES = ("ce", f"kd top-{TOPK} cache", "kd online")


def _dump_inputs(config: DumpConfig, train_set, device: torch.device) -> list[torch.Tensor]:
    """The (B, L) input ids of every batch the dump feeds its teacher: whole sequences per block."""
    per = train_set.rows_per_item
    layout = Layout(chunk_samples=config.chunk_samples, shard_chunks=0)
    rows = len(train_set.labels)
    out = []
    for b in range(layout.num_blocks(rows)):
        block = layout.block_range(b, rows)
        items = np.arange(block.start // per, block.stop // per)
        for s in range(0, len(items), config.batch_size):
            out.append(train_set.inputs(items[s : s + config.batch_size]).to(device))
    return out


def _steps(ctx: Ctx, student: str, teacher: torch.nn.Module, cache: Path, vocab: int, steps: int, warmup: int,
           repeats: int) -> tuple[dict[str, tuple[float, float, int]], float, float, float]:
    """Lockstep epochs of CE, cached KD and online KD for one student: per mode (median step,
    spread, n), the paired cached/CE and online/cached ratios, and the median read."""
    reader = CacheReader(cache)
    train_set = open_dataset(DATASET, "train", model=student, seq_len=SEQ_LEN)
    modes = [_Mode(m, student, TEACHER, teacher if m == "kd online" else None, reader if "cache" in m else None,
                   train_set, DATASET, ctx.device, num_classes=vocab, seq_len=SEQ_LEN, batch_size=STEP_BATCH,
                   items=steps * STEP_BATCH) for m in MODES]
    lockstep = _Lockstep(len(modes), ctx.device)

    def epochs() -> list:
        return [lambda hook, m=m: m.epoch(train_set, train_set.train_view, hook) for m in modes]

    lockstep.run(epochs(), steps)  # untimed: first-use allocations stay out
    modes[1].reads.calls.clear()
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        ctx.quiet()
        for mode, d in zip(modes, lockstep.run(epochs(), steps)):
            times[mode.name] += d[warmup:]
    reader.close()

    def paired(a: str, b: str) -> float:
        return median([x / y for x, y in zip(times[a], times[b])])

    med = {m: (median(times[m]), spread(times[m]), len(times[m])) for m in MODES}
    return med, paired(MODES[1], "ce"), paired("kd online", MODES[1]), median(modes[1].reads.calls)


def run(ctx: Ctx) -> Section:
    repeats, steps, warmup = ctx.n(3, 1), ctx.n(14, 5), 2
    device = ctx.device
    train_set = open_dataset(DATASET, "train", model=TEACHER, seq_len=SEQ_LEN)
    test_set = open_dataset(DATASET, "test", model=TEACHER, seq_len=SEQ_LEN)
    vocab = train_set.num_classes
    chunk = SEQ_LEN * 32
    base = DumpConfig(teacher=TEACHER, random_init=True, dataset=DATASET, seq_len=SEQ_LEN, out="", encoding="topk",
                      topk=TOPK, chunk_samples=chunk, batch_size=DUMP_BATCH, device=str(device), workers=0,
                      progress=False)
    teacher = build_teacher(TEACHER, vocab, checkpoint=None, random_init=True, seed=0, device=device)
    stage_one = _dump_inputs(base, train_set, device)
    evaluation = [test_set.inputs(np.arange(s, min(s + DUMP_BATCH, len(test_set)))).to(device)
                  for s in range(0, len(test_set), DUMP_BATCH)]
    _bare(teacher, stage_one[:2])  # warm-up

    times = time_dumps(ctx, base, teacher, stage_one, evaluation, repeats, "lm-dump", keep_last=True)
    cache = Path(ctx.workdir) / f"lm-dump-{repeats - 1}.zarr"
    ratio_all, ratio_stage = times.ratios
    tokens = len(train_set.labels)
    dump_rows, dump_detail = times.tables(DUMP_TARGET)

    # Steps: CE, KD from the cache above, KD with the teacher online, for two student sizes.
    rows = STEP_BATCH * SEQ_LEN
    extra_loss = (_loss_seconds("kd", device, reps=ctx.n(40, 10), rows=rows, classes=vocab)
                  - _loss_seconds("ce", device, reps=ctx.n(40, 10), rows=rows, classes=vocab))
    rebuild = _rebuild_seconds(device, k=TOPK, reps=ctx.n(40, 10), rows=rows, classes=vocab)
    step_rows, detail_rows = [], []
    for student in STUDENTS:
        med, cached, online, read = _steps(ctx, student, teacher, cache, vocab, steps, warmup, repeats)
        bottom_up = (med["ce"][0] + read + extra_loss + rebuild) / med["ce"][0]
        step_rows.append([f"{student} ← {TEACHER}", f"{cached:.3f}", f"{bottom_up:.3f}",
                          "met" if min(cached, bottom_up) <= STEP_TARGET else "MISSED", f"{online:.3f}"])
        detail_rows += [[student if m == "ce" else "", m, fmt_ms(t), f"{sp:.1f} %", n] for m, (t, sp, n) in med.items()]
        detail_rows.append(["", "`CacheReader.read` of a batch's rows", fmt_ms(read), "", ""])
    detail_rows += [["", "KD loss minus CE loss, forward + backward (timed alone)", fmt_ms(extra_loss), "", ""],
                    ["", f"top-{TOPK} rebuild of the batch's (rows, V) logits (timed alone)", fmt_ms(rebuild), "", ""]]
    step_detail = table(["student", "mode / part", "median", "spread", "n"], detail_rows)
    body = [
        f"Teacher `{TEACHER}` and students `{'`, `'.join(STUDENTS)}` (the shipped config-only Llama folders, random "
        f"init: speed does not depend on the weights), vocabulary {vocab:,}; `{DATASET}` packed into {len(train_set)} training "
        f"sequences of {SEQ_LEN} tokens ({tokens:,} token rows); {ctx.device}, {torch.get_num_threads()} torch "
        f"thread(s); {repeats} alternating repeats.",
        f"**Token dump vs bare teacher forwards** (top-{TOPK}, chunks of {chunk // SEQ_LEN} sequences, batch "
        f"{DUMP_BATCH} sequences; {len(stage_one)} + {len(evaluation)} forward batches):",
        table(["comparison", "dump", "bare forwards", "bare / dump", f"target ≥ {DUMP_TARGET}"], dump_rows),
        dump_detail,
        f"**Student step: cached KD vs CE** (`train._train_epoch` in lockstep as in 1., batch {STEP_BATCH} "
        f"sequences = {STEP_BATCH * SEQ_LEN:,} token rows, {steps} steps an epoch of which the first {warmup} "
        f"are dropped, KD at its defaults from the top-{TOPK} cache dumped above):",
        table(["student ← teacher", "cached KD / CE step (side by side)", "bottom-up", f"target ≤ {STEP_TARGET}",
               "online / cached KD step"], step_rows),
        "Bottom-up: the CE step plus what a cached KD step adds to it, each part timed alone at the step's shape "
        f"({rows:,} rows × V = {vocab:,}): the median read of the run, the KD loss's extra forward + backward and the "
        "top-k rebuild of the full distribution. That (rows, V) work is the same for every student; its share of "
        "the step shrinks as the student grows (the second row).",
        step_detail,
    ]
    if min(ratio_all, ratio_stage) < DUMP_TARGET:
        body += profile_dump(replace(base, out=str(Path(ctx.workdir) / "lm-dump-profile.zarr")),
                             "the teacher's layers are the torch `linear` / attention lines")
    return Section("12. Language models: token dump and student step", "\n\n".join(body))
