"""``report``: PNG figures of a cache's teacher (and of runs trained from it) and an index.html.

Figures of the teacher, over every stored (view, sample) pair: the reliability diagram and ECE
per view, the mis-instruction rate per class (teacher top-1 is not the label), the entropy
histogram, and for each method that changes the target the teacher gives (LoCa, RLD, LUD, logit
standardization) how far that target moves from the teacher's distribution at the method's
temperature: mean KL(target || teacher) and the share of mis-instructed pairs whose target puts
the label on top. With runs: their loss and test-accuracy curves and the mean ± std bars of
``sweep.summarize``. matplotlib (the ``report`` extra) is imported only here, headless (Agg).
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import _utils
from .errors import BadInput
from .evaluate import ECE_BINS, expected_calibration_error
from .methods import get_method
from .methods._common import standardize
from .methods.loca import calibrate_log_probs
from .store.reader import CacheReader
from .sweep import Summary, expand_runs, summarize

REPORT_MARKER = "report.json"
_BATCH = 8192


@dataclass
class ViewCalibration:
    view: int
    clean: bool
    ece: float
    accuracy: float
    bins: list[dict[str, float]]  # per confidence bin: lo, hi, confidence, accuracy, count


@dataclass
class TargetShift:
    method: str
    how: str  # what the target is and at which settings
    mean_kl: float  # KL(target || teacher) at the method's temperature, nats, over every pair
    corrected: float | None  # share of mis-instructed pairs whose target's top-1 is the label


@dataclass
class TeacherStats:
    views: list[ViewCalibration]
    misinstruction_per_class: list[float]
    entropy_histogram: tuple[list[float], list[int]]  # bin edges (nats), counts
    mean_entropy: float
    shifts: list[TargetShift]
    exact: bool  # full logits; a top-k cache's figures are of the rebuilt distribution (ECE, top-1 exact)


@dataclass
class Report:
    out: str
    figures: list[str]
    teacher: TeacherStats
    runs: Summary | None = None
    notes: list[str] = field(default_factory=list)


def _shift_targets() -> list[tuple[str, str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]]:
    """(method, description, fn(logits, labels) -> (log target, log teacher at that temperature))."""
    loca, rld, lud = (get_method(m).defaults() for m in ("loca", "rld", "lud"))
    ls_tau = float(get_method("kd").presets["ls"]["temperature"])
    t_loca, t_rld = loca["temperature"], rld["temperature"]
    rho_one = lud["t_min"] + (lud["t_max"] - lud["t_min"]) * (1 - math.exp(-1))

    def loca_fn(z, y):
        log_p = F.log_softmax(z / t_loca, dim=1)
        return calibrate_log_probs(log_p, y, loca["loca_alpha"]), log_p

    def rld_fn(z, y):
        return _rld_target(z, y, t_rld), F.log_softmax(z / t_rld, dim=1)

    def lud_fn(z, y):
        return F.log_softmax(z / rho_one, dim=1), F.log_softmax(z / lud["t_min"], dim=1)

    def ls_fn(z, y):
        return F.log_softmax(standardize(z) / ls_tau, dim=1), F.log_softmax(z / ls_tau, dim=1)

    return [
        ("loca", f"KD target calibrated by LoCa (alpha {loca['loca_alpha']:g}) at T {t_loca:g}", loca_fn),
        ("rld", f"RLD's SCD + MCD targets read as one distribution at T {t_rld:g}: the label gets the teacher's "
                "top-1 probability, the classes ranked below the label share the rest, those above it get none",
         rld_fn),
        ("lud", f"LUD's adaptive temperature at its largest (Spearman rho 1: T {rho_one:.2f}) against t_min "
                f"{lud['t_min']:g}; the real T of a pair depends on the student", lud_fn),
        ("kd --logit-stand", f"the z-scored teacher at tau {ls_tau:g} (the ls preset) against the plain "
                             f"teacher at tau {ls_tau:g}", ls_fn),
    ]


def _rld_target(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C) log of RLD's target as one distribution (see ``_shift_targets``); for a pair whose
    teacher ranks the label first it is the teacher's own distribution."""
    log_p = F.log_softmax(z / temperature, dim=1)
    z_y = z.gather(1, y[:, None])
    below = z < z_y  # MCD's support: M_ge masked out
    log_top = log_p.max(dim=1, keepdim=True).values
    rest = torch.log(-torch.expm1(log_top))  # log(1 - p_top)
    log_below = F.log_softmax((z / temperature).masked_fill(~below, float("-inf")), dim=1)
    target = torch.where(below, rest + log_below, torch.full_like(log_p, float("-inf")))
    # A label the teacher ranks last leaves MCD nothing: SCD's label mass is then the whole target.
    none_below = ~below.any(dim=1, keepdim=True)
    label = F.one_hot(y, z.shape[1]).bool()
    return torch.where(label, torch.where(none_below, torch.zeros_like(log_top), log_top), target)


def _kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """(B,) KL(q || p); classes where q is 0 add nothing."""
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(dim=1)


def teacher_stats(reader: CacheReader, *, entropy_bins: int = 30) -> TeacherStats:
    """Calibration per view, mis-instruction per class, entropy and target shifts, over every pair."""
    spec = reader.spec
    n, num_classes = spec.dataset.num_samples, spec.dataset.num_classes
    edges = torch.linspace(0, 1, ECE_BINS + 1)
    wrong_per_class = torch.zeros(num_classes, dtype=torch.float64)
    count_per_class = torch.zeros(num_classes, dtype=torch.float64)
    entropies, views = [], []
    shifts = _shift_targets()
    kl_sum = [0.0] * len(shifts)
    fixed = [0] * len(shifts)
    wrong_total = 0
    for v in range(spec.views.total):
        confidences, corrects = [], []
        for s in range(0, n, _BATCH):
            idx = np.arange(s, min(s + _BATCH, n))
            tv = reader.read(np.full(len(idx), v), idx)
            z, y = tv.logits, tv.target
            log_p = F.log_softmax(z, dim=1)
            correct = tv.argmax == y
            confidences.append(log_p.max(dim=1).values.exp())
            corrects.append(correct)
            entropies.append(-(log_p.exp() * log_p).sum(dim=1))
            wrong_per_class += torch.bincount(y[~correct], minlength=num_classes).double()
            count_per_class += torch.bincount(y, minlength=num_classes).double()
            wrong_total += int((~correct).sum())
            for i, (_, _, fn) in enumerate(shifts):
                log_target, log_teacher = fn(z, y)
                kl_sum[i] += float(_kl(log_target, log_teacher).sum())
                fixed[i] += int(((log_target.argmax(dim=1) == y) & ~correct).sum())
        conf, corr = torch.cat(confidences), torch.cat(corrects)
        which = torch.bucketize(conf, edges[1:-1], right=True)
        bins = [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int((which == b).sum()),
                 "confidence": float(conf[which == b].mean()) if (which == b).any() else float("nan"),
                 "accuracy": float(corr[which == b].double().mean()) if (which == b).any() else float("nan")}
                for b in range(ECE_BINS)]
        views.append(ViewCalibration(view=v, clean=reader.is_clean(v), ece=expected_calibration_error(conf, corr),
                                     accuracy=float(corr.double().mean()), bins=bins))
    entropy = torch.cat(entropies)
    counts, hist_edges = np.histogram(entropy.numpy(), bins=entropy_bins, range=(0.0, math.log(num_classes)))
    pairs = n * spec.views.total
    return TeacherStats(
        views=views,
        misinstruction_per_class=(wrong_per_class / count_per_class.clamp(min=1)).tolist(),
        entropy_histogram=(hist_edges.tolist(), counts.tolist()),
        mean_entropy=float(entropy.mean()),
        shifts=[TargetShift(method=m, how=how, mean_kl=kl_sum[i] / pairs,
                            corrected=fixed[i] / wrong_total if wrong_total else None)
                for i, (m, how, _) in enumerate(shifts)],
        exact=spec.encoding.kind == "full",
    )


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise BadInput("report needs matplotlib: pip install 'logitcache[report]'") from None
    matplotlib.use("Agg")  # headless: no display is ever opened
    import matplotlib.pyplot as plt

    return plt


def _prepare_out(out: Path, overwrite: bool) -> None:
    _utils.check_output_location(out, "--out")
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file: choose a folder for the report")
    if out.exists() and any(out.iterdir()):
        if not (out / REPORT_MARKER).exists():
            raise BadInput(f"{out} holds files that are not a logitcache report: choose another --out (nothing was deleted)")
        if not overwrite:
            raise BadInput(f"{out} holds a previous report: pass --overwrite to replace it, or another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_report(cache: str | os.PathLike, out: str | os.PathLike, *, runs: Sequence[str | os.PathLike] = (),
                 overwrite: bool = False) -> Report:
    """Render the figures and ``index.html`` into ``out`` (see the module docstring)."""
    out = Path(out)
    run_folders = expand_runs(runs) if runs else []  # refused before anything is written
    plt = _pyplot()
    reader = CacheReader(cache)
    try:
        stats = teacher_stats(reader)
        spec = reader.spec
    finally:
        reader.close()
    summary = summarize(run_folders) if run_folders else None
    _prepare_out(out, overwrite)
    figures = [_reliability(plt, stats, out), _misinstruction(plt, stats, out), _entropy(plt, stats, out),
               _shifts(plt, stats, out)]
    if summary is not None:
        figures += [_curves(plt, summary, out), _bars(plt, summary, out)]
    report = Report(out=str(out), figures=figures, teacher=stats, runs=summary)
    if not stats.exact:
        report.notes.append(f"a top-{spec.encoding.k} cache: entropies and target shifts are of the rebuilt "
                            "distribution (the rest spread evenly); top-1, mis-instruction and ECE are exact")
    _utils.atomic_write_bytes(out / "index.html", _html(report, str(cache), spec.teacher.name).encode())
    _utils.atomic_write_json(out / REPORT_MARKER, {
        "cache": str(cache), "runs": [str(r) for r in run_folders], "figures": figures,
        "teacher": asdict(stats), "runs_summary": None if summary is None else summary.to_json(),
        "created": _utils.now()})
    return report


def _save(plt, fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _view_name(v: ViewCalibration) -> str:
    return f"view {v.view}" + (" (clean)" if v.clean else "")


def _reliability(plt, stats: TeacherStats, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for v in stats.views:
        pts = [(b["confidence"], b["accuracy"]) for b in v.bins if b["count"]]
        ax.plot(*zip(*pts), marker="o", label=f"{_view_name(v)}: ECE {v.ece:.3f}")
    ax.set(xlabel="teacher top-1 confidence", ylabel="accuracy", title="Teacher reliability per view",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(plt, fig, out, "teacher_reliability.png")


def _misinstruction(plt, stats: TeacherStats, out: Path) -> str:
    rates = [100 * r for r in stats.misinstruction_per_class]
    fig, ax = plt.subplots(figsize=(max(5, 0.12 * len(rates) + 3), 4))
    ax.bar(range(len(rates)), rates, color="tab:red")
    ax.set(xlabel="class (label)", ylabel="% of (view, sample) pairs", title="Mis-instruction: teacher top-1 is not the label")
    return _save(plt, fig, out, "misinstruction_per_class.png")


def _entropy(plt, stats: TeacherStats, out: Path) -> str:
    edges, counts = stats.entropy_histogram
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue")
    ax.set(xlabel="entropy of the teacher's distribution (nats)", ylabel="(view, sample) pairs",
           title=f"Teacher entropy (mean {stats.mean_entropy:.3f} nats)")
    ax.set_yscale("log")
    return _save(plt, fig, out, "teacher_entropy.png")


def _shifts(plt, stats: TeacherStats, out: Path) -> str:
    names = [s.method for s in stats.shifts]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    a.bar(names, [s.mean_kl for s in stats.shifts], color="tab:purple")
    a.set(ylabel="mean KL(target || teacher), nats", title="How far the target moves")
    b.bar(names, [100 * (s.corrected or 0) for s in stats.shifts], color="tab:green")
    b.set(ylabel="% of mis-instructed pairs", title="Target puts the label on top", ylim=(0, 105))
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    return _save(plt, fig, out, "target_shift.png")


def _metrics(run: str) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        raise BadInput(f"{path} is unreadable: pass finished runs of `logitcache train`") from None


def _curves(plt, summary: Summary, out: Path) -> str:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(summary.groups):
        for j, run in enumerate(g.runs):
            rows = _metrics(run)
            epochs = [r["epoch"] for r in rows]
            kw = dict(color=colors[i % len(colors)], alpha=0.7, label=g.label if j == 0 else None)
            a.plot(epochs, [r["train_loss"] for r in rows], **kw)
            b.plot(epochs, [r["test_top1"] for r in rows], **kw)
    a.set(xlabel="epoch", ylabel="training loss (all terms)", title="Loss per run", yscale="log")
    b.set(xlabel="epoch", ylabel="test top-1 %", title="Test accuracy per run")
    b.legend(fontsize=8)
    return _save(plt, fig, out, "run_curves.png")


def _bars(plt, summary: Summary, out: Path) -> str:
    groups = summary.groups
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) + 2), 4))
    for offset, which, color in ((-0.2, "best", "tab:blue"), (0.2, "last", "tab:orange")):
        stats = [getattr(g, which) for g in groups]
        ax.bar(x + offset, [s.mean for s in stats], 0.4, yerr=[s.std or 0 for s in stats], capsize=4,
               color=color, label=f"{which} epoch")
    lo = min(min(g.best.min, g.last.min) for g in groups)
    ax.set(xticks=x, xticklabels=[f"{g.label}\n(n={g.n})" for g in groups], ylabel="test top-1 %",
           title="Mean ± sample std over seeds", ylim=(max(0, lo - 5), 100))
    ax.legend(fontsize=8)
    return _save(plt, fig, out, "sweep_bars.png")


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _section(title: str, figure: str, numbers: str) -> str:
    return (f"<section><h2>{html.escape(title)}</h2><div class='row'><img src='{figure}' alt='{html.escape(title)}'>"
            f"<div>{numbers}</div></div></section>")


def _html(report: Report, cache: str, teacher: str) -> str:
    t = report.teacher
    fig = dict(zip(("rel", "mis", "ent", "shift", "curves", "bars"), report.figures))
    worst = sorted(range(len(t.misinstruction_per_class)), key=lambda c: -t.misinstruction_per_class[c])[:10]
    parts = [
        _section("Teacher reliability and ECE per view", fig["rel"], _table(
            ["view", "accuracy %", "ECE"], [[_view_name(v), f"{100 * v.accuracy:.2f}", f"{v.ece:.4f}"] for v in t.views])),
        _section("Mis-instruction rate per class", fig["mis"], "<p>classes with the highest rate</p>" + _table(
            ["class", "mis-instructed %"], [[str(c), f"{100 * t.misinstruction_per_class[c]:.2f}"] for c in worst])),
        _section("Teacher entropy", fig["ent"], f"<p>mean {t.mean_entropy:.4f} nats over every stored pair</p>"),
        _section("How far each method's target moves from the teacher's", fig["shift"], _table(
            ["method", "mean KL (nats)", "mis-instructed corrected %", "target"],
            [[s.method, f"{s.mean_kl:.4f}", "—" if s.corrected is None else f"{100 * s.corrected:.1f}", s.how]
             for s in t.shifts])),
    ]
    if report.runs is not None:
        g = report.runs.groups
        parts += [
            _section("Loss and accuracy per run", fig["curves"], _table(
                ["group", "runs"], [[x.label, ", ".join(Path(r).name for r in x.runs)] for x in g])),
            _section("Mean ± std over seeds", fig["bars"], _table(
                ["group", "n", "selection", "best %", "last %", "teacher forwards saved"],
                [[x.label, str(x.n), x.selection, str(x.best), str(x.last), f"{x.teacher_forwards_saved:,}"]
                 for x in g]) + "<p>std: sample standard deviation over seeds (ddof = 1). best: test accuracy at "
                "each run's best epoch by its selection (test: optimistic).</p>"),
        ]
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in report.notes)
    style = ("body{font-family:sans-serif;margin:2em}.row{display:flex;gap:2em;align-items:flex-start}"
             "img{max-width:60%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
             "font-size:90%}.note{color:#a60}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>logitcache report</title><style>{style}"
            f"</style></head><body><h1>logitcache report</h1><p>cache {html.escape(cache)}, teacher "
            f"{html.escape(teacher)}</p>{notes}{''.join(parts)}</body></html>\n")
