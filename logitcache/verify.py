"""``verify``: prove a cache still says what its teacher says.

Three checks. (1) Integrity: every chunk of every array is present and decodes against its
checksum. (2) Provenance: the given teacher weights hash to the cache's ``weights_sha256`` and
the dataset split has the cache's fingerprint; every stored seed equals the seed derived from
(dump seed, view, sample). (3) Replay: for random (view, sample) pairs the stored seed is
replayed, the teacher recomputes the logits, these are encoded and decoded exactly as the dump
did, and the result must equal the stored one within the encoding's tolerance (one rounding
step of its dtype plus float noise from a different batch composition).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from . import _utils
from .datasets import open_dataset
from .errors import CacheMismatch
from .loader import ViewBatch, augmented_batches
from .models import weights_sha256
from .store.encodings import get_encoding
from .store.zarr_store import DONE, ZarrStore, flock
from .teacher import build_teacher
from .views import ViewSpec, view_seeds

# Relative tolerance per stored dtype (one rounding step) and an absolute floor for float noise.
_RTOL = {"fp32": 1e-5, "fp16": 2.0**-10, "bf16": 2.0**-7, "q8": 0.0}
_ATOL = {"fp32": 1e-4, "fp16": 1e-3, "bf16": 1e-2, "q8": 1 / 16 + 1e-3}


@dataclass
class VerifyReport:
    location: str
    chunks_checked: int = 0
    pairs_checked: int = 0
    max_abs_error: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    location: str | os.PathLike,
    *,
    samples: int = 256,
    checkpoint: str | None = None,
    random_init: bool = False,
    data_root: str | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 256,
    repair: bool = False,
) -> VerifyReport:
    """Check a store; see the module docstring. ``samples=0`` checks integrity only.

    With ``repair``, blocks holding bad chunks are marked not done (and the store incomplete),
    so that re-running the original dump command rewrites exactly those blocks.
    """
    store = ZarrStore.open(location, read_only=not repair)
    spec = store.spec
    report = VerifyReport(location=str(location))
    names = store.array_names()
    problems = store.check_chunks(names, decode=True)
    report.chunks_checked = sum(len(store.storage_keys(n)) for n in names)
    report.problems += [str(p) for p in problems]
    state = store.progress()
    if not (state == DONE).all():
        report.problems.append(f"{int((state != DONE).sum())} blocks never finished writing: re-run the dump command")
    if repair and problems:
        with flock(location):  # never under a running dump, whose markers and metadata it would contradict
            _repair(store, problems)
        report.problems.append("repair: marked the damaged blocks for rewriting; now re-run the dump command")
    if samples <= 0 or problems or not (state == DONE).all():
        return report

    dev = _utils.resolve_device(device)
    teacher = build_teacher(spec.teacher.name, spec.teacher.num_classes, checkpoint=checkpoint,
                            random_init=random_init, seed=spec.views.seed, device=dev)
    if weights_sha256(teacher) != spec.teacher.weights_sha256:
        raise CacheMismatch(
            f"these teacher weights are not the ones {location} was dumped with (sha256 differs): "
            "pass the same --checkpoint as the dump"
        )
    dataset = open_dataset(spec.dataset.name, spec.dataset.split, data_root=data_root)
    if dataset.fingerprint != spec.dataset.fingerprint:
        raise CacheMismatch(
            f"dataset {spec.dataset.name} ({spec.dataset.split}) under the given root has other content than the "
            "cache was dumped from (fingerprint differs): point --data-root at the same data"
        )
    n, total_views = spec.dataset.num_samples, spec.views.total
    for v in range(total_views):
        stored = store.read("seeds", v)
        if not np.array_equal(stored, view_seeds(spec.views.seed, v, np.arange(n))):
            report.problems.append(f"view {v}: stored seeds differ from the seeds derived from the dump seed")
    rng = np.random.default_rng(seed)
    pick = rng.choice(total_views * n, size=min(samples, total_views * n), replace=False)
    views, idx = pick // n, pick % n
    _replay(store, dataset, teacher, views, idx, dev, batch_size, report)
    return report


def _replay(store: ZarrStore, dataset, teacher, views: np.ndarray, idx: np.ndarray, device: torch.device,
            batch_size: int, report: VerifyReport) -> None:
    spec = store.spec
    encoding = get_encoding(spec.encoding, spec.dataset.num_classes)
    view_spec = ViewSpec.from_json(spec.views.augmentation)
    fields = [f.name for f in encoding.fields()]
    labels = torch.from_numpy(dataset.labels)
    rtol, atol = _RTOL[spec.encoding.dtype], _ATOL[spec.encoding.dtype]
    batches = [
        ViewBatch(
            samples=idx[s : s + batch_size],
            seeds=view_seeds(spec.views.seed, views[s : s + batch_size], idx[s : s + batch_size]),
            clean=(views[s : s + batch_size] == 0) & spec.views.clean,
        )
        for s in range(0, len(idx), batch_size)
    ]
    offset = 0
    for batch, images in augmented_batches(dataset, view_spec, batches, device=device):
        v = views[offset : offset + len(batch)]
        offset += len(batch)
        with torch.inference_mode():
            fresh_logits = teacher(images).float().cpu()
        y = labels[batch.samples]
        fresh = encoding.decode(encoding.encode(fresh_logits, y), y)
        cached = encoding.decode(_stored_rows(store, fields, v, batch.samples), y)
        _compare(fresh, cached, fresh_logits, v, batch.samples, rtol, atol, spec.encoding.kind == "topk", report)
        report.pairs_checked += len(batch)


def _stored_rows(store: ZarrStore, fields: list[str], views: np.ndarray, samples: np.ndarray) -> dict[str, np.ndarray]:
    rows: dict[str, np.ndarray] = {}
    for v in np.unique(views):
        pick = np.flatnonzero(views == v)
        order = np.argsort(samples[pick])  # orthogonal selection wants increasing indices
        for name in fields:
            part = store.read(name, int(v), rows=samples[pick][order])
            if name not in rows:
                rows[name] = np.empty((len(samples), *part.shape[1:]), dtype=part.dtype)
            rows[name][pick[order]] = part
    return rows


def _compare(fresh, cached, fresh_logits, views, samples, rtol, atol, topk, report) -> None:
    err = (fresh.logits - cached.logits).abs()
    tol = atol + rtol * fresh.logits.abs()
    bad = (err > tol).any(dim=1)
    if topk:
        same_classes = (fresh.topk_indices.sort(dim=1).values == cached.topk_indices.sort(dim=1).values).all(dim=1)
        # A different class set is only fine when it is a near-tie at the k-th place.
        kth = fresh_logits.gather(1, fresh.topk_indices[:, -1:])
        ours = fresh_logits.gather(1, cached.topk_indices)
        tie = ((kth - ours) <= atol + rtol * kth.abs()).all(dim=1)
        bad = torch.where(same_classes, bad, ~tie)
    report.max_abs_error = max(report.max_abs_error, float(err.max()) if err.numel() else 0.0)
    for j in bad.nonzero()[:, 0].tolist()[:10]:
        report.problems.append(
            f"view {int(views[j])} sample {int(samples[j])}: stored logits differ from the replayed teacher "
            f"(max |diff| {float(err[j].max()):.3g})"
        )


def _repair(store: ZarrStore, problems) -> None:
    from .store.format import Provenance

    for p in problems:
        if p.array not in ("labels", "progress"):  # labels are rewritten by every dump run
            store.mark(*store.block_of(p.key), 0)
    store.set_provenance(Provenance(**{**store.provenance.to_json(), "complete": False, "finished_at": None}))
