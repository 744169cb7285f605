"""Stage one: run a teacher over seeded views of a dataset and store its logits.

The work is cut into blocks (view v, a block of samples); each block is augmented from its
stored seeds, run through the teacher in fixed batches, encoded and handed to a writer thread
that writes it chunk-aligned and marks it done. A dump that is killed resumes from the blocks
not marked done, and because a block's content depends only on (spec, v, block), the resumed
store equals an uninterrupted one array for array. ``shard=(i, n)`` lets n processes write
disjoint blocks of one store; whichever finds every block done finalises it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import _utils
from .cache_home import location_in_home
from .datasets import Dataset, ImageDataset, open_dataset
from .distributed import local_device, torchrun_rank
from .errors import BadInput, CacheCorrupt, CacheMismatch, CacheOutdated, DataError, NonFiniteLogits
from .loader import ViewBatch, augmented_batches, true_labels
from .models import ModelInput, fit_to_model, weights_sha256
from .models.inputs import first_logits
from .precision import Compute
from .store.encodings import get_encoding
from .store.format import (
    CacheSpec,
    CodecInfo,
    DatasetInfo,
    EncodingInfo,
    Layout,
    Provenance,
    TeacherInfo,
    ViewsInfo,
)
from .store.writer import BlockWriter
from .store.zarr_store import DONE, WRITING, ZarrStore, _local_path, flock
from .teacher import build_teacher, teacher_dataset
from .views import NO_AUGMENTATION, ViewSpec, strong_options, view_seeds

AUTO_SHARD_SAMPLES = 262_144  # above this many samples, shard by default: fewer, larger files
# encoding="auto": every logit up to this many classes (full fp16 at C = 32 is 72 B a pair,
# top-10 is 44 B), the top DEFAULT_TOPK above (a top-10 of 10 classes would be no top-k at all).
AUTO_FULL_MAX_CLASSES = 32
DEFAULT_TOPK = 10
DEFAULT_VIEWS = 8
DEFAULT_CHUNK_SAMPLES = 4096


@dataclass(frozen=True, kw_only=True)
class DumpConfig:
    """Everything ``dump`` needs; the CLI builds one from its options."""

    teacher: str
    dataset: str
    out: str | None = None  # None: a content-addressed name in the cache home
    checkpoint: str | None = None
    random_init: bool = False
    data_root: str | None = None
    download: bool = False
    split: str = "train"
    views: int | None = None  # None: DEFAULT_VIEWS for images; text has only its clean view
    seq_len: int | None = None  # text: tokens per packed sequence
    clean_view: bool = True
    augmentation: str | None = None  # None: the dataset's default training augmentation
    # The teacher's normalisation (1 or 3 values each); None: its own config's (timm) or the dataset's.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Strong augmentation and mixing on top of it, as ViewSpec's fields of those names (timm's flags).
    strong: dict[str, Any] = field(default_factory=dict)
    encoding: str = "auto"  # auto, full, topk or sampled; auto: full up to AUTO_FULL_MAX_CLASSES classes, else top-k
    topk: int | None = None  # k of a top-k encoding (auto with a k means top-k); None: DEFAULT_TOPK
    dtype: str | None = None  # None: fp16 for full and top-k; sampled stores only fp32
    samples: int = 50  # sampled: draws per (view, sample)
    sample_temperature: float = 1.0  # sampled: temperature of the softmax drawn from
    codec: str = "blosc-zstd-5"
    checksum: bool = True
    chunk_samples: int | None = None  # rows per chunk; None: DEFAULT_CHUNK_SAMPLES (whole sequences for text)
    shard_chunks: int | None = None  # None: auto (16 chunks per shard above AUTO_SHARD_SAMPLES)
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # of the teacher's forward (autocast); the stored dtype stays ``dtype``
    channels_last: bool = False
    batch_size: int = 256
    workers: int = 2
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    finalize_only: bool = False  # only check that every block is written and mark the store complete
    progress: bool = True


@dataclass
class DumpResult:
    """What a dump did, for the CLI and the benchmarks."""

    location: str
    spec: CacheSpec
    complete: bool
    blocks_written: int = 0
    blocks_skipped: int = 0
    samples_written: int = 0
    seconds: float = 0.0
    teacher_seconds: float = 0.0
    teacher_test_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples_written / self.seconds if self.seconds else 0.0


def build_spec(config: DumpConfig, dataset: Dataset, teacher: nn.Module, inp: ModelInput | None,
               compute: Compute) -> CacheSpec:
    """The store identity for a config; every check that can fail runs before any write.

    ``dataset`` is the one the teacher sees, fitted to its input configuration ``inp`` where it has
    one (``models.fit_to_model``): its default view and normalisation are then the teacher's."""
    views, chunk = _views_and_chunks(config, dataset, inp)
    encoding = resolve_encoding(config, dataset.num_classes)
    n = len(dataset.labels)  # rows: images, or token positions
    shard_chunks = config.shard_chunks
    if shard_chunks is None:
        shard_chunks = 16 if n > AUTO_SHARD_SAMPLES else 0
    described = dataset.describe()
    return CacheSpec(
        teacher=TeacherInfo(name=config.teacher, weights_sha256=weights_sha256(teacher),
                            num_classes=_num_outputs(teacher, dataset, ViewSpec.from_json(views.augmentation),
                                                    config.teacher, compute), input=inp.to_json() if inp else {},
                            tokenizer=described.get("tokenizer", "")),
        dataset=DatasetInfo(**described),
        views=views,
        encoding=encoding,
        codec=CodecInfo.parse(config.codec) if config.checksum else _without_checksum(CodecInfo.parse(config.codec)),
        layout=Layout(chunk_samples=chunk, shard_chunks=shard_chunks),
        batch_size=config.batch_size,
        precision=compute.precision,
        channels_last=compute.channels_last,
    )


def _views_and_chunks(config: DumpConfig, dataset: Dataset, inp: ModelInput | None) -> tuple[ViewsInfo, int]:
    """The stored views and the rows per chunk. Text has one clean view (nothing to augment) and
    chunks of whole sequences."""
    if dataset.train_view is NO_AUGMENTATION:
        given = [opt for opt, used in (("--views", config.views not in (None, 0)), ("--augment", config.augmentation),
                                       ("--no-clean-view", not config.clean_view),
                                       (strong_options(config.strong), config.strong),
                                       ("--mean/--std", config.mean is not None or config.std is not None)) if used]
        if given:
            raise BadInput(f"{dataset.name} is text, stored as one clean view of token rows: drop {', '.join(given)}")
        per = dataset.rows_per_item
        chunk = config.chunk_samples or per * max(1, round(DEFAULT_CHUNK_SAMPLES / per))
        return ViewsInfo(count=0, clean=True, seed=config.seed, augmentation={}), chunk
    view_spec = ViewSpec.parse(config.augmentation) if config.augmentation else dataset.train_view
    if inp is not None and config.augmentation:  # the user's size; the clean view's crop share stays the model's
        view_spec = inp.view(view_spec, size=view_spec.size)
    view_spec = dataclasses.replace(view_spec, **config.strong)
    if view_spec.mixing and len(dataset.labels) < 2:  # no partner: every view would stay unmixed
        raise BadInput(f"--mixup/--cutmix mix each view with another sample, and {dataset.name} has one: drop them")
    count = DEFAULT_VIEWS if config.views is None else config.views
    views = ViewsInfo(count=count, clean=config.clean_view, seed=config.seed, augmentation=view_spec.to_json())
    return views, config.chunk_samples or DEFAULT_CHUNK_SAMPLES


def resolve_encoding(config: DumpConfig, num_classes: int) -> EncodingInfo:
    """The encoding a config stores: ``auto`` picks full logits for up to
    ``AUTO_FULL_MAX_CLASSES`` classes and the top ``DEFAULT_TOPK`` above, unless a k (or q8,
    a top-k dtype) is given."""
    kind = config.encoding
    if kind == "auto":  # q8 exists only as a top-k encoding
        few = num_classes <= AUTO_FULL_MAX_CLASSES and config.dtype != "q8"
        kind = "full" if config.topk is None and few else "topk"
    dtype = config.dtype or "fp16"
    if kind == "full":
        return EncodingInfo(kind="full", dtype=dtype)
    if kind == "topk":
        return EncodingInfo(kind="topk", dtype=dtype, k=DEFAULT_TOPK if config.topk is None else config.topk)
    if kind == "sampled":
        if config.topk is not None:
            raise BadInput("--sample and --topk exclude each other: choose one encoding")
        if config.dtype not in (None, "fp32"):
            raise BadInput(f"--sample stores class counts and fp32 scalars, there is no --dtype {config.dtype}: drop --dtype")
        return EncodingInfo(kind="sampled", dtype="fp32", samples=config.samples, temperature=config.sample_temperature)
    raise BadInput(f"unknown encoding {config.encoding!r}: use auto, topk, full or sampled")


def _without_checksum(codec: CodecInfo) -> CodecInfo:
    return CodecInfo(compressor=codec.compressor, cname=codec.cname, clevel=codec.clevel, shuffle=codec.shuffle, checksum=False)


def _num_outputs(model: nn.Module, dataset: ImageDataset, view: ViewSpec, name: str, compute: Compute) -> int:
    logits = first_logits(model, dataset, view, f"teacher {name}", compute)
    # e.g. a checkpoint with NaN weights, or one that overflows fp16: refused before any write. The
    # encoding is not chosen yet (it depends on the class count): what every encoding refuses, a
    # NaN/+inf reaching the logsumexp; the block's encoding checks what it stores.
    bad = ~torch.isfinite(torch.logsumexp(logits.float().flatten(0, -2), dim=1))
    if bad.any():
        refuse_non_finite(int(bad.nonzero()[0, 0]), compute, np.zeros(1, dtype=np.int64), "unaugmented",
                          "nothing was written", fp32=lambda row: first_logits(model, dataset, view, f"teacher {name}"))
    return int(logits.shape[-1])


def _check_fits_on_disk(spec: CacheSpec, path) -> None:
    """Refuse, before anything is written, a full-logit store whose raw size exceeds the free disk
    (a language model's vocabulary makes --full grow as rows x V), saying how big it would be."""
    if spec.encoding.kind != "full":
        return
    itemsize = 4 if spec.encoding.dtype == "fp32" else 2
    size = spec.views.total * spec.dataset.num_samples * spec.dataset.num_classes * itemsize
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    free = shutil.disk_usage(existing).free if existing is not None else None
    if free is not None and size > free:
        raise BadInput(
            f"--full would store {_utils.human_bytes(size)} ({spec.views.total * spec.dataset.num_samples:,} rows x "
            f"{spec.dataset.num_classes:,} logits x {itemsize} B before compression) but {existing} has "
            f"{_utils.human_bytes(free)} free: store --topk K (the exact next-token probability and the mass "
            "outside the top-k are kept), or --sample N (nothing was written)"
        )


def _check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise BadInput(f"--shard {index}/{count} is invalid: use I/N with 0 <= I < N")


def dump(config: DumpConfig) -> DumpResult:
    """Run stage one; see the module docstring. Returns what was done."""
    _check_shard(config.shard)
    if config.batch_size < 1 or (config.chunk_samples is not None and config.chunk_samples < 1):
        raise BadInput("--batch-size and --chunk-samples must be >= 1")
    device = local_device(_utils.resolve_device(config.device))
    compute = Compute.on(device, config.precision, config.channels_last)
    dataset = open_dataset(config.dataset, config.split, data_root=config.data_root, download=config.download,
                           model=config.teacher, seq_len=config.seq_len)
    teacher = compute.model(build_teacher(
        config.teacher, dataset.num_classes, checkpoint=config.checkpoint, random_init=config.random_init,
        seed=config.seed, device=device,
    ))
    dataset, inp = fit_to_model(dataset, config.teacher, mean=config.mean, std=config.std)
    spec = build_spec(config, dataset, teacher, inp, compute)
    option = "--out" if config.out is not None else "LOGITCACHE_HOME"
    if config.out is None:  # file it in the cache home under a content-addressed name
        config = dataclasses.replace(config, out=location_in_home(spec))
    _check_out(config.out)
    if (local := _local_path(config.out)) is not None:
        _utils.check_output_location(local, option)
        _check_fits_on_disk(spec, local)
    if config.finalize_only:
        return _finalize_only(config, spec, teacher, device)
    index, count = config.shard
    # A plain dump holds the store exclusively; shard writers share it, each holding its own shard.
    with flock(config.out, shared=count > 1), flock(config.out, f"-shard-{index}-of-{count}"):
        store, notes = _open_or_create(config, spec, dataset.labels)
        result = _run(config, store, dataset, teacher, device)
        result.notes[:0] = notes
        if config.shard == (0, 1) or bool((store.progress() == DONE).all()):
            finalize(config.out, teacher=teacher, dataset_name=config.dataset, data_root=config.data_root,
                     device=device, result=result)
    ranks = torchrun_rank()
    if ranks is not None and ranks[0] != 0:  # torchrun's processes share one terminal: rank 0 speaks for them
        result.notes = [n for n in result.notes if not n.startswith(_ONCE)]
    return result


def _finalize_only(config: DumpConfig, spec: CacheSpec, teacher: nn.Module, device: torch.device) -> DumpResult:
    if not ZarrStore.exists(config.out):
        raise BadInput(f"nothing to finalize: {config.out} holds no store; run the dump (or its shards) first")
    store = ZarrStore.open(config.out, read_only=True)
    if store.spec != spec:
        diffs = "; ".join(store.spec.differences(spec)[:4])
        raise CacheMismatch(f"{config.out} was dumped with other settings ({diffs}): finalize with the same options")
    missing = int((store.progress() != DONE).sum())
    if missing:
        raise BadInput(f"cannot finalize {config.out}: {missing} blocks are not written yet; run the shards that "
                       "write them (the same command with their --shard I/N) first")
    result = DumpResult(location=config.out, spec=spec, complete=False)
    finalize(config.out, teacher=teacher, dataset_name=config.dataset, data_root=config.data_root, device=device,
             result=result)
    return result


def _check_out(out: str) -> None:
    """Refuse an --out that is a file or a folder (or prefix) holding something other than a store,
    before anything is written there."""
    path = _local_path(out)
    if path is not None and path.is_file():
        raise BadInput(f"{path} exists and is not a logitcache store (it is a file): choose another --out "
                       "(nothing was written)")
    if ZarrStore.exists(out):
        return
    # Before its zarr.json, a dump leaves only lock files and the temporary files of a killed first write.
    foreign = ZarrStore.foreign_entries(out)
    if foreign:
        raise BadInput(f"{out} exists and is not a logitcache store (it holds {', '.join(foreign[:4])}"
                       f"{'...' if len(foreign) > 4 else ''}): choose another --out (nothing was written)")


# Notes that every shard would repeat: under torchrun only rank 0 prints them.
_ONCE = ("resuming:", "augmentation:", "teacher input:")


def _open_or_create(config: DumpConfig, spec: CacheSpec, labels: np.ndarray) -> tuple[ZarrStore, list[str]]:
    """Resume, join, replace or create the store; write its labels. Under the metadata lock, which
    finalize also holds, so that it can clear temporary files no live writer is using."""
    fields = get_encoding(spec.encoding, spec.dataset.num_classes).fields()
    with flock(config.out, "-meta", wait=True):  # concurrent shard writers create it once
        if config.shard[1] == 1:  # the only writer: files a killed run left half-written can go
            ZarrStore.remove_partial_writes(config.out)
        store, notes = _reuse(config, spec, fields) if ZarrStore.exists(config.out) else (None, [])
        if store is None:
            provenance = Provenance(tool_version=_utils.tool_version(), created_at=_utils.now())
            store = ZarrStore.create(config.out, spec, provenance, fields)
            view_spec = ViewSpec.from_json(spec.views.augmentation)
            notes.append(f"augmentation: {view_spec.describe()}")
            if spec.teacher.input:
                notes.append(f"teacher input: {ModelInput.from_json(spec.teacher.input).describe(view_spec)}")
        store.write_labels(labels)
    return store, notes


def _reuse(config: DumpConfig, spec: CacheSpec, fields: list) -> tuple[ZarrStore | None, list[str]]:
    """The existing store to write into, or None after deleting it (with notes saying why).

    Under ``--shard`` every shard runs the same ``--overwrite`` command: the first replaces a
    store of other settings, and the others (and any later re-run) join the store of this spec
    instead of deleting what was written into it, since its blocks are a function of the spec.
    """
    try:
        existing = ZarrStore.open(config.out, read_only=False)
    except (CacheCorrupt, CacheOutdated) as e:  # a logitcache store all the same, which --overwrite replaces
        if not config.overwrite:
            raise
        ZarrStore.open(config.out, read_only=False, checked=False).delete()
        return None, [f"--overwrite: replaced {config.out}, which could not be used ({type(e).__name__})"]
    sharded = config.shard[1] > 1
    if existing.spec == spec and (sharded or not config.overwrite):
        existing.ensure_arrays(fields)  # a creation that was killed half-way
        if config.overwrite:
            state = "complete: kept" if existing.provenance.complete else "joined"
            return existing, [(f"--overwrite under --shard: {config.out} already holds a store of these settings "
                               f"({state}); it is replaced only when its settings differ (delete it to dump it afresh)")]
        return existing, []
    diffs = "; ".join(existing.spec.differences(spec)[:4])
    if existing.spec == spec:
        note = f"--overwrite: replaced {config.out} with a fresh dump"
    elif config.overwrite:
        note = f"--overwrite: replaced {config.out}, which was made with other settings ({diffs})"
    elif not sharded and not existing.provenance.complete and not (existing.progress() == DONE).any():
        # Nothing of it is worth keeping: e.g. a dump refused on its first block (fp16 overflow) whose
        # message suggests this very command with another --dtype.
        note = f"replaced {config.out}: an unfinished store of other settings ({diffs}) with no block written"
    else:
        raise CacheMismatch(
            f"{config.out} holds a cache made with other settings ({diffs}): "
            "pass --overwrite to replace it, or choose another --out"
        )
    existing.delete()
    return None, [note]


def _pending_blocks(store: ZarrStore, shard: tuple[int, int]) -> tuple[list[tuple[int, int]], int, int]:
    """(view, block) pairs this shard must write, how many of its blocks are marked done (by earlier
    runs: this shard's blocks are written by nobody else) and how many it has."""
    index, count = shard
    state = store.progress()
    views, blocks = state.shape
    mine = [(v, b) for v in range(views) for b in range(blocks) if (v * blocks + b) % count == index]
    done = [(v, b) for v, b in mine if state[v, b] == DONE]
    # Re-check what earlier runs wrote: a block marked done must decode against its checksums.
    names = ["seeds", *(f.name for f in get_encoding(store.spec.encoding, store.spec.dataset.num_classes).fields())]
    bad: set[tuple[int, int]] = set()
    if done:
        problems = store.check_chunks(names, views=sorted({v for v, _ in done}), decode=True)
        bad = {store.block_of(p.key) for p in problems}
    for v, b in bad:  # unmarked at once: no other shard may finalize the store while it is rewritten
        store.mark(v, b, WRITING)
    pending = [(v, b) for v, b in mine if state[v, b] != DONE or (v, b) in bad]
    return pending, len(done), len(mine)


def _run(config: DumpConfig, store: ZarrStore, dataset: Dataset, teacher: nn.Module, device: torch.device) -> DumpResult:
    spec = store.spec
    n, layout = spec.dataset.num_samples, spec.layout
    view_spec = ViewSpec.from_json(spec.views.augmentation)
    encoding = get_encoding(spec.encoding, spec.dataset.num_classes)
    compute = Compute.on(device, spec.precision, spec.channels_last)
    pending, done, mine = _pending_blocks(store, config.shard)
    result = DumpResult(location=config.out, spec=spec, complete=False, blocks_skipped=mine - len(pending))
    if done:
        part = "" if config.shard[1] == 1 else f" of shard {config.shard[0]}/{config.shard[1]}"
        result.notes.append(f"resuming: {done} of {mine} blocks{part} already done")

    per = dataset.rows_per_item  # a block holds whole items (sequences for text)

    def batches():
        for v, b in pending:
            rows = layout.block_range(b, n)
            idx = np.arange(rows.start // per, rows.stop // per)
            seeds = view_seeds(spec.views.seed, v, idx)
            clean = np.full(len(idx), spec.views.clean and v == 0)
            for s in range(0, len(idx), spec.batch_size):
                sl = slice(s, s + spec.batch_size)
                yield ViewBatch(samples=idx[sl], seeds=seeds[sl], clean=clean[sl])

    total = sum(len(layout.block_range(b, n)) for _, b in pending)
    bar = tqdm(total=total, unit="tok" if spec.dataset.seq_len else "img", unit_scale=True, desc=f"dump {spec.teacher.name}", disable=not config.progress)
    writer = BlockWriter(store)
    start = time.perf_counter()
    stream = augmented_batches(dataset, view_spec, batches(), device=device, workers=config.workers)
    try:
        for v, b in pending:
            rows = layout.block_range(b, n)
            parts, seeds = [], []  # seeds: one per item, as the batches carry them
            while sum(len(p) for p in seeds) * per < len(rows):
                batch, inputs = next(stream)
                t0 = time.perf_counter()
                batch_rows = dataset.rows(batch.samples)
                # Every row's own seed, computed (never stored): what the sampled encoding draws from.
                row_seeds = view_seeds(spec.views.seed, v, batch_rows)
                with torch.inference_mode():
                    logits = compute.forward(teacher, inputs).flatten(0, -2)  # (rows, classes): text's (B, L, V) too
                labels = torch.from_numpy(true_labels(dataset, view_spec, batch))
                try:  # the encoding checks what it stores: (rows, k + 2) numbers, not (rows, V)
                    parts.append(encoding.encode_pairs(logits, labels, row_seeds))
                except NonFiniteLogits as e:
                    refuse_non_finite(e.row, compute, batch_rows, f"view {v}", "the block was not written",
                                      fp32=lambda row: teacher(compute.inputs(inputs[row // per : row // per + 1])))
                result.teacher_seconds += time.perf_counter() - t0
                seeds.append(batch.seeds)
                bar.update(len(batch_rows))
            arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            arrays["seeds"] = np.concatenate(seeds)
            writer.submit(v, b, rows, arrays)
            result.blocks_written += 1
            result.samples_written += len(rows)
        writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()  # blocks already handed over are written before the caller lets go of the store's lock
        raise
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def refuse_non_finite(row: int, compute: Compute, samples: np.ndarray, where: str, consequence: str, *,
                      fp32: Callable[[int], torch.Tensor]) -> None:
    """Refuse a batch of teacher logits whose ``row`` holds NaN/inf, naming its (view, sample): a
    precision's overflow (``fp32(row)``, that row's forward in fp32, is finite) with the precision
    to use instead, anything else as the checkpoint's or the data's problem. Never stored: the
    caller has not written it.

    Raises:
        DataError: always.
    """
    what = f"teacher produced NaN/inf logits for sample {int(samples[row])} ({where}); {consequence}"
    if compute.amp and bool(torch.isfinite(fp32(row)).all()):
        raise DataError(f"{what}: {compute.overflow_hint()}")
    raise DataError(f"{what}: check the checkpoint (was it trained to convergence?) and the input data")


def finalize(
    location: str,
    *,
    teacher: nn.Module | None = None,
    dataset_name: str | None = None,
    data_root: str | None = None,
    checkpoint: str | None = None,
    random_init: bool = False,
    device: torch.device | str = "cpu",
    result: DumpResult | None = None,
) -> bool:
    """Mark a store complete once every block is done; measure the teacher on the test split.

    Returns True when the store is (now) complete, False when blocks are still missing.
    """
    device = torch.device(device)
    with flock(location, "-meta", wait=True):
        store = ZarrStore.open(location, read_only=False)
        spec = store.spec
        if store.provenance.complete:
            if result is not None:
                result.complete, result.teacher_test_accuracy = True, store.provenance.teacher_test_accuracy
            return True
        state = store.progress()
        if not (state == DONE).all():
            if result is not None:
                result.notes.append(f"{_utils.plural(int((state != DONE).sum()), 'block')} still to be written by other shards")
            return False
        # Every block is done, so no live writer is mid-write (labels are written under this lock):
        # a temporary file left now is a killed writer's, and never part of a finished store.
        ZarrStore.remove_partial_writes(location)
        missing = store.check_chunks(decode=False)
        if missing:
            raise DataError(f"every block is marked done but {missing[0]}: run `logitcache verify --repair {location}`")
        compute = Compute.on(device, spec.precision, spec.channels_last)  # the teacher's accuracy as it was dumped
        if teacher is None:
            teacher = compute.model(build_teacher(spec.teacher.name, spec.teacher.num_classes, checkpoint=checkpoint,
                                                  random_init=random_init, seed=spec.views.seed, device=device))
            if weights_sha256(teacher) != spec.teacher.weights_sha256:
                raise CacheMismatch(f"the teacher weights given do not match the ones {location} was dumped with: pass the same --checkpoint")
        acc, count = _test_accuracy(teacher, spec, dataset_name, data_root, device, compute)
        store.set_provenance(Provenance(
            **{**store.provenance.to_json(), "complete": True, "finished_at": _utils.now(),
               "teacher_test_accuracy": acc, "teacher_test_samples": count, "device": str(device)}
        ))
    if result is not None:
        result.complete, result.teacher_test_accuracy = True, acc
    return True


def _test_accuracy(teacher: nn.Module, spec: CacheSpec, dataset_name: str | None, data_root: str | None,
                   device: torch.device, compute: Compute) -> tuple[float | None, int | None]:
    """The teacher's top-1 accuracy (next-token accuracy for text) on the test split, and its rows."""
    try:
        test = teacher_dataset(open_dataset(dataset_name or spec.dataset.name, "test", data_root=data_root,
                                            model=spec.teacher.name, seq_len=spec.dataset.seq_len or None), spec)
    except DataError:
        return None, None  # e.g. an image folder without val/: accuracy unknown, not an error
    from .evaluate import evaluate_model

    metrics = evaluate_model(teacher, test, device=device, compute=compute)
    return metrics["top1"], len(test.labels)

