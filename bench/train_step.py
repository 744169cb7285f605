"""1. Training step cost: CE only vs KD from a full fp16 cache vs KD from a top-10 cache vs KD
with the teacher online, for the same student, the same batches and the same device.

Each mode runs the real loop, ``logitcache.train._train_epoch`` (replayed augmentation of each
(view, sample) from its stored seed, ``CacheReader.read`` → ``TeacherView`` → ``kd`` → backward
→ SGD step), over one epoch of a CIFAR-100-shaped in-memory dataset (32×32, 100 classes,
batch 64), every epoch from the same student weights. All modes run their epochs at once in
threads that take turns step by step (``_Lockstep``), so that the shared machine's drifts hit
them alike; a step's time runs from the mode getting its turn to its ``optimizer.step()``
returning, so it holds everything the loop does for one batch. The first steps of every epoch
are warm-up and dropped. The teacher's forward passes inside the online steps are timed too,
for the ideal online/cached ratio (teacher forward + CE step) / CE step, and the extra work of a
cached step (read, KD loss, top-k rebuild) is timed alone for a noise-free bottom-up ratio.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from logitcache.datasets import open_dataset
from logitcache.methods import get_method, resolve_hparams
from logitcache.models import create_model
from logitcache.precision import Compute
from logitcache.store.format import DatasetInfo, EncodingInfo
from logitcache.store.reader import CacheReader
from logitcache.train import TrainConfig, _train_epoch, _Views
from logitcache.views import ViewSpec

from ._common import Ctx, Section, SyntheticTeacher, fill_store, fmt_ms, median, spread, synthetic_spec, table

PAIRS = (("resnet8x4", "resnet32x4"), ("resnet20", "resnet110"))
BATCH = 64
CACHES = {"kd full fp16": EncodingInfo(kind="full", dtype="fp16"),
          "kd top-10 fp16": EncodingInfo(kind="topk", dtype="fp16", k=10)}
MODES = ("ce", *CACHES, "kd online")


class _Lockstep:
    """Runs one epoch of every mode at once, in threads that take turns step by step.

    Each mode's ``optimizer.step`` is wrapped: after the step it records the time since the mode
    got its turn, hands the turn on and waits for its own again. Cycle k runs every mode's step k,
    in an order rotated by one each cycle (a step can pay for the caches its predecessor evicted,
    so no mode always follows the same one): slow drifts of the machine hit every mode alike, and
    only one thread works at a time (the others wait on a condition, using no CPU).
    """

    def __init__(self, count: int, device: torch.device) -> None:
        self.count, self.position, self.failed = count, 0, False
        self.cond = threading.Condition()
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @property
    def turn(self) -> int:
        cycle, slot = divmod(self.position, self.count)
        return (slot + cycle) % self.count

    def wait(self, i: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == i or self.failed)
        if self.failed:
            raise RuntimeError("another mode failed")

    def hand_on(self) -> None:
        with self.cond:
            self.position += 1
            self.cond.notify_all()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def run(self, epochs: list, steps: int) -> list[list[float]]:
        """Run ``epochs[i](optimizer_hook)`` for every mode i in lockstep; step durations per mode."""
        durations: list[list[float]] = [[] for _ in epochs]
        errors: list[BaseException] = []
        self.position, self.failed = 0, False

        def worker(i: int) -> None:
            state = {"start": 0.0, "done": 0}

            def after_step() -> None:
                self.sync()
                durations[i].append(time.perf_counter() - state["start"])
                state["done"] += 1
                self.hand_on()
                if state["done"] < steps:
                    self.wait(i)
                    state["start"] = time.perf_counter()

            try:
                self.wait(i)
                state["start"] = time.perf_counter()
                epochs[i](after_step)
            except BaseException as e:  # noqa: BLE001  (re-raised in the calling thread)
                errors.append(e)
                self.fail()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(epochs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return durations


class _Timed:
    """Wraps a callable attribute of an object to record the duration of every call (on a GPU,
    with the device synchronised around it, so that the time is the work's and not its launch's)."""

    def __init__(self, owner: object, attr: str, device: torch.device = torch.device("cpu")) -> None:
        self.calls: list[float] = []
        inner = getattr(owner, attr)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def call(*args, **kwargs):
            sync()
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            sync()
            self.calls.append(time.perf_counter() - t)
            return out

        setattr(owner, attr, call)


class _Mode:
    """One training configuration: its method, its reader (cached modes) or teacher (online)."""

    def __init__(self, name: str, student_name: str, teacher_name: str, teacher: torch.nn.Module | None,
                 reader: CacheReader | None, train_set, dataset_name: str, device: torch.device, *,
                 num_classes: int = 100, seq_len: int | None = None, batch_size: int = BATCH,
                 items: int | None = None) -> None:
        self.name, self.device = name, device
        torch.manual_seed(0)  # the same initial student in every mode
        self.model = create_model(student_name, num_classes=num_classes).to(device)
        self.start = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        inner = self.optimizer.step
        self.hook = lambda: None

        def step(*args, **kwargs):
            out = inner(*args, **kwargs)
            self.hook()
            return out

        self.optimizer.step = step  # type: ignore[method-assign]
        method = "ce" if name == "ce" else "kd"
        self.loss_fn = get_method(method).fn
        self.hparams = resolve_hparams(method, preset="auto", teacher=teacher_name, student=student_name)
        self.reader, self.teacher = reader, teacher
        # The epoch's items (the first ``items``, so that an epoch is the steps the lockstep expects).
        self.samples = np.arange(len(train_set) if items is None else items)
        text = seq_len is not None  # one clean view of token rows, nothing to augment
        self.config = TrainConfig(student=student_name, dataset=dataset_name, out="-", method=method,
                                  batch_size=batch_size, epochs=1, views=None if text else 1, seq_len=seq_len, workers=0, progress=False)
        # Without a cache, train() derives view 1's seeds as the dump did: the same pairs.
        self.views = _Views(len(train_set), reader, self.config, augmented=not text)
        self.reads = _Timed(reader, "read") if reader is not None else None
        # The teacher's own forward passes inside the online steps, for the ideal ratio.
        self.forwards = _Timed(teacher, "forward", device) if teacher is not None else None
        if reader is not None:
            reader.prefetch(1)  # as train() does for the coming epoch's view

    def epoch(self, train_set, view_spec: ViewSpec, hook) -> None:
        """One epoch of the real loop from the initial weights (epoch 1 every time: the same batches)."""
        self.model.load_state_dict(self.start)
        self.optimizer.state.clear()
        self.hook = hook
        epoch_views = self.views.for_epoch("cycle", 1, self.config.seed)
        compute = Compute()  # fp32, contiguous: train()'s default
        _train_epoch(self.model, self.loss_fn, self.hparams, train_set, self.samples, view_spec,
                     self.views, epoch_views, self.reader, self.teacher, self.config, 1, self.optimizer,
                     compute.scaler(), compute, self.device, 0, 1, None)  # every sample labelled


def _loss_seconds(method: str, device: torch.device, reps: int = 300, rows: int = BATCH, classes: int = 100) -> float:
    """Median forward + backward time of a method's loss alone on (rows, classes) logits: the part of
    the KD step that CE does not have, besides the read (measured bottom-up, free of the machine's noise)."""
    from logitcache.teacher_view import TeacherView

    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(rows, classes, generator=g).to(device).requires_grad_()
    z_t = (3 * torch.randn(rows, classes, generator=g)).to(device)
    y = torch.randint(0, classes, (rows,), generator=g).to(device)
    fn, hp = get_method(method).fn, resolve_hparams(method)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        sum(fn(z_s, TeacherView.from_logits(z_t, y) if method != "ce" else None, y, epoch=1, **hp).values()).backward()
        sync()
        out.append(time.perf_counter() - t)
    return median(out[reps // 5 :])


def _rebuild_seconds(device: torch.device, k: int = 10, reps: int = 300, rows: int = BATCH, classes: int = 100) -> float:
    """Median time of the top-k rebuild (``TeacherView.logits``) of a (rows, classes) batch."""
    from logitcache.teacher_view import TeacherView

    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(rows, classes, generator=g)
    y = torch.randint(0, classes, (rows,), generator=g)
    values, indices = z.topk(k, dim=1)
    args = [t.to(device) for t in (values, indices, z.logsumexp(dim=1), z.gather(1, y[:, None])[:, 0], y)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        TeacherView.from_topk(*args, classes).logits  # noqa: B018
        sync()
        out.append(time.perf_counter() - t)
    return median(out[reps // 5 :])


def run(ctx: Ctx) -> Section:
    steps, warmup = ctx.n(12, 5), 2
    rounds = {"resnet8x4": ctx.n(3, 1), "resnet20": ctx.n(4, 1)}
    n = BATCH * steps
    dataset_name = f"synthetic:n={n},classes=100,size=32,seed=0"
    train_set = open_dataset(dataset_name, "train")
    view_spec = train_set.train_view
    stores: dict[str, Path] = {}
    synth = SyntheticTeacher(100)
    for name, enc in CACHES.items():
        stores[name] = Path(ctx.workdir) / f"train-{name.replace(' ', '-')}.zarr"
        spec = synthetic_spec(num_samples=n, num_classes=100, encoding=enc, views=1,
                              dataset=DatasetInfo(**train_set.describe()), augmentation=view_spec)
        fill_store(stores[name], spec, train_set.labels, synth)

    rows, detail_rows = [], []
    extra_loss = _loss_seconds("kd", ctx.device) - _loss_seconds("ce", ctx.device)
    rebuild = _rebuild_seconds(ctx.device)
    for student, teacher_name in PAIRS:
        torch.manual_seed(0)
        teacher = create_model(teacher_name, num_classes=100).to(ctx.device).eval()
        modes = [_Mode(m, student, teacher_name, teacher if m == "kd online" else None,
                       CacheReader(stores[m]) if m in stores else None, train_set, dataset_name, ctx.device) for m in MODES]
        lockstep = _Lockstep(len(modes), ctx.device)

        def epochs() -> list:
            return [lambda hook, m=m: m.epoch(train_set, view_spec, hook) for m in modes]

        lockstep.run(epochs(), steps)  # untimed: first-use allocations and kernel set-up stay out
        for mode in modes:
            for timer in (mode.reads, mode.forwards):
                if timer is not None:
                    timer.calls.clear()
        times: dict[str, list[float]] = defaultdict(list)
        per_round: dict[str, list[float]] = defaultdict(list)
        for _ in range(rounds[student]):
            ctx.quiet()
            for mode, d in zip(modes, lockstep.run(epochs(), steps)):
                times[mode.name] += d[warmup:]
                per_round[mode.name].append(median(d[warmup:]))
        online = modes[MODES.index("kd online")]
        # Forward k belongs to step k; keep those of the steps whose intervals were kept.
        fwd_times = [t for e in range(rounds[student]) for t in online.forwards.calls[e * steps + warmup : (e + 1) * steps]]
        times["teacher forward (in the online steps)"] = fwd_times
        med = {k: median(v) for k, v in times.items()}
        ce, full, topk, on, fwd = (med[k] for k in ("ce", "kd full fp16", "kd top-10 fp16", "kd online",
                                                     "teacher forward (in the online steps)"))
        ideal = (fwd + ce) / ce

        def paired(a: str, b: str) -> float:
            """Median of per-step ratios of two modes (their steps k ran back to back)."""
            return median([x / y for x, y in zip(times[a], times[b])])

        r_full, r_topk = paired("kd full fp16", "ce"), paired("kd top-10 fp16", "ce")
        o_full, o_topk = paired("kd online", "kd full fp16"), paired("kd online", "kd top-10 fp16")

        def rr(a: str, b: str) -> str:
            per = [x / y for x, y in zip(per_round[a], per_round[b])]
            return f"{min(per):.3f}–{max(per):.3f}" if len(per) > 1 else "-"

        for m in (*MODES, "teacher forward (in the online steps)"):
            mode = next((md for md in modes if md.name == m), None)
            reads = mode.reads.calls if mode is not None and mode.reads is not None else None
            detail_rows.append([student if m == "ce" else "", teacher_name if m.startswith("teacher") else "", m,
                                fmt_ms(med[m]), f"{spread(times[m]):.1f} %", len(times[m]),
                                "-" if reads is None else f"{1e6 * median(reads):.0f} µs"])
        bottom_up = {m: (ce + median(md.reads.calls) + extra_loss + (rebuild if "top" in m else 0.0)) / ce
                     for m in CACHES for md in modes if md.name == m}
        ok = max(r_full, r_topk) <= 1.05 and min(o_full, o_topk) >= 0.95 * ideal
        rows.append([f"{student} ← {teacher_name}", f"{r_full:.3f} ({rr('kd full fp16', 'ce')})",
                     f"{r_topk:.3f} ({rr('kd top-10 fp16', 'ce')})",
                     f"{bottom_up['kd full fp16']:.4f} / {bottom_up['kd top-10 fp16']:.4f}",
                     f"{o_full:.3f} / {o_topk:.3f}", f"{ideal:.3f}",
                     f"{o_full / ideal:.3f} / {o_topk / ideal:.3f}", "met" if ok else "MISSED"])
        ctx.shared.setdefault("student_rate", {})[student] = BATCH / full  # samples/s consumed from a cache
        for mode in modes:
            if mode.reader is not None:
                mode.reader.close()
    body = "\n\n".join([
        f"Student and teacher at random initialisation (speed does not depend on the weights); every mode "
        f"starts each epoch from the same student weights; "
        f"batch {BATCH}, 32×32×3, 100 classes, crop 32 pad 4 + flip replayed from stored seeds, "
        f"KD (T = 4, mdistiller weights), SGD momentum 0.9; {ctx.device}, {torch.get_num_threads()} torch thread(s). "
        f"Each mode runs `train._train_epoch` over {steps} steps per epoch, all modes at once in threads that "
        f"take turns step by step (`_Lockstep`: one works, the others wait), so that the machine's drifts hit "
        f"every mode alike; a step is the time from a mode getting its turn to its `optimizer.step()` "
        f"returning; the first {warmup} of each epoch are dropped, and one untimed epoch runs first "
        f"(timed epochs: {', '.join(f'{s} {r}' for s, r in rounds.items())}). Caches: "
        "synthetic teacher-like logits (see 4.) in stores made by `bench/_common.fill_store`; the teacher "
        "forward is timed inside the online steps.",
        table(["student ← teacher", "cached/CE full fp16 (per-round range)", "cached/CE top-10 (range)",
               "bottom-up cached/CE (full / top-10)", "online/cached (full / top-10)", "ideal online/cached", "online/cached ÷ ideal", "targets"], rows),
        "Ratios are medians of per-step ratios (mode A's step k against mode B's step k, run back to back), "
        "with the range of the per-epoch ratios of medians in brackets; the ideal uses the median teacher forward "
        "and CE step. "
        "Targets: cached/CE ≤ 1.05; online/cached ≥ 0.95 × ideal, where ideal = (teacher forward + CE step) / CE step. "
        "Side-by-side step ratios carry the shared machine's noise (a few %, see the per-round ranges); the "
        "bottom-up column adds to the CE step only what a cached KD step does on top of it — the median "
        f"`CacheReader.read` of the run, the KD loss's extra forward + backward ({1e6 * extra_loss:.0f} µs, "
        f"timed alone) and for top-10 the rebuild of the full distribution ({1e6 * rebuild:.0f} µs) — and is the "
        "figure to trust below a few percent.",
        "Per-step medians (spread = interquartile range / median; `read` = median `CacheReader.read` call: "
        "gather from the in-memory view slice + decode to a `TeacherView`):",
        table(["student", "teacher", "mode", "median step", "spread", "n steps", "read"], detail_rows),
    ])
    return Section("1. Training step cost", body)
