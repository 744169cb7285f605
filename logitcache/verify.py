"""``verify``: prove a cache still says what its teacher says.

Three checks. (1) Integrity: every chunk of every array is present and decodes against its
checksum. (2) Provenance: the given teacher weights hash to the cache's ``weights_sha256`` and
the dataset split has the cache's fingerprint; every stored seed equals the seed derived from
(dump seed, view, sample). (3) Replay: for random (view, sample) pairs the stored seed is
replayed, the teacher recomputes the logits (in the forward precision of the dump, taken as
fp32), and the stored values must equal them within the precision they were stored in: half a
step of the dtype (for fp16/bf16 relative to each value's gap from the row's top logit, which is
what they store) plus float noise from a different batch composition or device (a few ulps of
bf16/fp16 for a teacher dumped under that autocast). The fresh logits are compared as they are,
not re-encoded: an encoding that lost what matters (say, absolute fp16 values of logits with a
common offset of 60,000) would otherwise agree with itself. Stored NaN/inf values are failures
wherever they are found: every stored pair is checked for them, not only the replayed ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from . import _utils
from ._utils import plural
from .datasets import open_dataset
from .errors import CacheMismatch
from .loader import ViewBatch, augmented_batches, true_labels
from .models import weights_sha256
from .precision import Compute
from .store.encodings import get_encoding
from .store.encodings.sampled import SampledEncoding, feasible_counts, tempered_cdf
from .store.encodings.topk import GAP_STEP, LSE_STEP, TARGET_IN_TOPK, TARGET_STEP
from .store.format import EncodingInfo
from .store.zarr_store import DONE, ZarrStore, flock
from .teacher import build_teacher, teacher_dataset
from .teacher_view import TeacherView
from .views import ViewSpec, view_seeds

# Rounding of a stored fp16/bf16 gap from the row's top logit: half an ulp, relative to the gap
# (round to nearest; fp32 values are stored as they are).
_GAP_HALF_ULP = {"fp32": 0.0, "fp16": 2.0**-11, "bf16": 2.0**-8}
# Float noise of a replay in another batch or on another device: absolute; relative to the row's
# spread (max - min: the scale of what the network computes, without a common offset, which
# would otherwise hide whole nats at 60,000); and 16 fp32 ulps of the values compared (itself
# and, for gaps, the row's top), where a common offset puts them.
_NOISE_ATOL, _NOISE_RTOL, _NOISE_ULPS = 1e-4, 1e-5, 2.0**-20
# A bf16/fp16 teacher is replayed at its precision (its logits differ from fp32's by about one
# ulp of that dtype, far more than fp32 noise), where two forwards in another batch or on another
# device each lie within about one ulp of fp32's (0.85 ulp measured for resnet8/resnet20 on
# digits, relative to the row's spread), so within two of each other: 4 ulps, relative to the
# spread and to the values, leaves deeper networks a factor of two.
_AMP_REPLAY_ULPS = 4
_SCAN_ROWS = 65536  # rows per read of the NaN/inf scan


@dataclass
class VerifyReport:
    location: str
    chunks_checked: int = 0
    pairs_checked: int = 0
    max_abs_error: float = 0.0  # largest |stored - replayed| over the values compared
    problems: list[str] = field(default_factory=list)
    replay_skipped: str | None = None  # why no pair was replayed, when none was

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
    unfinished = int((state != DONE).sum())
    if unfinished:
        report.problems.append(f"{plural(unfinished, 'block')} never finished writing: re-run the dump command")
    nonfinite = set() if problems else _nonfinite_blocks(store, report)
    if repair and (problems or nonfinite):
        with flock(location):  # never under a running dump, whose markers and metadata it would contradict
            _repair(store, problems, nonfinite)
        report.problems.append("repair: marked the damaged blocks for rewriting; now re-run the dump command")
    if samples <= 0 or report.problems:
        report.replay_skipped = "--samples 0" if samples <= 0 else "the problems above come first"
        return report

    ViewSpec.from_json(spec.views.augmentation).check_replayable()  # before the teacher is built
    dev = _utils.resolve_device(device)
    compute = Compute.on(dev, spec.precision, spec.channels_last)  # replayed as it was dumped
    teacher = compute.model(build_teacher(spec.teacher.name, spec.teacher.num_classes, checkpoint=checkpoint,
                                          random_init=random_init, seed=spec.views.seed, device=dev))
    if weights_sha256(teacher) != spec.teacher.weights_sha256:
        raise CacheMismatch(
            f"these teacher weights are not the ones {location} was dumped with (sha256 differs): "
            "pass the same --checkpoint as the dump"
        )
    dataset = open_dataset(spec.dataset.name, spec.dataset.split, data_root=data_root, model=spec.teacher.name,
                           seq_len=spec.dataset.seq_len or None)
    if dataset.fingerprint != spec.dataset.fingerprint:
        raise CacheMismatch(
            f"dataset {spec.dataset.name} ({spec.dataset.split}) under the given root has other content than the "
            "cache was dumped from (fingerprint differs): point --data-root at the same data"
        )
    n, total_views = spec.dataset.num_samples, spec.views.total
    differ = np.flatnonzero(store.read("labels") != dataset.labels)
    if len(differ):  # the fingerprint covers the dataset's labels, so the store's are the wrong ones
        report.problems.append(f"labels: {len(differ)} stored labels differ from the dataset's, e.g. sample "
                               f"{int(differ[0])}: re-run the dump command (it rewrites them)")
    for v in range(total_views):
        stored = store.read("seeds", v)
        if not np.array_equal(stored, view_seeds(spec.views.seed, v, np.arange(n // spec.dataset.rows_per_item))):
            report.problems.append(f"view {v}: stored seeds differ from the seeds derived from the dump seed")
    # Random (view, item) pairs: images, or for text whole sequences (every position of each is compared).
    items = len(dataset)
    rng = np.random.default_rng(seed)
    pick = rng.choice(total_views * items, size=min(samples, total_views * items), replace=False)
    views, idx = pick // items, pick % items
    _replay(store, teacher_dataset(dataset, spec), teacher, compute, views, idx, dev, batch_size, report)
    return report


def _replay(store: ZarrStore, dataset, teacher, compute: Compute, views: np.ndarray, idx: np.ndarray,
            device: torch.device, batch_size: int, report: VerifyReport) -> None:
    spec = store.spec
    noise = _Noise.of(spec.precision)
    encoding = get_encoding(spec.encoding, spec.dataset.num_classes)
    view_spec = ViewSpec.from_json(spec.views.augmentation)
    fields = [f.name for f in encoding.fields()]
    batches = [
        ViewBatch(
            samples=idx[s : s + batch_size],
            seeds=view_seeds(spec.views.seed, views[s : s + batch_size], idx[s : s + batch_size]),
            clean=(views[s : s + batch_size] == 0) & spec.views.clean,
        )
        for s in range(0, len(idx), batch_size)
    ]
    offset = 0
    for batch, inputs in augmented_batches(dataset, view_spec, batches, device=device):
        per = dataset.rows_per_item
        v = np.repeat(views[offset : offset + len(batch)], per)  # each row's view
        offset += len(batch)
        rows = dataset.rows(batch.samples)
        with torch.inference_mode():
            on_device = compute.forward(teacher, inputs).flatten(0, -2)  # (rows, classes): text's (B, L, V) too
        fresh = on_device.cpu()
        y = torch.from_numpy(true_labels(dataset, view_spec, batch))
        cached = encoding.decode(_stored_rows(store, fields, v, rows), y)
        if isinstance(encoding, SampledEncoding):
            reasons, err = _compare_sampled(cached, on_device, y, view_seeds(spec.views.seed, v, rows), encoding, noise)
        else:
            reasons, err = _compare(cached, fresh, y, spec.encoding, noise)
        report.max_abs_error = max([report.max_abs_error, *(e for e in err.tolist() if np.isfinite(e))])
        failed = [j for j, r in enumerate(reasons) if r]
        report.problems += [f"view {int(v[j])} sample {int(rows[j])}: {reasons[j]}" for j in failed[:10]]
        report.pairs_checked += len(rows)


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


@dataclass(frozen=True)
class _Noise:
    """The float noise a replay may show: absolute, relative to the row's spread, and relative to
    the values compared (see ``_NOISE_*`` and ``_AMP_REPLAY_ULPS``)."""

    rtol: float = _NOISE_RTOL
    ulps: float = _NOISE_ULPS

    @classmethod
    def of(cls, precision: str) -> _Noise:
        if precision == "fp32":
            return cls()
        step = _AMP_REPLAY_ULPS * 2 * _GAP_HALF_ULP[precision]  # an ulp is two half-ulps
        return cls(rtol=step, ulps=step)

    def __call__(self, spread: Tensor, *values: Tensor) -> Tensor:
        return _NOISE_ATOL + self.rtol * spread + self.ulps * sum(v.abs() for v in values)


def _compare(cached: TeacherView, fresh: Tensor, labels: Tensor, info: EncodingInfo,
             noise: _Noise) -> tuple[list[str], Tensor]:
    """For each row, why its stored values are not the fresh fp32 logits ('' when they are), and
    its largest |stored - fresh|.

    Compared where the store holds the teacher's values: every class (full); the stored classes,
    ``lse`` and the true-class logit (top-k). ``q8`` is compared with the fresh gaps from the top
    logit, clipped where q8 clips them. NaN on either side is a failure (no comparison holds).
    """
    top = fresh.max(dim=1, keepdim=True).values
    spread = top - fresh.min(dim=1, keepdim=True).values
    q8 = info.dtype == "q8"
    idx = cached.topk_indices if info.kind == "topk" else None
    z = fresh if idx is None else fresh.gather(1, idx)
    stored = cached.logits if idx is None else cached.topk_values
    gap = top - z
    if q8:
        checks = [(stored, -gap.clamp(max=255 * GAP_STEP), noise(spread, z, top) + GAP_STEP / 2)]
    else:
        checks = [(stored, z, noise(spread, z, top) + _GAP_HALF_ULP[info.dtype] * gap)]
    classes_ok = torch.ones(len(fresh), dtype=torch.bool)
    if idx is not None:
        lse = torch.logsumexp(fresh, dim=1, keepdim=True)
        target = fresh.gather(1, labels[:, None])
        stored_lse, stored_target = cached.lse[:, None], cached.target_logit[:, None]
        if q8:
            in_topk = (idx == labels[:, None]).any(dim=1, keepdim=True)  # then its target is a gap checked above
            target_gap = (top - target).clamp(max=(TARGET_IN_TOPK - 1) * TARGET_STEP)
            checks += [(stored_lse, (lse - top).clamp(max=65535 * LSE_STEP), noise(spread, lse, top) + LSE_STEP / 2),
                       (stored_target, torch.where(in_topk, stored_target, -target_gap),
                        noise(spread, target, top) + TARGET_STEP / 2)]
        else:
            checks += [(stored_lse, lse, noise(spread, lse)), (stored_target, target, noise(spread, target))]
        # The stored classes must be k distinct classes of the fresh top-k, up to near-ties at the k-th place.
        kth = torch.topk(fresh, idx.shape[1], dim=1).values[:, -1:]
        distinct = (idx.sort(dim=1).values.diff(dim=1) != 0).all(dim=1)
        classes_ok = (z >= kth - noise(spread, kth, top)).all(dim=1) & distinct
    errors = [(a - b).abs() for a, b, _ in checks]
    within = torch.stack([(e <= tol).all(dim=1) for e, (_, _, tol) in zip(errors, checks)]).all(dim=0)
    err = torch.cat(errors, dim=1).max(dim=1).values
    reasons = _reasons(within, classes_ok, cached.finite, torch.isfinite(fresh).all(dim=1), err,
                       stored="stored logits are", differ="stored logits differ",
                       choice="stored classes are not the replayed teacher's top-k")
    return reasons, err


def _reasons(within: Tensor, chosen_ok: Tensor, stored_finite: Tensor, fresh_finite: Tensor, err: Tensor, *,
             stored: str, differ: str, choice: str) -> list[str]:
    """Per pair: "" when it matches, else the first thing wrong with it (NaN/inf before differences)."""
    return [
        "" if ok and chosen else
        f"{stored} NaN/inf" if not fin_s else
        "the replayed teacher gives NaN/inf logits" if not fin_f else
        choice if not chosen else
        f"{differ} from the replayed teacher (max |diff| {e:.3g})"
        for ok, chosen, fin_s, fin_f, e in zip(within.tolist(), chosen_ok.tolist(), stored_finite.tolist(),
                                               fresh_finite.tolist(), err.tolist())
    ]


def _compare_sampled(cached: TeacherView, fresh: Tensor, labels: Tensor, seeds: np.ndarray,
                     encoding: SampledEncoding, noise: _Noise) -> tuple[list[str], Tensor]:
    """As :func:`_compare` for a sampled pair: ``lse`` and the true-class logit within float noise
    of the fresh ones, and counts the replayed draws give, except that a draw whose uniform lies
    within float noise of a CDF boundary may have picked the neighbouring class.

    ``fresh`` stays on the teacher's device, where the dump drew. Logits that move by at most
    ``noise`` move each log-probability at T by at most 2·noise/T, so each CDF entry (at most 1)
    by about that much, plus the fp32 rounding of a cumulative sum over C classes.
    """
    cpu = fresh.cpu()
    spread = cpu.max(dim=1, keepdim=True).values - cpu.min(dim=1, keepdim=True).values
    lse, target = torch.logsumexp(cpu, dim=1, keepdim=True), cpu.gather(1, labels[:, None])
    errors = torch.cat([(cached.lse[:, None] - lse).abs(), (cached.target_logit[:, None] - target).abs()], dim=1)
    within = (errors <= torch.cat([noise(spread, lse), noise(spread, target)], dim=1)).all(dim=1)
    temperature = encoding.info.temperature
    tolerance = 2 * noise(spread, cpu).max(dim=1, keepdim=True).values / temperature + cpu.shape[1] * 2.0**-24
    counts = (cached.sampled_probs * encoding.draws).round().long().to(fresh.device)
    drawn = feasible_counts(tempered_cdf(fresh, temperature), encoding.uniforms(seeds, fresh.device), counts,
                            tolerance.to(fresh.device)).cpu()
    err = errors.max(dim=1).values
    reasons = _reasons(within, drawn, cached.finite, torch.isfinite(cpu).all(dim=1), err,
                       stored="stored lse or true-class logit is", differ="stored lse or true-class logit differs",
                       choice="stored draws are not the replayed teacher's")
    return reasons, err


def _nonfinite_blocks(store: ZarrStore, report: VerifyReport) -> set[tuple[int, int]]:
    """(view, block) of every stored pair holding NaN/inf, each view reported once.

    A dump refuses a teacher's NaN/inf, so one in a store is damage that no checksum caught
    (``--no-checksum`` stores); every pair is read, not only the replayed ones.
    """
    spec = store.spec
    n = spec.dataset.num_samples
    encoding = get_encoding(spec.encoding, spec.dataset.num_classes)
    blocks: set[tuple[int, int]] = set()
    for v in range(spec.views.total):
        bad: list[np.ndarray] = []
        for start in range(0, n, _SCAN_ROWS):
            rows = slice(start, min(start + _SCAN_ROWS, n))
            arrays = {f.name: store.read(f.name, v, rows=rows) for f in encoding.fields()}
            tv = encoding.decode(arrays, torch.zeros(rows.stop - start, dtype=torch.long))
            bad.append(start + (~tv.finite).nonzero()[:, 0].numpy())
        where = np.concatenate(bad)
        if len(where):
            report.problems.append(f"view {v}: {plural(len(where), 'sample')} with NaN/inf logits, "
                                   f"e.g. sample {int(where[0])}")
            blocks |= {(v, int(b)) for b in np.unique(where // spec.layout.block_samples)}
    return blocks


def _repair(store: ZarrStore, problems, blocks: set[tuple[int, int]]) -> None:
    from .store.format import Provenance

    for p in problems:
        if p.array not in ("labels", "label_digests", "progress"):  # labels are rewritten by every dump run
            store.mark(*store.block_of(p.key), 0)
    for v, b in blocks:
        store.mark(v, b, 0)
    store.set_provenance(Provenance(**{**store.provenance.to_json(), "complete": False, "finished_at": None}))
