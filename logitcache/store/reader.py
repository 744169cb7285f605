"""Read teacher information for batches of (view, sample) pairs.

Random batched reads straight from chunks are slower than a GPU trains a CIFAR student, so the
reader works on whole view slices: the first request for a view reads its rows of every field
in one sequential pass into memory (a CIFAR-100 fp16 view is 10 MB), and ``prefetch`` starts
that read for the next epoch's view in a background thread. Batches are then gathered from
memory. Views beyond the memory budget are read row-wise from their chunks instead.

No row is returned before its block's content (seeds and every field) has been checked against
the block's digest, once per block: a valid chunk at the wrong key is refused like a corrupt one.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..errors import CacheCorrupt, CacheIncomplete, CacheMismatch
from ..teacher_view import TeacherView
from ..views import ViewSpec
from .encodings import get_encoding
from .format import CacheSpec
from .zarr_store import DIGESTS, ZarrStore, read_lock

DEFAULT_MEMORY_BUDGET = int(os.environ.get("LOGITCACHE_READER_MEMORY", 8 << 30))  # bytes of view slices kept


class CacheReader:
    """A read-only, thread-safe view of a complete store.

    Args:
        location: path or URL of the store.
        check: list the store once and refuse if any chunk is missing (zarr would read a missing
            chunk as zeros); checksums of the chunks actually read are always verified.
        memory_budget: bytes of decoded view slices kept in memory.
    """

    def __init__(self, location: str | os.PathLike, *, check: bool = True, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        # Held until close() (or garbage collection): `dump --overwrite` cannot delete the store under us.
        lock = read_lock(location)
        self._unlock = weakref.finalize(self, os.close, lock) if lock is not None else None
        try:
            self.store = ZarrStore.open(location, read_only=True)
            self.spec: CacheSpec = self.store.spec
            # Parsed once, here: a spec this version cannot replay is refused before anything is read.
            self.view_spec = ViewSpec.from_json(self.spec.views.augmentation)
            if not self.store.provenance.complete:
                raise CacheIncomplete(
                    f"the dump into {location} has not finished: re-run the same `logitcache dump` command to complete it"
                )
            self.num_classes = self.spec.dataset.num_classes
            self.encoding = get_encoding(self.spec.encoding, self.num_classes)
            self._fields = [f.name for f in self.encoding.fields()]
            if check:
                missing = self.store.check_chunks(decode=False)
                if missing:
                    raise CacheCorrupt(
                        f"{len(missing)} chunk(s) missing or empty in {location}, e.g. {missing[0]}: "
                        "run `logitcache verify --repair` and the dump command again to rewrite them"
                    )
            self.labels = self.store.read_labels().astype(np.int64)
            self._digests = self.store.read(DIGESTS)
        except BaseException:  # let go at once, not when the garbage collector gets to it
            if self._unlock is not None:
                self._unlock()
            raise
        self._seeds: dict[int, np.ndarray] = {}
        self._checked: set[tuple[int, int]] = set()  # (view, block) whose content matched its digest
        self._views: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="logitcache-prefetch")
        self._view_bytes = self.encoding.raw_bytes_per_sample() * self.spec.dataset.num_samples
        self._max_views = max(0, memory_budget // max(1, self._view_bytes))

    @property
    def num_views(self) -> int:
        return self.spec.views.total

    def seeds(self, view: int) -> np.ndarray:
        """(items,) uint32 seeds of one stored view: one per dataset item (an image, or a text sequence)."""
        with self._lock:
            if view in self._seeds:
                return self._seeds[view]
        if self._max_views:
            self._slice(view)  # checks the view's blocks, keeps its seeds; training reads the view next anyway
        else:
            self._check_blocks(view, range(self.spec.layout.num_blocks(self.spec.dataset.num_samples)))
        with self._lock:
            return self._seeds[view]

    def check_labels(self, labels: np.ndarray, dataset_name: str) -> None:
        """Refuse the cache unless its labels are ``labels`` (the training data's)."""
        labels = np.asarray(labels)
        if labels.shape != self.labels.shape or not np.array_equal(labels, self.labels):
            differ = np.flatnonzero(labels != self.labels) if labels.shape == self.labels.shape else [0]
            raise CacheMismatch(
                f"the labels stored in {self.store.location} differ from {dataset_name}'s ({len(differ)} samples, "
                f"e.g. sample {int(differ[0])}): use the cache made for this data, or dump one for it"
            )

    def _check(self, view: int, block: int, data: dict[str, np.ndarray]) -> None:
        problem = self.store.block_problem(view, block, data, int(self._digests[view, block]))
        if problem:
            raise CacheCorrupt(
                f"corrupt data in {self.store.location}: {problem}. Never use it for training: run "
                "`logitcache verify --repair` and the dump command again to rewrite it"
            )

    def _check_blocks(self, view: int, blocks) -> None:
        """Read and check the blocks of a view not checked yet (the row-wise path), keeping its seeds."""
        layout, n = self.spec.layout, self.spec.dataset.num_samples
        with self._lock:
            todo = [b for b in blocks if (view, b) not in self._checked]
        for b in todo:
            self._check(view, b, self.store.read_block(view, b))
        with self._lock:
            self._checked.update((view, b) for b in todo)
            if view not in self._seeds and all((view, b) in self._checked for b in range(layout.num_blocks(n))):
                self._seeds[view] = self.store.read("seeds", view)

    def is_clean(self, view: int) -> bool:
        return self.spec.views.clean and view == 0

    # ------------------------------------------------------------------ view slices
    def _load(self, view: int) -> dict[str, np.ndarray]:
        data = {name: self.store.read(name, view) for name in self.store.block_names()}
        layout, n = self.spec.layout, self.spec.dataset.num_samples
        for b in range(layout.num_blocks(n)):
            self._check(view, b, self.store.split_block(data, b))
        with self._lock:
            self._checked.update((view, b) for b in range(layout.num_blocks(n)))
            self._seeds[view] = data.pop("seeds")
        return data

    def prefetch(self, view: int) -> None:
        """Start reading a whole view slice in the background (no-op if over budget or loaded)."""
        with self._lock:
            if self._max_views == 0 or view in self._views or view in self._pending:
                return
            self._pending[view] = self._pool.submit(self._load, view)

    def _slice(self, view: int) -> dict[str, np.ndarray] | None:
        if self._max_views == 0:
            return None
        with self._lock:
            if view in self._views:
                self._views.move_to_end(view)
                return self._views[view]
            future = self._pending.pop(view, None)
        data = future.result() if future is not None else self._load(view)
        with self._lock:
            self._views[view] = data
            while len(self._views) > self._max_views:
                self._views.popitem(last=False)
        return data

    # ------------------------------------------------------------------ batches
    def _true_labels(self, views: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """The class each pair stands for: the label, or a mixed view's larger share's (whose
        true-class logit the dump stored)."""
        spec = self.view_spec
        if not spec.mixing:
            return self.labels[samples]
        seeds = np.empty(len(samples), dtype=np.uint32)
        for v in np.unique(views):
            pick = np.flatnonzero(views == v)
            seeds[pick] = self.seeds(int(v))[samples[pick] // self.spec.dataset.rows_per_item]
        clean = (views == 0) & self.spec.views.clean
        return spec.mix(seeds, samples, clean, self.spec.dataset.num_samples).true_class(self.labels, samples)

    def read(self, views: np.ndarray, samples: np.ndarray) -> TeacherView:
        """The teacher information of each (views[j], samples[j]) pair, on the CPU, in order."""
        views = np.broadcast_to(np.asarray(views, dtype=np.int64), np.shape(samples))
        samples = np.asarray(samples, dtype=np.int64)
        if samples.size and (samples.min() < 0 or samples.max() >= self.spec.dataset.num_samples):
            raise IndexError(f"sample index out of range 0..{self.spec.dataset.num_samples - 1}")
        if views.size and (views.min() < 0 or views.max() >= self.num_views):
            raise IndexError(f"view index out of range 0..{self.num_views - 1}")
        # Allocated from the fields (not from the first view read), so that an empty batch decodes too.
        rows = {f.name: np.empty((len(samples), *f.trailing), dtype=f.dtype) for f in self.encoding.fields()}
        for v in np.unique(views):
            pick = np.flatnonzero(views == v)
            data = self._slice(int(v))
            if data is None:
                self._check_blocks(int(v), np.unique(samples[pick] // self.spec.layout.block_samples).tolist())
            part = (
                {name: arr[samples[pick]] for name, arr in data.items()}
                if data is not None
                else {name: self.store.read(name, int(v), rows=samples[pick]) for name in self._fields}
            )
            for name, arr in part.items():
                rows[name][pick] = arr
        view = self.encoding.decode(rows, torch.from_numpy(self._true_labels(views, samples)))
        # No checksum catches a NaN a teacher never produced (--no-checksum stores), and a NaN
        # would surface only as a NaN loss steps later: refuse it here, naming the pair.
        bad = (~view.finite).nonzero()
        if len(bad):
            j = int(bad[0, 0])
            raise CacheCorrupt(
                f"corrupt data in {self.store.location}: view {int(views[j])} sample {int(samples[j])} holds NaN/inf "
                "teacher logits (a dump never writes them). Never use it for training: run `logitcache verify "
                "--repair` and the dump command again to rewrite the damaged blocks"
            )
        return view

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._unlock is not None:
            self._unlock()


def check_matches(spec: CacheSpec, *, dataset_name: str, split: str, num_samples: int, num_classes: int, fingerprint: str,
                  augmentation: dict | None = None, tokenizer: str = "", seq_len: int = 0) -> None:
    """Refuse a cache made for another dataset, split, class count, sample count or augmentation;
    for text, another tokenizer or sequence length, each named."""
    d = spec.dataset
    if bool(d.tokenizer) != bool(tokenizer):
        kinds = ("a text cache", "image data") if d.tokenizer else ("an image cache", "text data")
        raise CacheMismatch(f"cache ({d.name}) is {kinds[0]} but the training data ({dataset_name}) is {kinds[1]}: "
                            f"use a cache dumped from {dataset_name}")
    if d.tokenizer != tokenizer:
        raise CacheMismatch(
            f"cache ({d.name}) was tokenised with tokenizer {d.tokenizer[:12]} but the "
            f"student's is {tokenizer[:12]}: cross-tokenizer distillation is not "
            "supported; use a student with the teacher's tokenizer (and vocabulary), or dump a cache with it"
        )
    wanted = {
        "sequence length (--seq-len)": (d.seq_len, seq_len),
        "split": (d.split, split),
        "number of classes": (d.num_classes, num_classes),
        "number of samples": (d.num_samples, num_samples),
        "dataset fingerprint": (d.fingerprint[:16], fingerprint[:16]),
    }
    if augmentation is not None:
        wanted["augmentation"] = (spec.views.augmentation, augmentation)
    diffs = [f"{what}: cache has {a}, training data has {b}" for what, (a, b) in wanted.items() if a != b]
    if diffs:
        raise CacheMismatch(
            f"cache ({d.name}, {d.split}) does not match the training data ({dataset_name}, {split}): "
            + "; ".join(diffs)
            + ". Use the cache made for this data, or dump one for it"
        )
