"""Many students from one cache: ``sweep`` runs every (method, seed), ``compare`` summarises runs.

A sweep runs each (method, seed) as its own ``logitcache train`` process into
``<out>/<method>-s<seed>`` (its output in ``<out>/logs/``), ``jobs`` at a time with
``cores / jobs`` torch threads each (more threads than cores slow every process down many
times over). It is resumable: a run folder holding ``summary.json`` finished and is never run
again, and a run that was stopped part way is continued (``train --resume``) only when asked,
so that a sweep never silently mixes a half-run with a new one.

``summarize`` groups run folders that differ only in their seed (their ``config.json``) and gives
per group the mean, sample standard deviation (ddof = 1), min and max of the best-epoch and the
last-epoch test accuracy, the run count, and the teacher forwards the cache saved them. "Best"
is the run's own selection (``summary.json``'s ``selection``: ``test``, optimistic, or ``val``),
which the results name.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _utils
from .errors import BadInput, LogitcacheError
from .methods import get_method
from .runs import holds_run_files

SWEEP_MARKER = "sweep.json"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
LOGS = "logs"
# Options a sweep sets per run itself; given as train options they would contradict it.
OWN_OPTIONS = ("--method", "--seed", "--out", "--resume", "--cache", "--student", "--dataset", "--set", "--quiet")
# config.json settings that do not change what a run trains (or that name the run itself).
_NOT_SETTINGS = ("seed", "out", "resume", "progress", "device", "workers", "log")


class SweepFailed(LogitcacheError):
    """One or more runs of a sweep ended with an error (the others are summarised)."""


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    student: str
    dataset: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    out: str
    cache: str | None = None
    sets: tuple[str, ...] = ()  # "METHOD.key=value": a hyper-parameter of one method's runs
    train_args: tuple[str, ...] = ()  # further `logitcache train` options, the same for every run
    jobs: int = 1
    resume: bool = False


@dataclass(frozen=True)
class Run:
    method: str
    seed: int
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass
class Stats:
    mean: float
    std: float | None  # sample std (ddof = 1); None for a single run
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else None,
                   min=min(values), max=max(values))

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}" if self.std is not None else f"{self.mean:.2f}"


@dataclass
class Group:
    """Runs that differ only in their seed."""

    label: str
    method: str
    settings: dict[str, Any]  # where this group's settings differ from another group's
    selection: str  # "test" or "val": how each run chose its best epoch
    runs: list[str]
    seeds: list[int]
    best: Stats
    last: Stats
    teacher_forwards_saved: int

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class Summary:
    groups: list[Group] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"std": "sample standard deviation over seeds (ddof = 1); null for a single run",
                "best": "test accuracy at each run's best epoch, chosen by its selection (test: optimistic)",
                "groups": [{**asdict(g), "n": g.n} for g in self.groups]}


def parse_sets(items: Sequence[str], methods: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``METHOD.key=value`` items, per method of the sweep, as train's ``key=value``."""
    per: dict[str, list[str]] = {m: [] for m in methods}
    for item in items:
        head, sep, value = item.partition("=")
        method, dot, key = head.rpartition(".")
        if not sep or not dot or not key.strip():
            raise BadInput(f"cannot read --set {item!r}: use METHOD.KEY=VALUE, e.g. --set dkd.beta=2")
        if method not in per:
            raise BadInput(f"--set {item!r} names method {method!r}, which is not in --methods {','.join(methods)}")
        per[method].append(f"{key.strip()}={value.strip()}")
    return {m: tuple(v) for m, v in per.items()}


def plan(config: SweepConfig) -> list[Run]:
    """Every (method, seed) run of the sweep, in order, after checking the sweep's options."""
    if not config.methods or not config.seeds:
        raise BadInput("--methods and --seeds each need at least one entry, e.g. --methods kd,dkd --seeds 0,1,2")
    for method in config.methods:
        get_method(method)  # an unknown name is refused with the valid ones
    for name, values in (("--methods", config.methods), ("--seeds", config.seeds)):
        if len(set(values)) != len(values):
            raise BadInput(f"{name} names an entry twice: {','.join(map(str, values))}")
    if config.jobs < 1:
        raise BadInput(f"--jobs must be >= 1, got {config.jobs}")
    own = [a for a in config.train_args if a.split("=")[0] in OWN_OPTIONS]
    if own:
        raise BadInput(f"{', '.join(own)}: the sweep sets these for each run; use its own options "
                       "(--methods, --seeds, --out, --resume, --cache, --set METHOD.key=value)")
    out = Path(config.out)
    return [Run(m, s, out / f"{m}-s{s}") for m in config.methods for s in config.seeds]


def train_command(config: SweepConfig, run: Run, sets: dict[str, tuple[str, ...]], resume: bool) -> list[str]:
    """The ``logitcache train`` command line of one run."""
    cmd = [sys.executable, "-m", "logitcache", "train", "--method", run.method, "--seed", str(run.seed),
           "--student", config.student, "--dataset", config.dataset, "--out", str(run.folder), "--quiet"]
    if config.cache is not None:
        cmd += ["--cache", config.cache]
    for item in sets[run.method]:
        cmd += ["--set", item]
    return cmd + list(config.train_args) + (["--resume"] if resume else [])


def _record(config: SweepConfig) -> dict[str, Any]:
    # What every run of the sweep shares; methods and seeds may grow between invocations.
    return {"student": config.student, "dataset": config.dataset, "cache": config.cache,
            "sets": list(config.sets), "train_args": list(config.train_args)}


def _claim(config: SweepConfig, runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """(runs to start, runs to resume); refuses a folder that is another sweep's or a run stopped
    part way without ``resume``, before anything is written."""
    out = Path(config.out)
    _utils.check_output_location(out, "--out")
    marker = out / SWEEP_MARKER
    if marker.exists():
        try:
            was = json.loads(marker.read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            raise BadInput(f"{marker} is unreadable: choose another --out") from None
        now = _record(config)
        diffs = [f"{k} {was.get(k)!r} -> {v!r}" for k, v in now.items() if was.get(k) != v]
        if diffs:
            raise BadInput(f"{out} holds a sweep with other settings ({'; '.join(diffs)}): use the same options "
                           "to continue it, or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise BadInput(f"{out} already holds files that are not a sweep: choose another --out")
    fresh, partial = [], []
    for run in runs:
        if (run.folder / "summary.json").exists():
            continue
        (partial if holds_run_files(run.folder) else fresh).append(run)
    if partial and not config.resume:
        raise BadInput(f"{', '.join(r.name for r in partial)} in {out} stopped part way: pass --resume to "
                       "continue {}, or choose another --out".format("it" if len(partial) == 1 else "them"))
    return fresh, partial


def run_sweep(config: SweepConfig, echo: Callable[[str], None] = print) -> Summary:
    """Run the sweep (see the module docstring) and write ``results.json`` and ``results.md``.

    Raises:
        SweepFailed: a run ended with an error; no new run is started after it, the others
            are summarised and the message names each failed run and its log.
    """
    runs = plan(config)
    sets = parse_sets(config.sets, config.methods)
    fresh, partial = _claim(config, runs)
    out = Path(config.out)
    (out / LOGS).mkdir(parents=True, exist_ok=True)
    _utils.atomic_write_json(out / SWEEP_MARKER, {"settings": _record(config), "updated": _utils.now()})
    todo = [(r, False) for r in fresh] + [(r, True) for r in partial]
    done = len(runs) - len(todo)
    if done:
        echo(f"{_utils.plural(done, 'run')} of {len(runs)} already finished: kept as they are")
    threads = max(1, _cores() // config.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=config.jobs) as pool:
        pending: dict[Future, Run] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < config.jobs and not failures:
                run, resume = queue.pop(0)
                pending[pool.submit(_run_one, train_command(config, run, sets, resume), out / LOGS / f"{run.name}.log",
                                    env)] = run
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                run = pending.pop(future)
                code, seconds, last_line = future.result()
                done += 1
                if code == 0:
                    summary = json.loads((run.folder / "summary.json").read_text())
                    echo(f"[{done}/{len(runs)}] {run.method} seed {run.seed}: best {summary['best_acc']:.2f}%  "
                         f"last {summary['last_acc']:.2f}%  ({seconds:.0f} s)")
                else:
                    failures.append(f"{run.name} ({last_line}; log: {out / LOGS / (run.name + '.log')})")
                    echo(f"[{done}/{len(runs)}] {run.method} seed {run.seed}: failed: {last_line}")
    finished_runs = [r.folder for r in runs if (r.folder / "summary.json").exists()]
    summary = summarize(finished_runs) if finished_runs else Summary()
    write_results(summary, out)
    if failures:
        raise SweepFailed(f"{_utils.plural(len(failures), 'run')} failed: {'; '.join(failures)}; fix the cause and "
                          f"run the same sweep again with --resume (finished runs are kept)")
    return summary


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_one(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int, float, str]:
    """Run one train command with its output into ``log``: (exit code, seconds, last output line)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return code, time.perf_counter() - start, lines[-1].strip() if lines else "no output"


def expand_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run folders: each path that holds a ``summary.json``, and the finished runs inside a folder
    that holds none (a sweep's ``--out``)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "summary.json").is_file():
            runs.append(p)
        elif p.is_dir():
            inner = sorted(c for c in p.iterdir() if (c / "summary.json").is_file())
            if not inner:
                raise BadInput(f"{p} holds no finished run (no summary.json in it or in its folders): "
                               "pass run folders of `logitcache train` or a sweep's --out")
            runs += inner
        else:
            raise BadInput(f"{p} is not a run folder (no such folder): pass run folders of `logitcache train`")
    return runs


def _read_run(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        config = json.loads((folder / "config.json").read_text())["config"]
        summary = json.loads((folder / "summary.json").read_text())
        float(summary["best_acc"]), float(summary["last_acc"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(f"{folder} is not a readable finished run (config.json and summary.json of "
                       "`logitcache train`)") from None
    return config, summary


def summarize(folders: Sequence[Path]) -> Summary:
    """Per group of runs that differ only in their seed: accuracy statistics over seeds."""
    by_key: dict[str, list[tuple[Path, dict, dict]]] = {}
    for folder in folders:
        config, summary = _read_run(folder)
        settings = {k: v for k, v in config.items() if k not in _NOT_SETTINGS}
        settings["selection"] = summary.get("selection", "test")
        by_key.setdefault(json.dumps(settings, sort_keys=True), []).append((folder, config, summary))
    all_settings = [json.loads(k) for k in by_key]
    groups = []
    for key, members in by_key.items():
        settings = json.loads(key)
        # A label names the method, and what tells the group from another group of that method.
        peers = [o for o in all_settings if o["method"] == settings["method"] and o != settings]
        differs = {k: settings.get(k) for k in sorted(settings) if any(o.get(k) != settings.get(k) for o in peers)}
        label = settings["method"] + "".join(f" {k}={_short(v)}" for k, v in differs.items())
        seeds = [c["seed"] for _, c, _ in members]
        if len(set(seeds)) != len(seeds):
            raise BadInput(f"runs {', '.join(str(f) for f, _, _ in members)} repeat a seed with the same settings: "
                           "pass each run once")
        groups.append(Group(
            label=label, method=settings["method"], settings=differs, selection=settings["selection"],
            runs=[str(f) for f, _, _ in members], seeds=seeds,
            best=Stats.of([s["best_acc"] for _, _, s in members]), last=Stats.of([s["last_acc"] for _, _, s in members]),
            teacher_forwards_saved=sum(int(s.get("teacher_forwards_saved", 0)) for _, _, s in members),
        ))
    return Summary(groups)


def _short(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def render_markdown(summary: Summary) -> str:
    """The results table: one row per group, mean ± sample std over seeds, then min/max."""
    head = "| method | n | selection | best % (mean ± std) | best min–max | last % (mean ± std) | last min–max | teacher forwards saved |"
    lines = [head, "|" + "---|" * 8]
    for g in summary.groups:
        lines.append(f"| {g.label} | {g.n} | {g.selection} | {g.best} | {g.best.min:.2f}–{g.best.max:.2f} | "
                     f"{g.last} | {g.last.min:.2f}–{g.last.max:.2f} | {g.teacher_forwards_saved:,} |")
    lines += ["", "std: sample standard deviation over seeds (ddof = 1; none for one run). best: test accuracy at "
              "each run's best epoch, chosen by its selection (test: on the test set itself, optimistic; val: on a "
              "held-out share of the training images). last: the last epoch's test accuracy."]
    return "\n".join(lines) + "\n"


def write_results(summary: Summary, out: str | os.PathLike) -> None:
    out = Path(out)
    _utils.atomic_write_json(out / RESULTS_JSON, summary.to_json())
    _utils.atomic_write_bytes(out / RESULTS_MD, render_markdown(summary).encode())


def clearly_apart(a: Group, b: Group, which: str = "best") -> bool | None:
    """Whether two groups' mean accuracies differ by more than twice the standard error of the
    difference (Welch's form): a rough reading of a few seeds, not a test. None below two runs each."""
    x, y = getattr(a, which), getattr(b, which)
    if x.std is None or y.std is None:
        return None
    return abs(x.mean - y.mean) > 2 * math.sqrt(x.std**2 / a.n + y.std**2 / b.n)
