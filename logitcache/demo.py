"""``demo``: the whole workflow on the shipped digits, in about three minutes on two CPU cores.

Trains a teacher on every label, dumps its logits over a few seeded views once, then sweeps
students (several methods × several seeds, ``sweep``) that see only a seeded share of the labels
while the cache covers every image: distillation over a transfer set. ``ce`` learns from the
labelled images alone; each KD method also learns from the teacher's targets on the others. The
table gives mean ± sample std over seeds and says which differences it supports. Last it writes
the report of the cache and the runs (``report``, with the report extra installed).

``demo --text`` (:func:`run_text_demo`) is the same workflow for language models: a tiny causal
LM teacher trained on the shipped book, dumped once (top-k at every position), a smaller student
trained from the cache with several methods and once with the teacher online, and their test
perplexities.

Training runs with one torch thread per process (the sweep: cores / jobs): on a shared two-core
machine more threads than free cores made training ten times slower, measured.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import _utils
from .datasets import open_dataset
from .dump import DumpConfig, dump
from .errors import BadInput
from .methods import get_method
from .sweep import Group, Summary, SweepConfig, clearly_apart, run_sweep
from .train import HF_FOLDER, TrainConfig, train

DEMO_MARKER = "demo.json"
SWEEP_DIR, REPORT_DIR, CACHE = "sweep", "report", "cache.zarr"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    out: str = "runs/demo"
    dataset: str = "digits"
    teacher: str = "resnet20"
    student: str = "resnet8"
    teacher_epochs: int = 10
    student_epochs: int = 10
    views: int = 2
    methods: tuple[str, ...] = ("ce", "kd", "dkd")
    seeds: tuple[int, ...] = (0, 1, 2)
    label_fraction: float = 0.1
    jobs: int = 2
    online: tuple[str, ...] = ()  # methods also run once (seed 0) with the teacher online, same views
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class DemoRow:
    run: str
    method: str
    source: str  # "cache", "online" or "labels"
    labels: float  # the share of training labels it saw
    n: int
    best: str  # mean ± std over seeds (or one value)
    last: str
    best_acc: float  # the mean
    last_acc: float
    teacher_forwards_saved: int
    teacher_forwards_run: int


@dataclass
class DemoResult:
    rows: list[DemoRow]
    summary: Summary
    reading: list[str]
    report: str | None  # the report's index.html, or None without matplotlib


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``config.out``: teacher, cache, sweep, report (see the module docstring)."""
    return _in_fresh_out(config, lambda out: _run(config, out, echo))


def _in_fresh_out(config: DemoConfig | TextDemoConfig, run: Callable[[Path], Any]) -> Any:
    """``run(out)`` in an empty ``config.out`` (a previous demo there replaced only with
    ``overwrite``), on one torch thread."""
    out = Path(config.out)
    _utils.check_output_location(out, "--out")
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise BadInput(f"{out} already holds files: pass --overwrite to replace a previous demo, or another --out")
        if not (out / DEMO_MARKER).exists():
            raise BadInput(f"{out} holds files that are not a logitcache demo: choose another --out (nothing was deleted)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _utils.atomic_write_json(out / DEMO_MARKER, {"config": asdict(config), "started": _utils.now()})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(out)
    finally:
        torch.set_num_threads(threads)


def _run(config: DemoConfig, out: Path, echo: Callable[[str], None]) -> DemoResult:
    echo(f"1/4 training teacher {config.teacher} on every label of {config.dataset} "
         f"({_utils.plural(config.teacher_epochs, 'epoch')})")
    taught = train(TrainConfig(student=config.teacher, dataset=config.dataset, out=str(out / "teacher"), method="ce",
                               epochs=config.teacher_epochs, device=config.device, progress=config.progress))
    teacher_ckpt = str(out / "teacher" / "best.pt")
    echo(f"  teacher test accuracy {taught.best_acc:.2f}% (best epoch), {taught.last_acc:.2f}% (last)")

    echo(f"2/4 dumping its logits over {_utils.plural(config.views, 'view')} (+ the clean view) into {CACHE}")
    start = time.perf_counter()
    dumped = dump(DumpConfig(teacher=config.teacher, checkpoint=teacher_ckpt, dataset=config.dataset,
                             out=str(out / CACHE), views=config.views, encoding="full", dtype="fp16",
                             chunk_samples=512, device=config.device, progress=config.progress))
    echo(f"  dumped {dumped.samples_written:,} sample-views in {time.perf_counter() - start:.1f} s")

    echo(f"3/4 sweeping student {config.student}: {', '.join(config.methods)} × seeds "
         f"{','.join(map(str, config.seeds))}, {_utils.plural(config.student_epochs, 'epoch')} each, "
         f"{config.label_fraction:.0%} of the labels, {_utils.plural(config.jobs, 'process', 'processes')} at a time")
    args = ["--epochs", str(config.student_epochs), "--label-fraction", str(config.label_fraction),
            "--device", config.device]
    summary = run_sweep(SweepConfig(student=config.student, dataset=config.dataset, methods=config.methods,
                                    seeds=config.seeds, out=str(out / SWEEP_DIR), cache=str(out / CACHE),
                                    train_args=tuple(args), jobs=config.jobs), echo=lambda m: echo("  " + m))
    rows = [DemoRow(run="teacher", method="ce", source="labels", labels=1.0, n=1, best=f"{taught.best_acc:.2f}",
                    last=f"{taught.last_acc:.2f}", best_acc=taught.best_acc, last_acc=taught.last_acc,
                    teacher_forwards_saved=0, teacher_forwards_run=0)]
    for g in summary.groups:
        rows.append(DemoRow(run=g.label, method=g.method, source="labels" if g.method == "ce" else "cache",
                            labels=config.label_fraction, n=g.n, best=str(g.best), last=str(g.last),
                            best_acc=g.best.mean, last_acc=g.last.mean, teacher_forwards_saved=g.teacher_forwards_saved,
                            teacher_forwards_run=0))
    for method in config.online:
        # The cache's views (same count, the dump's default seed 0), so that it differs from the
        # cached runs only in where the logits come from.
        r = train(TrainConfig(student=config.student, dataset=config.dataset, out=str(out / f"{method}-online"),
                              method=method, epochs=config.student_epochs, label_fraction=config.label_fraction,
                              teacher=config.teacher, teacher_online=True, checkpoint=teacher_ckpt, views=config.views,
                              device=config.device, progress=config.progress))
        rows.append(DemoRow(run=f"{method}-online", method=method, source="online", labels=config.label_fraction, n=1,
                            best=f"{r.best_acc:.2f}", last=f"{r.last_acc:.2f}", best_acc=r.best_acc,
                            last_acc=r.last_acc, teacher_forwards_saved=0, teacher_forwards_run=r.teacher_forwards_run))
    reading = read_table(summary, labelled=round(config.label_fraction * len(open_dataset(config.dataset, "train"))),
                         test_images=len(open_dataset(config.dataset, "test")))
    report = None
    if importlib.util.find_spec("matplotlib") is None:
        echo("4/4 report skipped: it needs matplotlib (pip install 'logitcache[report]')")
    else:
        from .report import write_report

        echo("4/4 writing the report of the cache and the sweep")
        write_report(out / CACHE, out / REPORT_DIR, runs=[out / SWEEP_DIR])
        report = str(out / REPORT_DIR / "index.html")
    _utils.atomic_write_json(out / "demo_results.json", {"rows": [asdict(r) for r in rows], "reading": reading,
                                                          "summary": summary.to_json()})
    return DemoResult(rows=rows, summary=summary, reading=reading, report=report)


def read_table(summary: Summary, *, labelled: int, test_images: int) -> list[str]:
    """What the table supports, pair by pair: a difference of more than two standard errors of the
    difference (over seeds) is called one; anything closer is said to be unresolved."""
    groups = {g.method: g for g in summary.groups}
    base = groups.get("ce")
    lines = []
    others = [g for g in summary.groups if g.method != "ce"]
    if base is not None:
        for g in others:
            lines.append(_compare(g, base, f"{g.method} vs ce"))
    for i, a in enumerate(others):
        for b in others[i + 1 :]:
            lines.append(_compare(a, b, f"{a.method} vs {b.method}"))
    lines.append(f"n = {summary.groups[0].n if summary.groups else 0} seeds each; the test set has {test_images} images "
                 f"(one image is {100 / test_images:.2f} points); best % is selected on the test set (optimistic), "
                 "last % is not. "
                 f"ce learns from ~{labelled} labelled images; the KD methods also learn the teacher's targets on "
                 "the rest: that, not a ranking of KD methods, is what a gap to ce shows.")
    return lines


def _compare(a: Group, b: Group, name: str) -> str:
    diff = a.last.mean - b.last.mean
    apart = clearly_apart(a, b, "last")
    verdict = ("a difference beyond two standard errors: the table supports it" if apart else
               "within two standard errors: the table does not tell them apart")
    return f"{name}: {diff:+.2f} points (last %), {verdict}"


def render_table(rows: list[DemoRow]) -> str:
    head = (f"{'run':<10} {'source':<7} {'labels':>6} {'n':>2} {'best % (mean ± std)':>20} {'last % (mean ± std)':>20} "
            f"{'teacher fwd run':>15} {'teacher fwd saved':>17}")
    body = [f"{r.run:<10} {r.source:<7} {r.labels:>6.0%} {r.n:>2} {r.best:>20} {r.last:>20} "
            f"{r.teacher_forwards_run:>15,} {r.teacher_forwards_saved:>17,}" for r in rows]
    return _table(head, body, [
        "source: where a run's teacher targets came from (labels: none). std: sample standard deviation over seeds",
        "(ddof = 1). best %: the best epoch's test accuracy, selected on the test set (optimistic); last %: the last",
        "epoch's. teacher fwd saved: teacher passes the cache spared, summed over seeds."])


def _table(head: str, body: list[str], notes: list[str]) -> str:
    """The demo's tables: a header, its rule, the rows, then what the columns mean."""
    return "\n".join([head, "-" * len(head), *body, *notes])


# --------------------------------------------------------------------------- demo --text
@dataclass(frozen=True, kw_only=True)
class TextDemoConfig:
    """``demo --text``: a tiny causal LM teacher trained on the shipped book, dumped once (top-k),
    and a smaller student trained from the cache with each method, and once online.

    AdamW (the loop's default for hf: students) at a constant lr with the gradient norm clipped to
    1, on sequences of 64 tokens in batches of 8. Measured on the shipped models (2 cores): SGD
    gave a teacher of perplexity 146 in 5 epochs and KD students worse than ce (NaN at lr 0.1);
    AdamW at lr 3e-3 gives 77 in 6 epochs (in batches of 16, fewer steps: 87; at 5e-3: 98). The
    student trains 2 epochs: there the cached KD and LoCa students beat ce (RKL does not). The
    KD methods run at T = 1, where a top-k cache's probabilities of the stored tokens, the next
    token and the tail's total mass are exact (at other temperatures the rebuilt tail is not);
    the tail itself is flat, which the online run (the teacher's whole distribution) does not
    suffer: measured at 5 student epochs, ce overtook the top-16 cached kd (93 vs 123; top-64:
    102) while kd online stayed ahead (84).
    """

    out: str = "runs/demo-text"
    dataset: str = "text:botchan"
    teacher: str = "hf:tiny-teacher"
    student: str = "hf:tiny-student"
    seq_len: int = 64
    batch_size: int = 8
    teacher_lr: float = 3e-3
    student_lr: float = 3e-3
    clip_grad: float | None = 1.0
    teacher_epochs: int = 6
    student_epochs: int = 2
    topk: int = 16
    methods: tuple[str, ...] = ("ce", "kd", "rkl", "loca")
    online: tuple[str, ...] = ("kd",)
    temperature: float = 1.0
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class TextDemoRow:
    run: str
    method: str
    source: str  # "labels" (the next tokens only), "cache" or "online"
    model: str
    test_loss: float  # next-token cross-entropy on the test split (the book's last tenth), last epoch
    test_ppl: float
    teacher_forwards_run: int
    teacher_forwards_saved: int


def run_text_demo(config: TextDemoConfig, echo: Callable[[str], None] = print) -> list[TextDemoRow]:
    """Run ``demo --text`` into ``config.out`` (see :class:`TextDemoConfig`); the rows of its table."""
    for method in (*config.methods, *config.online):  # before minutes of teacher training, not after
        get_method(method).check_tokens()
    return _in_fresh_out(config, lambda out: _run_text(config, out, echo))


def _run_text(config: TextDemoConfig, out: Path, echo: Callable[[str], None]) -> list[TextDemoRow]:
    def fit(name: str, student: str, method: str, epochs: int, lr: float, **extra: Any) -> TextDemoRow:
        overrides = (f"temperature={config.temperature:g}",) if "temperature" in get_method(method).defaults() else ()
        result = train(TrainConfig(student=student, dataset=config.dataset, out=str(out / name), method=method,
                                   seq_len=config.seq_len, epochs=epochs, batch_size=config.batch_size, lr=lr,
                                   milestones=(), clip_grad=config.clip_grad, overrides=overrides, device=config.device, progress=config.progress, **extra))
        last = json.loads((out / name / "metrics.jsonl").read_text().splitlines()[-1])
        source = "online" if extra.get("teacher_online") else "cache" if "cache" in extra else "labels"
        echo(f"  {name}: test loss {last['test_nll']:.3f}, perplexity {last['test_ppl']:.1f}")
        return TextDemoRow(run=name, method=method, source=source, model=student, test_loss=last["test_nll"],
                           test_ppl=last["test_ppl"], teacher_forwards_run=result.teacher_forwards_run,
                           teacher_forwards_saved=result.teacher_forwards_saved)

    echo(f"1/3 training teacher {config.teacher} with ce on {config.dataset} "
         f"({_utils.plural(config.teacher_epochs, 'epoch')}, sequences of {config.seq_len} tokens)")
    rows = [fit("teacher", config.teacher, "ce", config.teacher_epochs, config.teacher_lr)]
    teacher = f"hf:{out / 'teacher' / HF_FOLDER}"

    echo(f"2/3 dumping its top-{config.topk} next-token logits at every position into {CACHE}")
    start = time.perf_counter()
    dumped = dump(DumpConfig(teacher=teacher, dataset=config.dataset, seq_len=config.seq_len, out=str(out / CACHE),
                             encoding="topk", topk=config.topk, device=config.device, progress=config.progress))
    echo(f"  dumped {dumped.samples_written:,} token positions in {time.perf_counter() - start:.1f} s")

    echo(f"3/3 training student {config.student}: {', '.join(config.methods)} from the cache"
         + (f", {', '.join(config.online)} with the teacher online" if config.online else "")
         + f" ({_utils.plural(config.student_epochs, 'epoch')} each, KD at T = {config.temperature:g})")
    for method in config.methods:
        extra = {"cache": str(out / CACHE)} if get_method(method).needs_teacher else {}
        rows.append(fit(method, config.student, method, config.student_epochs, config.student_lr, **extra))
    for method in config.online:
        rows.append(fit(f"{method}-online", config.student, method, config.student_epochs, config.student_lr,
                        teacher=teacher, teacher_online=True))
    _utils.atomic_write_json(out / "demo_results.json", {"rows": [asdict(r) for r in rows]})
    return rows


def render_text_table(rows: list[TextDemoRow]) -> str:
    head = (f"{'run':<12} {'source':<7} {'model':<18} {'test loss':>9} {'test ppl':>9} {'teacher fwd run':>15} "
            f"{'teacher fwd saved':>17}")
    body = [f"{r.run:<12} {r.source:<7} {r.model:<18} {r.test_loss:>9.3f} {r.test_ppl:>9.1f} "
            f"{r.teacher_forwards_run:>15,} {r.teacher_forwards_saved:>17,}" for r in rows]
    return _table(head, body, [
        "source: where a run's targets came from besides the next tokens (labels: nowhere else). test: the",
        "book's last tenth, never trained on; loss = next-token cross-entropy (nats), ppl = exp(loss), last epoch.",
        "teacher fwd: teacher passes over training sequences, run (online) or spared by the cache.",
        "The cache keeps each position's top-k tokens and its next token exactly and spreads the rest of the",
        "mass evenly; online KD sees the teacher's whole distribution, so a gap between kd and kd-online is",
        "expected (it grows with longer student training: measured, ce overtakes the cached kd after 5 epochs)."])
