"""Options shared by several commands, so that they read the same everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

DeviceOpt = Annotated[str, typer.Option(help="auto (GPU if present, else CPU), cpu, cuda or cuda:N.")]
DataRootOpt = Annotated[
    str | None,
    typer.Option(help="Folder holding the dataset (e.g. the one containing cifar-100-python/). Not needed for digits/synthetic."),
]
CheckpointOpt = Annotated[str | None, typer.Option(help="Teacher weights: a state dict saved with torch.save.")]
RandomInitOpt = Annotated[bool, typer.Option(help="Seeded random teacher weights instead of a checkpoint (tests only).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
