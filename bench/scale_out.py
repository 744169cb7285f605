"""6. Scale-out: torchrun training and sharded dump, against one process, on this machine.

Both run the installed console scripts as a user would (``logitcache``, ``torchrun``), each
process with one torch thread, so N processes use N cores; one process with N threads is
listed too, as the other way of using the same cores. Configurations alternate within each
round, so that the machine's drifts hit them alike.

Training: one epoch of resnet20 with KD from a top-10 cache (synthetic 32×32, 100 classes),
global batch 128, gloo on CPU; the rate is the loop's ``samples_per_second`` from
``metrics.jsonl`` (every rank's samples, startup and test evaluation excluded), and the wall
time the whole command. Dump: a random-init resnet56 teacher over the clean view and one
augmented view, top-10 fp16; ``--shard i/N`` processes started together, and the wall time
runs until the last one exits (one of them completes the store).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ._common import Ctx, Section, median, table

PROCS = 2


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _start(argv: list[str], threads: int) -> subprocess.Popen:
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS=str(threads))
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{p.args[:3]} failed:\n{err[-3000:]}")


def _timed(ctx: Ctx, argvs: list[list[str]], threads: int) -> float:
    ctx.quiet()
    t = time.perf_counter()
    _wait([_start(argv, threads) for argv in argvs])
    return time.perf_counter() - t


def _dump_args(dataset: str, out: Path) -> list[str]:
    return [_script("logitcache"), "dump", "--teacher", "resnet56", "--random-init", "--dataset", dataset,
            "--views", "1", "--topk", "10", "--dtype", "fp16", "--chunk-samples", "512", "--batch-size", "256",
            "--device", "cpu", "--quiet", "--out", str(out)]


def _train_args(dataset: str, cache: Path, out: Path) -> list[str]:
    return ["train", "--student", "resnet20", "--dataset", dataset, "--cache", str(cache), "--method", "kd",
            "--epochs", "1", "--batch-size", "128", "--device", "cpu", "--quiet", "--out", str(out)]


def _rate(run: Path) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["samples_per_second"]


def run(ctx: Ctx) -> Section:
    n = ctx.n(4096, 1024)
    rounds = ctx.n(3, 1)
    dataset = f"synthetic:n={n},classes=100,size=32,seed=0"
    work = Path(ctx.workdir) / "scale-out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    dump_walls: dict[str, list[float]] = {"1 process, 1 thread": [], "1 process, 2 threads": [],
                                          f"{PROCS} × --shard i/{PROCS}, 1 thread each": []}
    train_walls: dict[str, list[float]] = {"1 process, 1 thread": [], "1 process, 2 threads": [],
                                           f"torchrun {PROCS} processes, 1 thread each": [],
                                           f"torchrun {PROCS} processes, 1 thread each, --no-sync-bn": []}
    train_rates: dict[str, list[float]] = {k: [] for k in train_walls}
    for r in range(rounds):
        for k, (what, threads) in enumerate(zip(dump_walls, (1, PROCS, 1))):
            out = work / f"dump-{r}-{k}.zarr"
            base = _dump_args(dataset, out)
            argvs = [base] if "shard" not in what else [[*base, "--shard", f"{i}/{PROCS}"] for i in range(PROCS)]
            dump_walls[what].append(_timed(ctx, argvs, threads))
        cache = work / f"dump-{r}-0.zarr"  # this round's single-process store
        for k, (what, threads) in enumerate(zip(train_walls, (1, PROCS, 1, 1))):
            out = work / f"train-{r}-{k}"
            args = _train_args(dataset, cache, out) + (["--no-sync-bn"] if "no-sync-bn" in what else [])
            argv = ([_script("torchrun"), "--standalone", "--nproc-per-node", str(PROCS), "-m", "logitcache", *args]
                    if "torchrun" in what else [_script("logitcache"), *args])
            train_walls[what].append(_timed(ctx, [argv], threads))
            train_rates[what].append(_rate(out))
    shutil.rmtree(work, ignore_errors=True)

    def rows(walls: dict[str, list[float]], rates: dict[str, list[float]] | None) -> list[list]:
        base_wall = median(next(iter(walls.values())))
        base_rate = median(next(iter(rates.values()))) if rates else 0.0
        out = []
        for what, ws in walls.items():
            row = [what, f"{median(ws):.1f} s", f"{base_wall / median(ws):.2f}×"]
            if rates:
                row += [f"{median(rates[what]):,.0f}", f"{median(rates[what]) / base_rate:.2f}×"]
            out.append(row)
        return out

    body = "\n\n".join([
        f"{ctx.n(3, 1)} alternating round(s), medians; {n:,} samples; "
        f"{os.cpu_count()} cores on this machine.",
        "Sharded dump (resnet56 teacher, 2 views, wall time of the whole command, process start included):",
        table(["dump", "wall", "speed-up"], rows(dump_walls, None)),
        "torchrun training (resnet20 student, KD from the cache, 1 epoch; loop rate excludes start-up and evaluation):",
        table(["train", "wall", "speed-up (wall)", "loop samples/s", "speed-up (loop)"], rows(train_walls, train_rates)),
        "With 2 cores, 2 processes can at best double the 1-thread rate; the wall times include each process's "
        "start (importing torch, opening the data) and, for training, the test evaluation, which do not shrink. "
        "Global BatchNorm (the default, which makes N processes train what one would) costs two gloo collectives "
        "per BatchNorm layer and step, each about a millisecond or more on this machine, where two processes on "
        "two cores also wait for each other at every one; `--no-sync-bn` (plain DDP, each process normalising "
        "its own share) leaves one gradient all-reduce per step.",
    ])
    return Section("6. Scale-out (torchrun training, sharded dump)", body)
