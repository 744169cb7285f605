"""Experiment loggers beside ``metrics.jsonl``: TensorBoard and Weights & Biases (offline).

Both are optional extras, imported only when a run asks for them (``--log tensorboard``), so
``import logitcache`` and a run without ``--log`` never load them. A missing package is one
``BadInput`` naming the extra to install, raised before the run writes anything.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

from .errors import BadInput

# --log name -> (module that must import, the extra that installs it)
LOGGERS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class Logger(Protocol):
    def log(self, metrics: dict[str, float], epoch: int) -> None: ...

    def close(self) -> None: ...


def check_loggers(names: tuple[str, ...] | list[str]) -> None:
    """Refuse an unknown ``--log`` name or one whose package is missing (before anything is written)."""
    for name in names:
        _import(name)


def open_loggers(names: tuple[str, ...] | list[str], out: Path, config: dict[str, Any]) -> list[Logger]:
    """One logger per name, writing under the run folder ``out``; ``config`` is the run's config.json."""
    return [_OPEN[name](_import(name), out, config) for name in names]


def _import(name: str) -> Any:
    if name not in LOGGERS:
        raise BadInput(f"unknown --log {name!r}: use {' or '.join(LOGGERS)} (metrics.jsonl is always written)")
    module, extra = LOGGERS[name]
    try:
        return importlib.import_module(module)
    except ImportError:  # torch.utils.tensorboard raises ImportError itself when tensorboard is missing
        raise BadInput(f"--log {name} needs the {extra} package: pip install 'logitcache[{extra}]'") from None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k != "epoch" and isinstance(v, (int, float))}


class _TensorBoard:
    """Event files in ``<out>/tensorboard``; one scalar per metrics.jsonl key, step = epoch."""

    def __init__(self, module: Any, out: Path, config: dict[str, Any]) -> None:
        self.writer = module.SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, metrics: dict[str, float], epoch: int) -> None:
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # a killed run keeps every finished epoch

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """A W&B run in ``<out>/wandb``, offline unless WANDB_MODE says otherwise (``wandb sync`` uploads it)."""

    def __init__(self, module: Any, out: Path, config: dict[str, Any]) -> None:
        self.run = module.init(mode=os.environ.get("WANDB_MODE", "offline"), dir=str(out), config=config,
                               project=os.environ.get("WANDB_PROJECT", "logitcache"), name=out.name)

    def log(self, metrics: dict[str, float], epoch: int) -> None:
        self.run.log(_scalars(metrics), step=epoch)

    def close(self) -> None:
        self.run.finish()


_OPEN = {"tensorboard": _TensorBoard, "wandb": _Wandb}
