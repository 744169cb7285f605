"""``demo``: the whole workflow on the shipped digits, in a few minutes on two CPU cores.

Trains a teacher from labels, dumps its logits over a few seeded views once, trains the same
student with several KD methods from that cache, and once with the teacher online, then
tabulates test accuracy and the teacher forward passes each run made or the cache saved. Wall
times stay out of the table: on a shared two-core machine they measure the load more than the
method (each run's seconds are in demo_results.json).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import _utils
from .dump import DumpConfig, dump
from .errors import BadInput
from .train import TrainConfig, train

DEMO_MARKER = "demo.json"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    out: str = "runs/demo"
    dataset: str = "digits"
    teacher: str = "resnet20"
    student: str = "resnet8"
    teacher_epochs: int = 30
    student_epochs: int = 30
    views: int = 4
    methods: tuple[str, ...] = ("ce", "kd", "dkd", "loca", "rld", "lud")
    online: tuple[str, ...] = ("kd",)
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class DemoRow:
    run: str
    method: str
    source: str  # "cache", "online" or "labels"
    best_acc: float
    last_acc: float
    seconds: float
    teacher_forwards_saved: int
    teacher_forwards_run: int


def run_demo(config: DemoConfig, echo=print) -> list[DemoRow]:
    """Run the demo into ``config.out`` and return one row per trained model (teacher first)."""
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

    def run(name: str, **kw) -> DemoRow:
        cfg = TrainConfig(dataset=config.dataset, out=str(out / name), device=config.device,
                          progress=config.progress, **kw)
        result = train(cfg)
        source = "online" if cfg.teacher_online else "cache" if cfg.cache else "labels"
        row = DemoRow(run=name, method=cfg.method, source=source, best_acc=result.best_acc,
                      last_acc=result.last_acc, seconds=result.seconds,
                      teacher_forwards_saved=result.teacher_forwards_saved,
                      teacher_forwards_run=result.teacher_forwards_run)
        echo(f"  {name:<18} best {row.best_acc:6.2f}%  last {row.last_acc:6.2f}%  {row.seconds:6.1f} s")
        return row

    echo(f"1/3 training teacher {config.teacher} on {config.dataset} ({_utils.plural(config.teacher_epochs, 'epoch')})")
    rows = [run("teacher", student=config.teacher, method="ce", epochs=config.teacher_epochs)]
    teacher_ckpt = str(out / "teacher" / "best.pt")

    echo(f"2/3 dumping its logits over {_utils.plural(config.views, 'view')} (+ the clean view) into cache.zarr")
    start = time.perf_counter()
    dumped = dump(DumpConfig(teacher=config.teacher, checkpoint=teacher_ckpt, dataset=config.dataset,
                             out=str(out / "cache.zarr"), views=config.views, encoding="full", dtype="fp16",
                             chunk_samples=512, device=config.device, progress=config.progress))
    echo(f"  dumped {dumped.samples_written:,} sample-views in {time.perf_counter() - start:.1f} s; "
         f"teacher test accuracy {dumped.teacher_test_accuracy:.2f}%")

    echo(f"3/3 training student {config.student} ({_utils.plural(config.student_epochs, 'epoch')} each)")
    common = dict(student=config.student, epochs=config.student_epochs, teacher=config.teacher)
    for method in config.methods:
        cache = None if method == "ce" else str(out / "cache.zarr")
        rows.append(run(f"{method}-cache" if cache else method, method=method, cache=cache, **common))
    # The online runs derive the cache's views (same count, the dump's default seed 0) instead of one
    # per epoch, so that they differ from the cached runs only in where the logits come from.
    for method in config.online:
        rows.append(run(f"{method}-online", method=method, teacher_online=True, checkpoint=teacher_ckpt,
                        views=config.views, **common))
    _utils.atomic_write_json(out / "demo_results.json", [asdict(r) for r in rows])
    return rows


def render_table(rows: list[DemoRow]) -> str:
    head = (f"{'run':<18} {'method':<8} {'teacher':<7} {'best %':>7} {'last %':>7} {'teacher fwd run':>16} "
            f"{'teacher fwd saved':>18}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.run:<18} {r.method:<8} {r.source:<7} {r.best_acc:7.2f} {r.last_acc:7.2f} "
                     f"{r.teacher_forwards_run:16,} {r.teacher_forwards_saved:18,}")
    lines += ["best %: the best epoch's test accuracy, selected on the test set (optimistic); last %: the last epoch's",
              "teacher fwd run / saved: teacher passes over a training image that the run made / that the cache spared it"]
    return "\n".join(lines)
