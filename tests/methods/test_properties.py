"""Properties the reference states for each method (reference §3–§8), some with hypothesis."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitcache.methods import compute_loss, resolve_hparams
from logitcache.methods.dkd import nckd_per_sample, tckd_per_sample
from logitcache.methods.loca import calibrate_log_probs
from logitcache.methods.lud import hard_rank, soft_rank, soft_spearman, spearman
from logitcache.teacher_view import TeacherView

from .cases import logits_pair, make_view

# derandomize: the same examples on every run, so that CI never flakes on a rare draw.
FAST = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _loss(name, student, view, target, epoch=30, **overrides):
    hparams = resolve_hparams(name, overrides=overrides)
    return compute_loss(name, student, view, target, epoch=epoch, hparams=hparams)


def _correct_teacher(batch, num_classes, seed):
    student, teacher, target = logits_pair(batch, num_classes, seed=seed)
    teacher = teacher + 30.0 * F.one_hot(target, num_classes)  # the teacher is right everywhere
    assert (teacher.argmax(1) == target).all()
    return student, teacher, target


def _wrong_teacher(batch, num_classes, seed):
    student, teacher, target = logits_pair(batch, num_classes, seed=seed)
    target = (teacher.argmax(1) + 1) % num_classes  # never the teacher's top-1
    return student, teacher, target


# ---------------------------------------------------------------- DKD


@pytest.mark.parametrize(("epoch", "factor"), [(1, 0.05), (10, 0.5), (20, 1.0), (30, 1.0)])
@pytest.mark.parametrize("name", ["dkd", "dkd+loca", "rld"])
def test_warmup_scales_both_kd_terms(name, epoch, factor):
    student, teacher, target = logits_pair(8, 10, seed=0)
    view = make_view(teacher, target, "full")
    late = _loss(name, student, view, target, epoch=1000)
    now = _loss(name, student, view, target, epoch=epoch)
    torch.testing.assert_close(now["ce"], late["ce"])
    for key in late.keys() - {"ce"}:
        torch.testing.assert_close(now[key], factor * late[key])


@given(
    seed=st.integers(0, 10_000),
    temperature=st.sampled_from([1.0, 2.0, 4.0, 8.0]),
    scale=st.sampled_from([0.1, 1.0, 5.0]),
)
@FAST
def test_kd_is_tckd_plus_weighted_nckd(seed, temperature, scale):
    """DKD's reformulation of KD: KL(p^t || p^s) = TCKD + (1 − p^t_y)·NCKD, per sample."""
    student, teacher, target = logits_pair(6, 12, seed=seed, teacher_scale=scale)
    s, t = student / temperature, teacher / temperature
    kd = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="none", log_target=True).sum(
        1
    )
    p_y = t.softmax(1).gather(1, target[:, None])[:, 0]
    decomposed = tckd_per_sample(s, t, target) + (1 - p_y) * nckd_per_sample(s, t, target)
    torch.testing.assert_close(decomposed, kd, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- RLD


@pytest.mark.parametrize(("encoding", "k"), [("full", None), ("topk", 5)])
@pytest.mark.parametrize("ls", [False, True])
def test_rld_equals_dkd_when_the_teacher_is_right(encoding, k, ls):
    student, teacher, target = _correct_teacher(16, 100, seed=1)
    view = make_view(teacher, target, encoding, k)
    hp = {"logit_stand": ls, "temperature": 3.0}
    rld = _loss("rld", student, view, target, **hp)  # scd_temperature defaults to T
    dkd = _loss("dkd", student, view, target, **hp)
    torch.testing.assert_close(rld["scd"], dkd["tckd"])
    torch.testing.assert_close(rld["mcd"], dkd["nckd"])
    torch.testing.assert_close(rld["ce"], dkd["ce"])


def test_rld_differs_from_dkd_when_the_teacher_is_wrong():
    student, teacher, target = _wrong_teacher(8, 10, seed=2)
    view = make_view(teacher, target, "full")
    rld, dkd = _loss("rld", student, view, target), _loss("dkd", student, view, target)
    assert not torch.allclose(rld["scd"], dkd["tckd"])
    assert not torch.allclose(rld["mcd"], dkd["nckd"])


@pytest.mark.parametrize(("encoding", "k"), [("full", None), ("topk", 3)])
def test_rld_mcd_is_zero_when_the_label_is_the_teachers_lowest(encoding, k):
    student, teacher, target = logits_pair(6, 10, seed=3)
    target = teacher.argmin(dim=1)
    student = student.clone().requires_grad_(True)
    view = make_view(teacher, target, encoding, k)
    terms = _loss("rld", student, view, target)
    assert terms["mcd"].item() == 0.0
    terms["mcd"].backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_rld_scd_targets_the_teachers_top1_confidence():
    # A teacher that is wrong but as confident in its top-1 as the student is in the label
    # gives SCD = 0 (the teacher's *top-1*, not its label probability, is the target).
    teacher = torch.tensor([[5.0, 0.0, 0.0]])
    student = torch.tensor([[0.0, 5.0, 0.0]])
    target = torch.tensor([1])
    terms = _loss("rld", student, TeacherView.from_logits(teacher, target), target)
    assert terms["scd"].item() == pytest.approx(0.0, abs=1e-6)


def test_rld_separate_scd_temperature():
    student, teacher, target = _correct_teacher(8, 10, seed=4)
    view = make_view(teacher, target, "full")
    same = _loss("rld", student, view, target)
    code_default = _loss("rld", student, view, target, scd_temperature=1.0)
    torch.testing.assert_close(code_default["mcd"], same["mcd"])
    assert not torch.allclose(code_default["scd"], same["scd"])
    dkd_t1 = _loss("dkd", student, view, target, temperature=1.0)
    torch.testing.assert_close(code_default["scd"], dkd_t1["tckd"])


# ---------------------------------------------------------------- LoCa

_PROBS = st.integers(2, 12).flatmap(
    lambda c: st.tuples(
        st.lists(st.floats(1e-6, 1.0), min_size=c, max_size=c),
        st.integers(0, c - 1),
        st.floats(0.01, 0.99),
    )
)


@given(_PROBS)
@FAST
def test_loca_properties(case):
    weights, y, alpha = case
    probs = torch.tensor(weights, dtype=torch.float64)
    probs = (probs / probs.sum()).float()[None]  # (1, C)
    target = torch.tensor([y])
    calibrated = calibrate_log_probs(probs.log(), target, alpha).exp()[0]
    p = probs[0]
    if p[y] >= p.max():  # correct (or tied at the top): unchanged
        assert torch.equal(calibrated, torch.exp(torch.log(p)))
        return
    assert calibrated.sum().item() == pytest.approx(1.0, abs=1e-5)
    others = torch.arange(p.numel()) != y
    assert (calibrated[y] > calibrated[others]).all()
    # Ratios between non-target classes are kept: p'_i = s·p_i with one s for the row.
    ratio = calibrated[others] / p[others]
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-4, atol=0)
    sigma = 1.0 / (1.0 - p[y] + p.max())
    assert ratio[0].item() == pytest.approx(alpha * sigma.item(), rel=1e-4)
    assert calibrated[y].item() == pytest.approx(
        1 - alpha * sigma.item() * (1 - p[y].item()), abs=1e-5
    )


def test_loca_alpha_towards_one_is_the_minimal_correction():
    probs = torch.tensor([[0.1, 0.6, 0.3]])
    target = torch.tensor([0])
    close = calibrate_log_probs(probs.log(), target, 0.999).exp()[0]
    assert close[0] > close[1] and close[0].item() == pytest.approx(close[1].item(), rel=1e-2)
    far = calibrate_log_probs(probs.log(), target, 0.5).exp()[0]
    assert far[0] > close[0]


def test_loca_is_kd_when_the_teacher_is_right():
    student, teacher, target = _correct_teacher(8, 10, seed=5)
    view = make_view(teacher, target, "full")
    for ls in (False, True):
        loca = _loss("loca", student, view, target, logit_stand=ls)
        torch.testing.assert_close(loca, _loss("kd", student, view, target, logit_stand=ls))
        dloca, dkd = (_loss(n, student, view, target, logit_stand=ls) for n in ("dkd+loca", "dkd"))
        torch.testing.assert_close(dloca, dkd)


def test_dkd_loca_changes_only_tckd():
    student, teacher, target = _wrong_teacher(8, 10, seed=6)
    view = make_view(teacher, target, "topk", 3)
    dloca, dkd = _loss("dkd+loca", student, view, target), _loss("dkd", student, view, target)
    torch.testing.assert_close(dloca["nckd"], dkd["nckd"])
    assert not torch.allclose(dloca["tckd"], dkd["tckd"])
    # ... and equals DKD run on the calibrated distribution (ratios kept, so NCKD agrees too).
    temperature = 4.0
    log_loca = calibrate_log_probs(F.log_softmax(view.logits / temperature, 1), target, 0.9)
    calibrated_view = TeacherView.from_logits(temperature * log_loca, target)
    on_calibrated = _loss("dkd", student, calibrated_view, target)
    torch.testing.assert_close(dloca["tckd"], on_calibrated["tckd"])
    torch.testing.assert_close(dloca["nckd"], on_calibrated["nckd"], rtol=1e-4, atol=1e-5)


def test_loca_calibration_is_exact_for_a_tiny_label_probability():
    log_p = F.log_softmax(torch.tensor([[-200.0, 10.0, 9.0, 0.0]]), dim=1)
    out = calibrate_log_probs(log_p, torch.tensor([0]), 0.9)
    p = out.exp()[0]
    assert torch.isfinite(out).all()
    assert p[0] > p[1] and p.sum().item() == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- logit standardisation


LS_METHODS = ["kd", "dkd", "rld", "loca", "dkd+loca", "dist"]


@given(
    name=st.sampled_from(LS_METHODS),
    which=st.sampled_from(["student", "teacher"]),
    shift=st.floats(-50, 50),
    scale=st.floats(0.05, 20),
)
@FAST
def test_logit_standardization_is_shift_and_scale_invariant(name, which, shift, scale):
    student, teacher, target = logits_pair(8, 10, seed=7)
    hparams = resolve_hparams(name, logit_stand=True)
    base = compute_loss(
        name, student, make_view(teacher, target, "full"), target, epoch=30, hparams=hparams
    )
    if which == "student":
        student = student * scale + shift
    else:
        teacher = teacher * scale + shift
    moved = compute_loss(
        name, student, make_view(teacher, target, "full"), target, epoch=30, hparams=hparams
    )
    for key in base.keys() - {"ce"}:  # CE uses the raw student logits on purpose
        torch.testing.assert_close(moved[key], base[key], rtol=2e-3, atol=2e-4)


def test_logit_standardization_leaves_ce_raw():
    student, teacher, target = logits_pair(8, 10, seed=8)
    view = make_view(teacher, target, "full")
    plain = _loss("kd", student, view, target)
    ls = _loss("kd", student, view, target, logit_stand=True)
    torch.testing.assert_close(ls["ce"], plain["ce"])
    assert not torch.allclose(ls["kd"], plain["kd"])


# ---------------------------------------------------------------- DIST


@pytest.mark.parametrize("ls", [False, True])
def test_dist_is_zero_for_identical_logits(ls):
    student, _, target = logits_pair(16, 100, seed=9)
    view = make_view(student, target, "full")
    terms = _loss("dist", student, view, target, logit_stand=ls)
    # Not exactly 0: DIST's 1e-8 in the denominator matters for low-variance columns of
    # probabilities (1 − |u|²/(|u|² + 1e-8)); it is tiny next to any real mismatch.
    assert terms["inter"].item() == pytest.approx(0.0, abs=1e-2)
    assert terms["intra"].item() == pytest.approx(0.0, abs=1e-2)
    unrelated = _loss("dist", student, make_view(-student, target, "full"), target, logit_stand=ls)
    assert unrelated["inter"].item() > 1.0 and unrelated["intra"].item() > 1.0


def test_dist_terms_are_bounded():
    # 1 − ρ ∈ [0, 2], times w_kd·τ²·β = 2·16·1.
    student, teacher, target = logits_pair(8, 10, seed=10)
    view = make_view(teacher, target, "full")
    terms = _loss("dist", student, view, target)
    assert 0 < terms["inter"].item() < 2 * 32 and 0 < terms["intra"].item() < 2 * 32


# ---------------------------------------------------------------- LUD


def test_hard_rank_averages_ties():
    ranks = hard_rank(torch.tensor([[3.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]]))
    assert ranks.tolist() == [[3.5, 1.0, 3.5, 2.0], [2.5, 2.5, 2.5, 2.5]]


def test_spearman_extremes():
    x = torch.randn(3, 20)
    torch.testing.assert_close(spearman(x, x.exp()), torch.ones(3))
    torch.testing.assert_close(spearman(x, -x), -torch.ones(3))


@given(seed=st.integers(0, 10_000), ties=st.booleans())
@FAST
def test_soft_spearman_approaches_hard_spearman(seed, ties):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    teacher = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    if ties:
        student, teacher = student.round(), teacher.round()  # many exact ties
    hard = spearman(student, teacher)
    errors = [
        (soft_spearman(student, teacher, s) - hard).abs().max().item() for s in (1.0, 1e-2, 1e-7)
    ]
    assert errors[-1] < 1e-6
    assert errors[0] >= errors[-1]
    torch.testing.assert_close(soft_rank(student, 1e-7), hard_rank(student))


def test_soft_rank_has_gradients():
    x = torch.randn(2, 10, requires_grad=True)
    soft_spearman(x, torch.randn(2, 10), 0.5).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_lud_is_near_zero_when_the_student_copies_the_teacher():
    _, teacher, target = logits_pair(16, 20, seed=11)
    view = make_view(teacher, target, "full")
    terms = _loss("lud", teacher, view, target, rank_strength=1e-6)
    assert terms["cdl"].item() == pytest.approx(0.0, abs=1e-5)
    assert terms["sdl"].item() == pytest.approx(0.0, abs=1e-5)
    far = _loss("lud", -teacher, view, target)
    assert far["cdl"].item() > 1.0 and far["sdl"].item() > 1.0


def test_lud_masks_keep_the_upper_half():
    # A batch of one has no sample above its own median: only CE is left.
    student, teacher, target = logits_pair(1, 10, seed=12)
    terms = _loss("lud", student, make_view(teacher, target, "full"), target)
    assert terms["sdl"].item() == 0.0
    assert math.isfinite(terms["cdl"].item())
