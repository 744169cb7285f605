"""``info``: what a cache is, what it costs on disk, and what its teacher's logits look like."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import BadInput
from .evaluate import expected_calibration_error
from .store.reader import CacheReader
from .store.zarr_store import ZarrStore

_BATCH = 65536


@dataclass
class ViewStats:
    """Statistics of the teacher over a set of stored views."""

    views: list[int]
    samples: int
    # None for a sampled cache, which stores draws, not the teacher's argmax or its confidence.
    misinstruction_rate: float | None  # share of (view, sample) pairs whose teacher argmax is not the label
    mean_entropy: float | None  # nats; exact for full logits, of the rebuilt distribution for top-k
    ece: float | None  # expected calibration error of the top-1 confidence (exact for full and top-k)
    mean_target_prob: float  # exact for every encoding
    mean_nll: float  # nats: mean -log p(true class), exact for every encoding (text: the teacher's log-perplexity)

    @property
    def perplexity(self) -> float:
        """exp(mean NLL): for text, the teacher's perplexity on the data."""
        return math.exp(min(self.mean_nll, 700.0))


@dataclass
class CacheInfo:
    location: str
    spec: dict[str, Any]
    provenance: dict[str, Any]
    bytes_on_disk: int
    raw_bytes: int
    pairs: int  # stored (view, sample) pairs
    clean: ViewStats | None = None
    augmented: ViewStats | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.bytes_on_disk if self.bytes_on_disk else float("nan")

    @property
    def bytes_per_pair(self) -> float:
        return self.bytes_on_disk / self.pairs


def distinct_views(views: int, epochs: int) -> dict[str, float]:
    """Distinct stored views per sample that a run of ``epochs`` epochs shows, by ``--view-policy``:
    ``cycle`` shows view e mod V in epoch e (a fresh view every epoch until the views run out);
    ``random`` draws one per epoch, so repeats come sooner (the expected count)."""
    if epochs < 1:
        raise BadInput(f"--epochs must be >= 1, got {epochs}")
    return {"cycle": float(min(epochs, views)), "random": views * (1 - (1 - 1 / views) ** epochs)}


def raw_bytes(store: ZarrStore) -> int:
    """Uncompressed bytes of every data array (labels, seeds, encoding fields)."""
    total = 0
    for name in store.array_names():
        arr = store.array(name)
        total += int(np.prod(arr.shape, dtype=np.int64)) * arr.dtype.itemsize
    return total


def cache_info(location: str | os.PathLike, *, stats: bool = True, progress: bool = True) -> CacheInfo:
    """Metadata, size and (with ``stats``) teacher statistics of a store.

    Statistics need a complete store; metadata and sizes are reported for any store.
    """
    store = ZarrStore.open(location, read_only=True)
    spec = store.spec
    info = CacheInfo(
        location=str(location),
        spec=spec.to_json(),
        provenance=store.provenance.to_json(),
        bytes_on_disk=store.nbytes_stored(),
        raw_bytes=raw_bytes(store),
        pairs=spec.views.total * spec.dataset.num_samples,
    )
    if not store.provenance.complete:
        info.notes.append("the dump has not finished: re-run the same dump command to complete it")
        return info
    if not stats:
        return info
    reader = CacheReader(location)
    views = spec.views
    with tqdm(total=info.pairs, unit="pair", unit_scale=True, desc="info", disable=not progress) as bar:
        if views.clean:
            info.clean = _view_stats(reader, [0], bar)
        if views.count:  # text has only its clean view
            info.augmented = _view_stats(reader, list(views.augmented), bar)
    reader.close()
    if spec.encoding.kind == "sampled":
        info.notes.append("a sampled cache stores draws, not the teacher's argmax or confidence: only p(true class) "
                          "is reported (exact)")
    if spec.encoding.kind == "topk":
        info.notes.append("entropy is that of the rebuilt distribution (the rest spread evenly); accuracy, "
                          "mis-instruction and ECE are exact")
    return info


def _view_stats(reader: CacheReader, views: list[int], bar: tqdm) -> ViewStats:
    n = reader.spec.dataset.num_samples
    wrong = entropy = target_prob = nll = 0.0
    confidences, corrects = [], []
    for v in views:
        for s in range(0, n, _BATCH):
            idx = np.arange(s, min(s + _BATCH, n))
            tv = reader.read(np.full(len(idx), v), idx)
            log_target = tv.target_log_prob
            target_prob += float(log_target.exp().sum())
            nll -= float(log_target.double().sum())
            bar.update(len(idx))
            if tv.kind == "sampled":
                continue
            log_p = tv.log_probs()
            correct = tv.argmax == tv.target
            wrong += float((~correct).sum())
            entropy += float(-(log_p.exp() * log_p).sum())
            # Top-1 confidence is exact for both encodings: exp(z_max - lse).
            confidences.append(log_p.max(dim=1).values.exp())
            corrects.append(correct)
    count = n * len(views)
    if not corrects:  # a sampled cache: only the true class's probability is known
        return ViewStats(views=views, samples=count, misinstruction_rate=None, mean_entropy=None, ece=None,
                         mean_target_prob=target_prob / count, mean_nll=nll / count)
    return ViewStats(
        views=views,
        samples=count,
        misinstruction_rate=wrong / count,
        mean_entropy=entropy / count,
        ece=expected_calibration_error(torch.cat(confidences), torch.cat(corrects)),
        mean_target_prob=target_prob / count,
        mean_nll=nll / count,
    )
