"""Shared pieces of the benchmarks: timing statistics, machine description, markdown tables,
and synthetic teacher logits written into real stores.

Synthetic logits (:class:`SyntheticTeacher`) are what the read and storage benchmarks store:
random logits would make compression look worse than it is, and constant ones better. Each
class has a unit embedding drawn around one of a few cluster centres (CIFAR-100's 20
superclasses of 5; ImageNet-like groups of 20), so similar classes get similar logits; a sample's
logits are ``sim · <h, e_c>`` for a latent ``h`` near its class's embedding, plus Gaussian
noise, plus a true-class margin drawn per sample (some negative: the teacher is wrong on a few
percent), plus a per-sample offset (real logits are not centred). The presets are tuned to
look like a trained teacher on augmented training images: CIFAR-100 ~99 % top-1, median top
probability ~0.999; ImageNet ~89 %, median top probability ~0.93, mean entropy ~1.2 nats.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logitcache import _utils
from logitcache.store.encodings import get_encoding
from logitcache.store.format import (
    CacheSpec,
    CodecInfo,
    DatasetInfo,
    EncodingInfo,
    Layout,
    Provenance,
    TeacherInfo,
    ViewsInfo,
)
from logitcache.store.writer import BlockWriter
from logitcache.store.zarr_store import ZarrStore
from logitcache.views import ViewSpec, view_seeds


# --------------------------------------------------------------------------- context / output
@dataclass
class Ctx:
    """What every benchmark gets: mode, a scratch folder, and figures shared between benchmarks."""

    quick: bool
    workdir: Path
    device: torch.device = torch.device("cpu")  # where benchmarks 1 and 2 train and run teachers
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. the student's samples/s from train_step

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def quiet(self) -> None:
        """Before a timed repeat: wait briefly for a quiet machine, and record what load there was."""
        self.shared.setdefault("others_load", []).append(wait_quiet(max_wait=1.0 if self.quick else 4.0))


@dataclass
class Section:
    title: str
    body: str
    seconds: float = 0.0


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """Interquartile range relative to the median, in percent (the full range below 4 values)."""
    if len(xs) < 2:
        return 0.0
    q = np.percentile(np.asarray(xs, dtype=np.float64), [25, 75] if len(xs) >= 4 else [0, 100])
    return float(100.0 * (q[1] - q[0]) / median(xs))


def fmt_ms(s: float) -> str:
    return f"{1000 * s:.1f} ms" if s < 10 else f"{s:.1f} s"


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k/s"
    return f"{x:.0f} /s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def others_load(interval: float = 0.2) -> float:
    """Cores kept busy by other processes over ``interval`` seconds (0 where /proc is missing)."""
    try:
        b0, t0 = _cpu_ticks()
        own0 = os.times()
        time.sleep(interval)
        b1, t1 = _cpu_ticks()
        own1 = os.times()
    except (OSError, ValueError, IndexError):
        return 0.0
    cores = os.cpu_count() or 1
    busy = (b1 - b0) / max(1, t1 - t0) * cores  # cores busy, machine-wide
    own = (own1.user + own1.system - own0.user - own0.system) / interval
    return max(0.0, busy - own)


def wait_quiet(max_wait: float = 20.0, threshold: float = 0.25) -> float:
    """Wait (up to ``max_wait`` s) until other processes use less than ``threshold`` of a core.

    The machine is shared; starting each timed repeat in a quiet moment keeps bursts of
    someone else's work out of most samples. Returns the load seen last (reported, not hidden).
    """
    deadline = time.monotonic() + max_wait
    load = others_load()
    while load > threshold and time.monotonic() < deadline:
        time.sleep(0.3)
        load = others_load()
    return load


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    import numcodecs
    import zarr

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": _utils.now(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": np.__version__,
        "logitcache": f"{_utils.tool_version()} (git {commit or '?'}, uncommitted changes possible)",
        "load average at start": " ".join(f"{x:.2f}" for x in load),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)",
    }


# --------------------------------------------------------------------------- synthetic logits
PRESETS: dict[str, dict[str, float]] = {
    # tuned as described in the module docstring
    "cifar": dict(group=5, margin=9.0, margin_sd=3.0, sim=1.2),
    "imagenet": dict(group=20, margin=6.0, margin_sd=3.0, sim=2.0),
}


class SyntheticTeacher:
    """Deterministic, teacher-like logits for given labels (see the module docstring)."""

    def __init__(self, num_classes: int, preset: str | None = None, *, seed: int = 0, rank: int = 16,
                 noise: float = 1.5, offset_sd: float = 2.0) -> None:
        p = PRESETS[preset or ("cifar" if num_classes <= 100 else "imagenet")]
        self.num_classes, self.rank, self.noise, self.offset_sd = num_classes, rank, noise, offset_sd
        self.margin, self.margin_sd, self.sim = p["margin"], p["margin_sd"], p["sim"]
        g = torch.Generator().manual_seed(seed)
        groups = max(2, num_classes // int(p["group"]))
        centres = torch.randn(groups, rank, generator=g)
        member = torch.randint(0, groups, (num_classes,), generator=g)
        emb = centres[member] + 0.6 * torch.randn(num_classes, rank, generator=g)
        self.emb = emb / emb.norm(dim=1, keepdim=True) * rank**0.5
        self.seed = seed

    def labels(self, n: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed + 1)
        return torch.randint(0, self.num_classes, (n,), generator=g).numpy()

    def logits(self, labels: np.ndarray | torch.Tensor, key: int = 0) -> torch.Tensor:
        """(B, C) fp32 logits for ``labels``; ``key`` seeds the per-sample randomness."""
        y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        n = len(y)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + key + 7)
        h = self.emb[y] + 0.8 * torch.randn(n, self.rank, generator=g)
        z = (self.sim / self.rank**0.5) * (h @ self.emb.T)
        z += self.noise * torch.randn(n, self.num_classes, generator=g)
        z[torch.arange(n), y] += self.margin + self.margin_sd * torch.randn(n, generator=g)
        z += self.offset_sd * torch.randn(n, 1, generator=g)
        return z


def describe_synthetic(classes: int, n: int = 20_000) -> str:
    """One line of statistics of the synthetic logits, for the results."""
    synth = SyntheticTeacher(classes)
    labels = synth.labels(n)
    z = synth.logits(labels, key=4242)
    p = torch.softmax(z, dim=1)
    acc = float((z.argmax(dim=1) == torch.from_numpy(labels)).float().mean())
    entropy = float(-(p * torch.log_softmax(z, dim=1)).sum(dim=1).mean())
    spread_ = float((z - z.mean(dim=1, keepdim=True)).std())
    return (f"{classes} classes: top-1 {100 * acc:.1f} %, median top probability {float(p.max(dim=1).values.median()):.3f}, "
            f"mean entropy {entropy:.2f} nats, logit std within a row {spread_:.2f}")


def jpeg_folder(root: Path, shapes: Sequence[tuple[int, int]], count: int, classes: int = 4) -> Path:
    """``count`` JPEGs (quality 90) of the (height, width) ``shapes`` in turn, in ``classes`` class
    folders under ``root``; made the same every time. Smooth noise, so that file sizes and decode
    times are photo-like rather than worst case."""
    from PIL import Image

    gen = np.random.default_rng(0)
    for j in range(count):
        h, w = shapes[j % len(shapes)]
        folder = root / f"c{j % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = gen.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(folder / f"{j:03d}.jpg", quality=90)
    return root


CIFAR_VIEW = ViewSpec(kind="crop", size=32, padding=4, flip=True)


def synthetic_spec(*, num_samples: int, num_classes: int, encoding: EncodingInfo, views: int, clean: bool = True,
                   codec: CodecInfo | None = None, layout: Layout | None = None, seed: int = 0,
                   dataset: DatasetInfo | None = None, augmentation: ViewSpec = CIFAR_VIEW) -> CacheSpec:
    return CacheSpec(
        teacher=TeacherInfo(name="synthetic", weights_sha256="0" * 64, num_classes=num_classes),
        dataset=dataset or DatasetInfo(name="synthetic-logits", split="train", num_samples=num_samples,
                                       num_classes=num_classes, fingerprint="0" * 64),
        views=ViewsInfo(count=views, clean=clean, seed=seed, augmentation=augmentation.to_json()),
        encoding=encoding,
        codec=codec or CodecInfo(),
        layout=layout or Layout(chunk_samples=4096, shard_chunks=16 if num_samples > 262_144 else 0),
        batch_size=256,
    )


def fill_store(location: str | os.PathLike, spec: CacheSpec, labels: np.ndarray,
               teacher: SyntheticTeacher | Callable[[np.ndarray, int], torch.Tensor]) -> ZarrStore:
    """Write a complete store the way ``dump`` does (``ZarrStore.create``, the encoding, a
    ``BlockWriter`` of whole blocks with progress markers), from ``teacher(labels, key)`` logits."""
    return fill_stores([(location, spec)], labels, teacher)[0]


def fill_stores(targets: Sequence[tuple[str | os.PathLike, CacheSpec]], labels: np.ndarray,
                teacher: SyntheticTeacher | Callable[[np.ndarray, int], torch.Tensor]) -> list[ZarrStore]:
    """:func:`fill_store` for several stores of the same samples, views and layout (encodings and
    codecs may differ): each block's logits are generated once and encoded into every store."""
    gen = teacher.logits if isinstance(teacher, SyntheticTeacher) else teacher
    first = targets[0][1]
    n, layout, total_views = first.dataset.num_samples, first.layout, first.views.total
    per = first.dataset.rows_per_item  # one seed per item: a text sequence's positions share it
    assert all(s.dataset.num_samples == n and s.layout == layout and s.views.total == total_views
               and s.dataset.rows_per_item == per for _, s in targets)
    provenance = Provenance(tool_version=_utils.tool_version(), created_at=_utils.now())
    encodings = [get_encoding(s.encoding, s.dataset.num_classes) for _, s in targets]
    stores = [ZarrStore.create(loc, s, provenance, e.fields()) for (loc, s), e in zip(targets, encodings)]
    writers = [BlockWriter(store) for store in stores]
    for store in stores:
        store.write_labels(labels)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    for v in range(total_views):
        for b in range(layout.num_blocks(n)):
            rows = layout.block_range(b, n)
            logits = gen(labels[rows.start:rows.stop], v * 1_000_003 + b)
            items = np.arange(rows.start // per, rows.stop // per)
            seeds = view_seeds(first.views.seed, v, items)
            for (_, spec), encoding, writer in zip(targets, encodings, writers):
                arrays = encoding.encode(logits, y[rows.start:rows.stop])
                arrays["seeds"] = view_seeds(spec.views.seed, v, items) \
                    if spec.views.seed != first.views.seed else seeds
                writer.submit(v, b, rows, arrays)
    for writer in writers:
        writer.close()
    done = Provenance(**{**provenance.to_json(), "complete": True, "finished_at": _utils.now()})
    for store in stores:
        store.set_provenance(done)
    return stores
