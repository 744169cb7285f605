"""The sampled encoding: unbiased, reproducible from the stored seeds, and what verify accepts.

1. Over many view seeds the mean sampled target ``counts / N`` equals the teacher's softmax at the
   sampling temperature, within the exact binomial confidence bound (hypothesis over C, N, T).
2. At the loss level (a fixed random teacher, no training) the mean KD gradient from sampled
   targets equals the full-logit KD gradient within a bound computed from the draws' own
   spread, while top-k's gradient (deterministic) lies far outside it.
3. The draws are a pure function of (logits, view seed): the same in any batch composition or
   order, and of CPU and GPU alike up to draws at a CDF boundary.
4. The stored layout (distinct classes ascending, counts, 0-padding, narrow dtypes) and the
   exact scalars; verify's replay accepts float noise and finds a changed draw.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitcache.cache_home import store_name
from logitcache.errors import BadInput, CacheCorrupt
from logitcache.info import cache_info
from logitcache.methods import compute_loss
from logitcache.store.encodings import get_encoding
from logitcache.store.encodings.sampled import draw_uniforms, feasible_counts, inverse_cdf, tempered_cdf
from logitcache.store.format import EncodingInfo
from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import ZarrStore
from logitcache.teacher_view import TeacherView
from logitcache.verify import verify

PROPERTY = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SYNTHETIC_SAMPLED = dict(dataset="synthetic:n=64,size=8", encoding="sampled", topk=None, samples=6, sample_temperature=2.0,
                         chunk_samples=16)


def sampled(draws: int, temperature: float, num_classes: int):
    return get_encoding(EncodingInfo(kind="sampled", dtype="fp32", samples=draws, temperature=temperature), num_classes)


def draw_rows(encoding, logits: torch.Tensor, labels: torch.Tensor, seeds: np.ndarray) -> TeacherView:
    return encoding.decode(encoding.encode_pairs(logits, labels, seeds), labels)


def dense_counts(view: TeacherView) -> torch.Tensor:
    return (view.sampled_probs * view.sample_draws).round().long()


# --------------------------------------------------------------------------- 1. unbiased target
@settings(PROPERTY, max_examples=40)
@given(num_classes=st.integers(2, 60), draws=st.sampled_from([1, 7, 50, 300]),
       temperature=st.sampled_from([0.5, 1.0, 4.0]), scale=st.sampled_from([0.5, 3.0, 10.0]),
       seed=st.integers(0, 2**31 - 1))
def test_the_mean_sampled_target_is_the_teachers_distribution(num_classes, draws, temperature, scale, seed):
    rng = np.random.default_rng(seed)
    z = torch.from_numpy((rng.standard_normal(num_classes) * scale).astype(np.float32))
    repeats = 3000  # view seeds
    encoding = sampled(draws, temperature, num_classes)
    view = draw_rows(encoding, z.repeat(repeats, 1), torch.zeros(repeats, dtype=torch.long),
                     rng.integers(0, 2**32, repeats, dtype=np.uint32))
    p = torch.softmax(z.double() / temperature, dim=0)
    total = draws * repeats
    hits = view.sampled_probs.double().sum(dim=0) * draws  # draws of each class over all seeds
    # Unbiased draws make hits a sum of `total` independent Bernoulli(p_c): Bernstein's
    # inequality bounds |hits - total·p_c| by eps with probability 1 - 2e^-t, also where
    # total·p_c is far too small for a normal approximation. Plus fp32 noise of the CDF.
    t, var = 20.0, total * p * (1 - p)
    eps = t / 3 + torch.sqrt(t**2 / 9 + 2 * var * t) + total * 1e-6
    assert ((hits - total * p).abs() <= eps).all(), ((hits - total * p).abs() / eps).max()
    assert torch.allclose(view.sampled_probs.sum(dim=1), torch.ones(repeats))


# --------------------------------------------------------------------------- 2. unbiased KD gradient
def _kd_gradient(view: TeacherView, student: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    leaf = student.clone().requires_grad_()
    hparams = {"temperature": temperature, "ce_weight": 0.0, "kd_weight": 1.0}
    compute_loss("kd", leaf, view, target, epoch=1, hparams=hparams)["kd"].backward()
    return leaf.grad


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_mean_kd_gradient_from_draws_is_the_full_one_and_top_ks_is_not(seed):
    """C = 100, T = 4 (where top-k's spread-evenly rest is visibly wrong), 8 rows, N = 50 draws
    (RS-KD's setting), top-5; 400 view seeds per row."""
    classes, batch, temperature, seeds, draws = 100, 8, 4.0, 400, 50
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, classes, generator=gen) * 2.5
    y = torch.randint(0, classes, (batch,), generator=gen)
    z[torch.arange(batch), y] += 6.0  # a teacher that is mostly right
    student = torch.randn(batch, classes, generator=gen)
    full = _kd_gradient(TeacherView.from_logits(z, y), student, y, temperature)

    topk = get_encoding(EncodingInfo(kind="topk", dtype="fp32", k=5), classes)
    top = _kd_gradient(topk.decode(topk.encode(z, y), y), student, y, temperature)

    # One big batch of `seeds` copies of the mini-batch: each copy's gradient is `seeds` times
    # its rows' share of the big batch-mean gradient.
    ys = y.repeat(seeds)
    view = draw_rows(sampled(draws, temperature, classes), z.repeat(seeds, 1), ys,
                     np.arange(seeds * batch, dtype=np.uint32) + 1000 * seed)
    per_seed = _kd_gradient(view, student.repeat(seeds, 1), ys, temperature).reshape(seeds, batch, classes) * seeds
    mean = per_seed.mean(dim=0)
    # E|mean - full|^2 = trace(Cov) / seeds for an unbiased estimator; allow 4x that (2x the norm).
    bound = 2 * math.sqrt(float(per_seed.var(dim=0).sum()) / seeds)
    assert float((mean - full).norm()) <= bound
    assert float((top - full).norm()) > 3 * bound  # top-k's bias, not noise: it has none
    assert _angle(mean, full) < _angle(top, full) / 3


# --------------------------------------------------------------------------- 3. reproducible draws
@settings(PROPERTY, max_examples=30)
@given(num_classes=st.integers(2, 300), batch=st.integers(2, 12), draws=st.integers(1, 80),
       seed=st.integers(0, 2**31 - 1))
def test_draws_depend_only_on_the_logits_and_the_view_seed(num_classes, batch, draws, seed):
    rng = np.random.default_rng(seed)
    z = torch.from_numpy((rng.standard_normal((batch, num_classes)) * 3).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, num_classes, batch))
    seeds = rng.integers(0, 2**32, batch, dtype=np.uint32)
    encoding = sampled(draws, 1.0, num_classes)
    whole = encoding.encode_pairs(z, y, seeds)
    assert all(np.array_equal(whole[k], v) for k, v in encoding.encode_pairs(z, y, seeds).items())
    order = rng.permutation(batch)
    cut = int(rng.integers(1, batch))
    pieces = [encoding.encode_pairs(z[order[a:b]], y[order[a:b]], seeds[order[a:b]]) for a, b in ((0, cut), (cut, batch))]
    for name, value in whole.items():
        assert np.array_equal(np.concatenate([p[name] for p in pieces]), value[order]), name
    other = encoding.encode_pairs(z, y, seeds ^ np.uint32(1))  # another view's seed draws other classes
    if draws >= 20 and num_classes >= 20:
        assert not np.array_equal(other["sample_counts"], whole["sample_counts"]) or \
            not np.array_equal(other["sample_indices_packed"], whole["sample_indices_packed"])


def test_uniforms_are_exact_multiples_of_2_to_the_minus_24():
    u = draw_uniforms(np.arange(1000, dtype=np.uint32), 50)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    assert np.array_equal(u.astype(np.float64) * 2**24, np.round(u.astype(np.float64) * 2**24))
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_draws_on_the_gpu_equal_the_cpus_up_to_boundary_draws():
    rng = np.random.default_rng(0)
    z = torch.from_numpy((rng.standard_normal((4096, 1000)) * 4).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 1000, 4096))
    seeds = rng.integers(0, 2**32, 4096, dtype=np.uint32)
    encoding = sampled(50, 1.0, 1000)
    cpu, gpu = (draw_rows(encoding, z.to(d), y, seeds) for d in ("cpu", "cuda"))
    same = (dense_counts(cpu) == dense_counts(gpu)).all(dim=1)
    assert float(same.float().mean()) > 0.999
    feasible = feasible_counts(tempered_cdf(z, 1.0), encoding.uniforms(seeds, "cpu"), dense_counts(gpu), 1e-5)
    assert feasible.all()


# --------------------------------------------------------------------------- 4. layout, scalars, verify
@settings(PROPERTY, max_examples=60)
@given(num_classes=st.integers(2, 400), batch=st.integers(1, 8), draws=st.sampled_from([1, 3, 40, 255, 256, 700]),
       seed=st.integers(0, 2**31 - 1))
def test_stored_layout_and_exact_scalars(num_classes, batch, draws, seed):
    rng = np.random.default_rng(seed)
    z = torch.from_numpy((rng.standard_normal((batch, num_classes)) * 5).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, num_classes, batch))
    encoding = sampled(draws, 2.0, num_classes)
    arrays = encoding.encode_pairs(z, y, rng.integers(0, 2**32, batch, dtype=np.uint32))
    slots = min(draws, num_classes)
    assert {f.name: (f.trailing, f.dtype) for f in encoding.fields()} == {
        "sample_indices_packed": ((-(-slots * max(1, (num_classes - 1).bit_length()) // 8),), "uint8"),
        "sample_counts": ((slots,), "uint8" if draws <= 255 else "uint16"),
        "lse": ((), "float32"),
        "target_logit": ((), "float32"),
    }
    for f in encoding.fields():
        assert arrays[f.name].dtype == np.dtype(f.dtype) and arrays[f.name].shape == (batch, *f.trailing)
    idx, cnt = encoding.load_indices(arrays, "sample_indices", slots), arrays["sample_counts"].astype(np.int64)
    assert (cnt.sum(axis=1) == draws).all()
    for row_idx, row_cnt in zip(idx, cnt):
        used = row_cnt > 0
        assert used[: used.sum()].all()  # filled slots first
        assert (np.diff(row_idx[used]) > 0).all()  # distinct classes, ascending
        assert (row_idx[~used] == 0).all()  # the sentinel
    view = encoding.decode(arrays, y)
    exact = torch.log_softmax(z.double(), dim=1)[torch.arange(batch), y]
    assert torch.allclose(view.target_log_prob.double(), exact, atol=1e-5)
    assert view.kind == "sampled" and not view.exact


def test_a_sampled_view_does_not_pretend_to_have_logits():
    encoding = sampled(10, 1.0, 5)
    view = draw_rows(encoding, torch.randn(3, 5), torch.tensor([0, 1, 2]), np.arange(3, dtype=np.uint32))
    for read in (lambda v: v.logits, lambda v: v.argmax, lambda v: v.log_probs(), lambda v: v.probs(2.0)):
        with pytest.raises(BadInput, match="a sampled teacher view has no .*read sampled_probs"):
            read(view)
    moved = view.to("cpu")
    assert torch.equal(moved.sampled_probs, view.sampled_probs) and moved.sample_temperature == 1.0
    with pytest.raises(BadInput, match="has no sampled target"):
        TeacherView.from_logits(torch.randn(3, 5), torch.tensor([0, 1, 2])).sampled_probs  # noqa: B018


def test_feasible_counts_allow_boundary_draws_only():
    """A draw may move to the neighbouring class only when its uniform is that close to the boundary."""
    cdf = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    u = torch.tensor([[0.1, 0.4999, 0.9]])  # the second lies 1e-4 below the 1|2 boundary
    counts = torch.bincount(inverse_cdf(cdf, u)[0], minlength=4)[None]
    assert counts.tolist() == [[1, 1, 0, 1]]
    moved = torch.tensor([[1, 0, 1, 1]])  # the boundary draw in class 2 instead of 1
    far = torch.tensor([[0, 1, 1, 1]])  # the first draw (0.15 from any boundary) moved
    assert feasible_counts(cdf, u, counts, 1e-3).item() and feasible_counts(cdf, u, moved, 1e-3).item()
    assert not feasible_counts(cdf, u, moved, 1e-5).item()
    assert not feasible_counts(cdf, u, far, 1e-3).item()
    assert not feasible_counts(cdf, u, torch.tensor([[1, 1, 0, 0]]), 1e-3).item()  # a draw lost


def test_a_zero_probability_class_is_never_drawn():
    z = torch.tensor([[0.0, -200.0, 0.0, -200.0]])  # classes 1 and 3 underflow to p = 0 in fp32
    u = torch.from_numpy(draw_uniforms(np.arange(2000, dtype=np.uint32), 1)).reshape(1, -1)
    u[0, 0] = 1 - 2.0**-24  # the largest uniform: u · total may round to the total
    classes = inverse_cdf(tempered_cdf(z, 1.0), u)
    assert set(classes.unique().tolist()) == {0, 2}


def test_a_sampled_store_verifies_and_a_changed_draw_is_found(make_cache, copy_store, reseal, read_indices, write_indices,
                                                              tmp_path):
    cache = make_cache(**SYNTHETIC_SAMPLED)
    report = verify(cache, samples=10_000, random_init=True, device="cpu")
    assert report.ok, report.problems
    assert report.pairs_checked == 192

    path = copy_store(cache, tmp_path / "c.zarr")
    group = zarr.open_group(str(path), mode="r+")
    idx, cnt = read_indices(path, "sample_indices")[2, 41], group["sample_counts"][2, 41]
    unused = sorted(set(range(10)) - set(idx[cnt > 0].tolist()))
    idx[0] = unused[len(unused) // 2]  # slot 0's draws now name a class they did not come from
    write_indices(path, "sample_indices", 2, 41, idx)
    reseal(path)  # as if the dump had drawn it: only the replay can tell
    assert ZarrStore.open(path).check_chunks() == []
    report = verify(path, samples=10_000, random_init=True, device="cpu")
    assert len(report.problems) == 1
    assert report.problems[0] == "view 2 sample 41: stored draws are not the replayed teacher's"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("sample_indices", 10, "view 1 sample 5: sample_indices outside 0..9"),
    ("sample_counts", 0, "view 1 sample 5: sample_counts do not add up to 6 draws"),
])
def test_impossible_draws_are_refused_even_when_sealed(make_cache, copy_store, reseal, read_indices, write_indices, tmp_path,
                                                       field, value, message):
    """A class beyond C, or counts that are not N draws, cannot come from any teacher: the block
    check names the pair in verify and in the reader (before the rows are used), digests or not."""
    path = copy_store(make_cache(**SYNTHETIC_SAMPLED), tmp_path / "c.zarr")
    group = zarr.open_group(str(path), mode="r+")
    row = read_indices(path, field)[1, 5] if field == "sample_indices" else group[field][1, 5]
    row[0] = value  # 10 fits the 4 bits that 10 classes pack an index into
    if field == "sample_indices":
        write_indices(path, field, 1, 5, row)
    else:
        group[field][1, 5] = row
    reseal(path)
    assert any(message in str(p) for p in ZarrStore.open(path).check_chunks())
    assert any(message in p for p in verify(path, samples=0).problems)
    reader = CacheReader(path)
    try:
        with pytest.raises(CacheCorrupt, match=message):
            reader.read(np.array([1]), np.array([5]))
    finally:
        reader.close()


def test_info_reports_only_what_draws_know(make_cache, run_cli):
    cache = make_cache(**SYNTHETIC_SAMPLED)
    info = cache_info(cache, progress=False)
    store = ZarrStore.open(cache)
    assert info.augmented.misinstruction_rate is None and info.augmented.ece is None
    assert info.augmented.mean_entropy is None
    exact = np.exp(store.read("target_logit")[1:] - store.read("lse")[1:]).mean()
    assert info.augmented.mean_target_prob == pytest.approx(float(exact), rel=1e-5)
    assert store_name(store.spec).split("_")[-1].startswith("sampled6-t2-")
    shown = run_cli(["info", cache])
    assert shown.code == 0 and "encoding     sampled 6 draws at T=2;" in shown.out
    assert "augmented    mean p(true class)" in shown.out and "stores draws, not the teacher's argmax" in shown.out
