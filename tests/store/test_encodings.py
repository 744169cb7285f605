"""Encodings: property tests of every encode -> decode round trip, and the top-k rebuild.

For the fp32 top-k encoding the rebuild (``teacher_view.py``) is exact where it claims to be:
the log-probabilities of the stored classes and of the true class, the argmax, a total mass of
one, and the rest spread evenly. Full fp32 is lossless; fp16/bf16 store gaps from the row's top
logit, so they lose at most half a unit in the last place *of that gap*, whatever offset the row
has; q8 loses at most half of each of its documented steps.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitcache.errors import DataError, UnknownName
from logitcache.store.encodings import get_encoding, list_encodings
from logitcache.store.encodings._base import _ENCODINGS, index_bits, pack_indices, packed_width, unpack_indices
from logitcache.store.encodings.sampled import count_draws, inverse_cdf, tempered_cdf
from logitcache.store.encodings.topk import GAP_STEP, LSE_STEP, TARGET_IN_TOPK, TARGET_STEP
from logitcache.store.format import EncodingInfo

FP32_EPS = 2.0**-23
HALF_ULP = {"fp16": 2.0**-11, "bf16": 2.0**-8}  # of the value rounded, for normal numbers
# Derandomized: CI runs the same examples every time (random runs found the two float-noise
# bounds below too tight; a flaky suite would hide a real regression).
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def logit_batches(draw, *, max_classes: int = 300, max_abs: float = 1e4):
    """(B, C) fp32 logits of many shapes and scales, labels, and a k < C."""
    num_classes = draw(st.integers(2, max_classes))
    batch = draw(st.integers(1, 6))
    k = draw(st.integers(1, num_classes - 1))
    scale = draw(st.sampled_from([1e-4, 0.1, 1.0, 5.0, 30.0, 300.0, max_abs]))
    mode = draw(st.sampled_from(["normal", "dominant", "flat", "ties", "spread"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = rng.standard_normal((batch, num_classes))
    if mode == "dominant":  # one class holds (nearly) all the mass
        z[np.arange(batch), rng.integers(0, num_classes, batch)] += 50.0
    elif mode == "flat":
        z[:] = rng.standard_normal((batch, 1))
    elif mode == "ties":
        z = rng.integers(-3, 4, (batch, num_classes)).astype(np.float64)
    elif mode == "spread":
        z = rng.uniform(-1, 1, (batch, num_classes)) * 40
    z = np.clip(z * scale / max(1.0, np.abs(z).max() / 4), -max_abs, max_abs)
    logits = torch.from_numpy(z.astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, num_classes, batch))
    return logits, labels, k


def _topk(k: int, num_classes: int, dtype: str, indices: str = "packed"):
    return get_encoding(EncodingInfo(kind="topk", dtype=dtype, k=k, indices=indices), num_classes)


def _round_trip(encoding, logits, labels):
    arrays = encoding.encode(logits, labels)
    for f in encoding.fields():
        assert arrays[f.name].dtype == np.dtype(f.dtype), f.name
        assert arrays[f.name].shape == (len(labels), *f.trailing), f.name
    assert set(arrays) == {f.name for f in encoding.fields()}
    return encoding.decode(arrays, labels)


def _known_mask(view, labels, num_classes) -> torch.Tensor:
    known = torch.zeros(len(labels), num_classes, dtype=torch.bool)
    known.scatter_(1, view.topk_indices, True)
    known.scatter_(1, labels[:, None], True)
    return known


# --------------------------------------------------------------------------- registry
def test_registry():
    assert list_encodings() == ["full", "sampled", "topk"]
    with pytest.raises(UnknownName, match="did you mean topk"):
        _ENCODINGS.get("tokp")


@pytest.mark.parametrize(
    ("num_classes", "index_dtype", "bits"),
    [(10, "uint8", 4), (256, "uint8", 8), (257, "int16", 9), (32000, "int16", 15), (32768, "int16", 15),
     (32769, "int32", 16), (128000, "int32", 17)],
)
@pytest.mark.parametrize("layout", ["packed", "int"])
def test_fields_and_index_layout(num_classes, index_dtype, bits, layout):
    """Format 3 packs k indices into ceil(k * bits / 8) bytes per row; "int" (format 2) keeps whole integers."""
    idx = ("topk_indices_packed", (-(-5 * bits // 8),), "uint8") if layout == "packed" else ("topk_indices", (5,), index_dtype)
    idx1 = ("topk_indices_packed", (-(-bits // 8),), "uint8") if layout == "packed" else ("topk_indices", (1,), index_dtype)
    enc = _topk(5, num_classes, "fp16", layout)
    assert [(f.name, f.trailing, f.dtype) for f in enc.fields()] == [
        idx, ("top_logit", (), "float32"), ("topk_gaps", (4,), "float16"), ("lse", (), "float32"),
        ("target_logit", (), "float32"),
    ]
    assert enc.raw_bytes_per_sample() == 4 * 2 + int(np.prod(idx[1])) * np.dtype(idx[2]).itemsize + 12
    assert [(f.name, f.trailing, f.dtype) for f in _topk(1, num_classes, "bf16", layout).fields()] == [
        idx1, ("top_logit", (), "float32"), ("lse", (), "float32"), ("target_logit", (), "float32")]
    assert [(f.name, f.trailing, f.dtype) for f in _topk(5, num_classes, "fp32", layout).fields()] == [
        ("topk_values", (5,), "float32"), idx, ("lse", (), "float32"), ("target_logit", (), "float32"),
    ]
    q8 = _topk(5, num_classes, "q8", layout)
    assert [(f.name, f.trailing, f.dtype) for f in q8.fields()] == [
        idx, ("topk_gaps", (4,), "uint8"), ("lse_gap", (), "uint16"), ("target_gap", (), "uint16"),
    ]
    full = get_encoding(EncodingInfo(kind="full", dtype="bf16"), num_classes)
    assert [(f.name, f.trailing, f.dtype) for f in full.fields()] == [
        ("top_logit", (), "float32"), ("logit_gaps", (num_classes,), "uint16")]
    full = get_encoding(EncodingInfo(kind="full", dtype="fp32"), num_classes)
    assert [(f.name, f.trailing, f.dtype) for f in full.fields()] == [("logits", (num_classes,), "float32")]


# --------------------------------------------------------------------------- top-k fp32
@PROPERTY
@given(logit_batches())
def test_topk_fp32_rebuild_is_exact_where_known(case):
    logits, labels, k = case
    num_classes = logits.shape[1]
    view = _round_trip(_topk(k, num_classes, "fp32"), logits, labels)
    z = logits.double()
    true_lp = torch.log_softmax(z, dim=1)
    # fp32 rounding of values of magnitude max|z| and of lse (up to max|z| + log C).
    tol = 1e-5 + 32 * FP32_EPS * (float(z.abs().max()) + np.log(num_classes))
    lp = view.log_probs().double()
    known = _known_mask(view, labels, num_classes)

    assert torch.isfinite(lp).all()
    # Exact at the stored classes and at the true class.
    assert (lp - true_lp).abs()[known].max() <= tol
    assert (view.target_log_prob.double() - true_lp.gather(1, labels[:, None])[:, 0]).abs().max() <= tol
    assert torch.equal(view.logits[known], logits[known])
    # The argmax is exact: the stored top-1 is a true maximum, and the rebuilt logits agree (up
    # to float noise in exact ties, where the rest's shared logit can round above z_1; that
    # logit is log(1 - known mass), whose fp32 rounding grows as the rest's mass shrinks).
    assert torch.equal(z.gather(1, view.argmax[:, None])[:, 0], z.max(dim=1).values)
    assert torch.equal(view.argmax, view.topk_indices[:, 0])
    rest_mass = 1 - (true_lp.exp() * known).sum(dim=1)
    above = view.logits.max(dim=1).values - view.logits.gather(1, view.argmax[:, None])[:, 0]
    assert (above.double() <= tol / rest_mass.clamp(min=tol)).all()
    # A distribution: total mass one.
    assert (view.probs().double().sum(dim=1) - 1).abs().max() <= 1e-5
    # The classes not stored share the remaining mass equally.
    rest = ~known
    for j in range(len(labels)):
        if rest[j].any():
            values = view.logits[j][rest[j]]
            assert (values == values[0]).all()
            true_rest_mass = 1 - float(true_lp[j][known[j]].exp().sum())
            assert abs(float(view.probs()[j][rest[j]].double().sum()) - true_rest_mass) <= 2e-6 + tol


def test_topk_rebuild_when_every_class_is_known():
    # k = C - 1 and the label outside the top-k: nothing is left to rebuild.
    logits = torch.tensor([[3.0, 1.0, 2.0, -5.0]])
    view = _round_trip(_topk(3, 4, "fp32"), logits, torch.tensor([3]))
    assert torch.equal(view.logits, logits)


def test_topk_temperature_keeps_ratios_of_stored_classes():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(16, 50, generator=gen)
    labels = torch.randint(0, 50, (16,), generator=gen)
    view = _round_trip(_topk(5, 50, "fp32"), logits, labels)
    lp4 = view.log_probs(4.0)
    true4 = torch.log_softmax(logits / 4, dim=1)
    idx = view.topk_indices
    # Differences between stored classes are exact at any temperature; absolute values are not.
    assert torch.allclose(lp4.gather(1, idx) - lp4.gather(1, idx[:, :1]), true4.gather(1, idx) - true4.gather(1, idx[:, :1]),
                          atol=1e-5)


# --------------------------------------------------------------------------- top-k fp16/bf16
def _gap_tolerance(z: torch.Tensor, rel: float) -> torch.Tensor:
    """Allowed |decoded - z| of a relative fp16/bf16 value: half an ulp of its gap from the row's
    top, plus fp32 rounding of the gap and of ``top - gap`` (a few ulps of the value itself)."""
    z = z.double()
    gap = z.max(dim=1, keepdim=True).values - z
    return rel * gap + 2 * FP32_EPS * (gap + z.abs()) + 2.0**-25


@PROPERTY
@given(logit_batches(max_abs=3e4), st.sampled_from(["fp16", "bf16"]))
def test_topk_half_precision_values_within_one_rounding(case, dtype):
    logits, labels, k = case
    view = _round_trip(_topk(k, logits.shape[1], dtype), logits, labels)
    values, indices = torch.topk(logits, k, dim=1)
    tol = _gap_tolerance(logits, HALF_ULP[dtype]).gather(1, indices)
    assert ((view.topk_values.double() - values.double()).abs() <= tol).all()
    assert torch.equal(view.topk_values[:, 0], values[:, 0])  # the top-1 logit is fp32: exact
    # lse and the true-class logit are fp32: exact.
    assert torch.equal(view.lse, torch.logsumexp(logits, dim=1))
    assert torch.equal(view.target_logit, logits.gather(1, labels[:, None])[:, 0])
    # The stored classes are the true top-k (up to ties at the k-th value).
    assert torch.equal(logits.gather(1, view.topk_indices), values)
    assert torch.isfinite(view.log_probs()).all()


# --------------------------------------------------------------------------- full
@PROPERTY
@given(logit_batches(max_abs=3e4), st.sampled_from(["fp32", "fp16", "bf16"]))
def test_full_round_trip(case, dtype):
    logits, labels, _ = case
    enc = get_encoding(EncodingInfo(kind="full", dtype=dtype), logits.shape[1])
    view = _round_trip(enc, logits, labels)
    assert view.exact and torch.equal(view.target, labels)
    if dtype == "fp32":
        assert torch.equal(view.logits, logits)
    else:
        assert ((view.logits.double() - logits.double()).abs() <= _gap_tolerance(logits, HALF_ULP[dtype])).all()
        # The top logit is stored in fp32: exact, and still the largest.
        assert torch.equal(view.logits.max(dim=1).values, logits.max(dim=1).values)
    assert torch.equal(view.argmax, view.logits.argmax(dim=1))


OFFSETS = [3e3, -3e3, 6e4, -6e4, 1e6]


@PROPERTY
@given(logit_batches(max_abs=1e3), st.sampled_from(["fp16", "bf16"]), st.sampled_from(["full", "topk"]),
       st.sampled_from(OFFSETS))
def test_half_precision_ignores_a_common_offset(case, dtype, kind, offset):
    # A teacher whose logits share a large bias has the same softmax: relative storage keeps
    # what matters within the dtype's step of the gap, wherever the row sits.
    logits, labels, k = case
    enc = get_encoding(EncodingInfo(kind=kind, dtype=dtype, k=k if kind == "topk" else 0), logits.shape[1])
    shifted = logits + offset  # what such a teacher outputs, rounded to fp32
    view, base = _round_trip(enc, shifted, labels), _round_trip(enc, logits, labels)
    rel, z = HALF_ULP[dtype], shifted.double()
    noise = 4 * FP32_EPS * (abs(offset) + float(logits.abs().max()))  # fp32 rounding of z + offset
    gap = z.max(dim=1, keepdim=True).values - z
    if kind == "full":
        # decode(encode(z + c)) - c is decode(encode(z)) within a step of each gap.
        diff = (view.logits.double() - offset) - base.logits.double()
        assert (diff.abs() <= 2 * rel * gap + 2 * noise + 2.0**-24).all()
        known = torch.ones_like(z, dtype=torch.bool)
    else:
        idx = view.topk_indices
        assert ((view.topk_values.double() - z.gather(1, idx)).abs() <= rel * gap.gather(1, idx) + noise).all()
        assert torch.equal(z.gather(1, view.argmax[:, None])[:, 0], z.max(dim=1).values)
        known = _known_mask(view, labels, logits.shape[1])
    # Probabilities of the stored classes are within the dtype's step of the teacher's: each
    # log-probability is off by its own gap's rounding plus the normaliser's, at most the
    # probability-weighted mean rounding.
    true_lp = torch.log_softmax(z, dim=1)
    mean_gap = (true_lp.exp() * gap).sum(dim=1, keepdim=True)
    tol = rel * (gap + mean_gap) + 2 * noise + 1e-6
    assert ((view.log_probs().double() - true_lp).abs()[known] <= tol[known]).all()
    assert torch.isfinite(view.log_probs()).all()


@pytest.mark.parametrize("kind", ["full", "topk"])
def test_fp16_overflow_is_refused(kind):
    # Gaps beyond fp16's 65504 would be stored as inf, and every probability of that sample
    # would decode as NaN: refused, naming a dtype that stores it.
    info = EncodingInfo(kind=kind, dtype="fp16", k=3 if kind == "topk" else 0)
    logits = torch.tensor([[7e4, 1.0, 2.0, 3.0, 0.0]])
    with pytest.raises(DataError, match="fp16 stores .*--dtype bf16 or --dtype fp32"):
        get_encoding(info, 5).encode(logits, torch.tensor([0]))
    # bf16 stores the same gaps (its range is fp32's), and a large common offset is no overflow.
    view = _round_trip(get_encoding(dataclasses.replace(info, dtype="bf16"), 5), logits, torch.tensor([0]))
    assert torch.equal(view.argmax, torch.tensor([0]))
    shifted = torch.tensor([[7e4, 7e4 + 1, 7e4 + 2, 7e4 + 3, 7e4]])
    view = _round_trip(get_encoding(info, 5), shifted, torch.tensor([0]))
    assert torch.equal(view.argmax, torch.tensor([3])) and torch.isfinite(view.log_probs()).all()


# --------------------------------------------------------------------------- q8
@PROPERTY
@given(logit_batches(max_abs=1e3))
def test_q8_within_its_steps(case):
    logits, labels, k = case
    num_classes = logits.shape[1]
    view = _round_trip(_topk(k, num_classes, "q8"), logits, labels)
    z = logits.double()
    values, _ = torch.topk(z, k, dim=1)
    top = values[:, :1]
    # fp32 rounding of the gaps and of lse (up to max|z| + log C) before quantising
    noise = 8 * FP32_EPS * (float(z.abs().max()) + np.log(num_classes))
    assert torch.equal(z.gather(1, view.topk_indices), values)  # the right classes, in order
    assert (view.topk_values[:, 0] == 0).all()
    true_gap = top - values
    decoded_gap = -view.topk_values.double()
    clipped = true_gap > 255 * GAP_STEP
    assert ((decoded_gap - true_gap).abs()[~clipped] <= GAP_STEP / 2 + noise).all()
    assert (decoded_gap[clipped] == 255 * GAP_STEP).all()
    lse_gap = torch.logsumexp(z, dim=1) - top[:, 0]
    assert ((view.lse.double() - lse_gap).abs() <= LSE_STEP / 2 + noise).all()
    in_topk = (view.topk_indices == labels[:, None]).any(dim=1)
    stored_at_label = view.topk_values.gather(1, view.topk_indices.eq(labels[:, None]).long().argmax(1, keepdim=True))[:, 0]
    assert torch.equal(view.target_logit[in_topk], stored_at_label[in_topk])
    target_gap = top[:, 0] - z.gather(1, labels[:, None])[:, 0]
    far = target_gap > (TARGET_IN_TOPK - 1) * TARGET_STEP
    ok = ~in_topk & ~far
    assert ((-view.target_logit.double() - target_gap).abs()[ok] <= TARGET_STEP / 2 + noise).all()
    assert (view.target_logit.double()[~in_topk & far] == -(TARGET_IN_TOPK - 1) * TARGET_STEP).all()
    # Exact argmax, finite rebuilt probabilities summing to one.
    assert torch.equal(z.gather(1, view.argmax[:, None])[:, 0], z.max(dim=1).values)
    assert torch.isfinite(view.log_probs()).all()
    assert (view.probs().double().sum(dim=1) - 1).abs().max() <= 1e-5
    # Log-probabilities of the stored classes: half a gap step from the value, half an lse step,
    # and up to half a gap step more when the rounded gaps push the known mass past one (the
    # rebuild then renormalises by that mass, at most exp(GAP_STEP / 2)).
    known = view.topk_indices
    lp_err = (view.log_probs().double().gather(1, known) - torch.log_softmax(z, dim=1).gather(1, known)).abs()
    assert (lp_err[~clipped] <= GAP_STEP + LSE_STEP / 2 + 1e-5 + 2 * noise).all()


# --------------------------------------------------------------------------- packed class indices
# Every width from 1 to 20 bits, at its edges: C = 2**b needs b bits, C = 2**b + 1 needs b + 1.
EDGE_CLASSES = sorted({c for b in range(1, 21) for c in (2**b - 1, 2**b, 2**b + 1) if 2 <= c <= 2**20})


@st.composite
def index_batches(draw):
    # and beyond any vocabulary: where the reader switches from 4-byte to 8-byte loads (26 bits), and the widest
    num_classes = draw(st.one_of(st.sampled_from(EDGE_CLASSES), st.integers(2, 2**20),
                                 st.sampled_from([2**25, 2**25 + 1, 2**40 + 3, 2**56])))
    count = draw(st.integers(1, 70))
    lead = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(0, num_classes, (*lead, count))
    edge = draw(st.sampled_from(["random", "max", "zero", "alternate"]))  # all bits set, none, and both
    if edge == "max":
        values[:] = num_classes - 1
    elif edge == "zero":
        values[:] = 0
    elif edge == "alternate":
        values[..., ::2] = num_classes - 1
    return values, num_classes


@PROPERTY
@given(index_batches())
def test_packed_indices_round_trip_exactly_in_ceil_log2_bits(case):
    values, num_classes = case
    bits = index_bits(num_classes)
    assert bits == max(1, math.ceil(math.log2(num_classes)))
    packed = pack_indices(values, num_classes)
    count = values.shape[-1]
    assert packed.dtype == np.uint8 and packed.shape == (*values.shape[:-1], -(-count * bits // 8))
    assert packed.shape[-1] == packed_width(count, num_classes)
    back = unpack_indices(packed, count, num_classes)
    assert back.dtype == np.int64 and np.array_equal(back, values)
    # The documented layout: bit i of index j is bit j * bits + i of the row, read little-endian;
    # the last byte's unused bits are 0.
    for row, row_values in zip(packed.reshape(-1, packed.shape[-1]), values.reshape(-1, count)):
        assert int.from_bytes(row.tobytes(), "little") == sum(int(v) << (j * bits) for j, v in enumerate(row_values))


@settings(PROPERTY, max_examples=40)  # (B, up to 2**20) logits: the index round trip above takes the many examples
@given(num_classes=st.one_of(st.sampled_from([c for c in EDGE_CLASSES if c >= 3]), st.integers(3, 2**20)),
       batch=st.integers(1, 3), seed=st.integers(0, 2**32 - 1), layout=st.sampled_from(["packed", "int"]),
       dtype=st.sampled_from(["fp16", "q8"]))
def test_topk_and_sampled_classes_survive_encoding_at_any_vocabulary(num_classes, batch, seed, layout, dtype):
    """Up to 2**20 classes (a 128k LM vocabulary and beyond): the decoded classes are the teacher's
    top-k, and the sampled ones are the drawn ones, in both index layouts."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, min(num_classes, 70)))
    z = torch.from_numpy(rng.standard_normal((batch, num_classes)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, num_classes, batch))
    encoding = _topk(k, num_classes, dtype, layout)
    arrays = encoding.encode(z, labels)
    for f in encoding.fields():
        assert arrays[f.name].dtype == np.dtype(f.dtype) and arrays[f.name].shape == (batch, *f.trailing)
    assert torch.equal(encoding.decode(arrays, labels).topk_indices, torch.topk(z, k, dim=1).indices)
    sampled = get_encoding(EncodingInfo(kind="sampled", dtype="fp32", samples=k, temperature=1.0, indices=layout),
                           num_classes)
    seeds = rng.integers(0, 2**32, batch, dtype=np.uint32)
    view = sampled.decode(sampled.encode_pairs(z, labels, seeds), labels)
    indices, counts = count_draws(inverse_cdf(tempered_cdf(z, 1.0), sampled.uniforms(seeds, "cpu")), sampled.slots)
    assert torch.equal(view.sample_indices, indices) and torch.equal(view.sample_counts, counts)
