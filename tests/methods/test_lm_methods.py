"""The language-model methods ``rkl`` and ``jsd`` against their reference, and every method's
verdict on token rows (rows = positions, the true class = the next token)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from logitcache.errors import BadInput
from logitcache.methods import compute_loss, get_method, list_methods, register_method, resolve_hparams
from logitcache.methods._registry import METHODS
from logitcache.methods.jsd import generalized_jsd
from logitcache.teacher_view import TeacherView

from .cases import docs_verdicts, logits_pair, make_view
from .test_sampled_verdicts import sampled_view


def trl_generalized_jsd_loss(student_logits, teacher_logits, beta=0.5, temperature=1.0):
    """A transcription of TRL's ``GKDTrainer.generalized_jsd_loss`` (trl/trainer/gkd_trainer.py,
    no labels, ``reduction="batchmean"``) on (batch, sequence, vocabulary) logits: torch's
    ``F.kl_div(input, target)`` is KL(target || input), hence the swapped arguments."""
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        per_token = F.kl_div(s, t, reduction="none", log_target=True)
    elif beta == 1:
        per_token = F.kl_div(t, s, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=s.dtype)
        mixture = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
        per_token = b * F.kl_div(mixture, t, reduction="none", log_target=True) + (1 - b) * F.kl_div(
            mixture, s, reduction="none", log_target=True
        )
    return per_token.sum() / (per_token.size(0) * per_token.size(1))


BETAS = [0.0, 1e-3, 0.1, 0.5, 0.9, 1.0]
TEMPERATURES = [0.5, 1.0, 2.0]


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_jsd_is_trls_generalized_jsd_to_1e_12_in_float64(beta, temperature):
    student, teacher, _ = logits_pair(12, 50, seed=7)
    z_s, z_t = student.double(), teacher.double()
    ours = generalized_jsd(z_s, z_t, beta, temperature).mean()
    # Rows are positions: one sequence of 12 tokens in TRL's (batch, sequence, vocabulary) shape.
    reference = trl_generalized_jsd_loss(z_s[None], z_t[None], beta, temperature)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_the_jsd_method_is_trls_loss_in_fp32(beta, temperature):
    student, teacher, target = logits_pair(12, 50, seed=8)
    hparams = resolve_hparams("jsd", overrides={"beta": beta, "temperature": temperature, "ce_weight": 0.3})
    terms = compute_loss("jsd", student, TeacherView.from_logits(teacher, target), target, epoch=1, hparams=hparams)
    reference = trl_generalized_jsd_loss(student.double()[None], teacher.double()[None], beta, temperature)
    assert terms["jsd"].item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    assert terms["ce"].item() == pytest.approx(0.3 * F.cross_entropy(student, target).item(), rel=1e-6)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_the_ends_are_kd_and_rkl_without_their_t_squared(temperature):
    student, teacher, target = logits_pair(16, 30, seed=9)
    view = make_view(teacher, target, "topk", 5)

    def term(name, key, **overrides):
        return compute_loss(name, student, view, target, epoch=1, hparams=resolve_hparams(name, overrides=overrides))[key]

    t2 = temperature**2
    forward = term("kd", "kd", temperature=temperature, kd_weight=1.0)
    reverse = term("rkl", "rkl", temperature=temperature, rkl_weight=1.0)
    torch.testing.assert_close(term("jsd", "jsd", beta=0.0, temperature=temperature) * t2, forward)
    torch.testing.assert_close(term("jsd", "jsd", beta=1.0, temperature=temperature) * t2, reverse)
    assert not torch.allclose(forward, reverse)


def test_rkl_is_kl_of_the_student_from_the_teacher():
    student, teacher, target = logits_pair(16, 30, seed=10)
    terms = compute_loss("rkl", student, TeacherView.from_logits(teacher, target), target, epoch=1,
                         hparams=resolve_hparams("rkl"))
    p_s, p_t = F.softmax(student.double() / 4, dim=1), F.softmax(teacher.double() / 4, dim=1)
    expected = 0.9 * 16 * (p_s * (p_s.log() - p_t.log())).sum(dim=1).mean()
    assert terms["rkl"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_rkl_on_a_topk_view_reads_the_tail_as_flat():
    """The documented top-k reading: at T = 1 the tail's share of KL(p_s || p_t) is the KL of the
    two tail masses plus the student's tail mass times KL(its tail shape || uniform)."""
    student, teacher, target = logits_pair(8, 40, seed=11, teacher_scale=1.0)  # tail mass well above the 1e-6 floor
    view = make_view(teacher, target, "topk", 5)
    got = compute_loss("rkl", student, view, target, epoch=1,
                       hparams=resolve_hparams("rkl", overrides={"temperature": 1.0, "ce_weight": 0.0, "rkl_weight": 1.0}))
    p_s, p_t = F.softmax(student.double(), dim=1), F.softmax(teacher.double(), dim=1)
    known = torch.zeros_like(p_s, dtype=torch.bool).scatter_(1, view.topk_indices, True)
    known.scatter_(1, target[:, None], True)
    head = torch.where(known, p_s * (p_s.log() - p_t.log()), 0.0).sum(dim=1)
    tail_s, tail_t = (torch.where(known, 0.0, p).sum(dim=1) for p in (p_s, p_t))
    shape = torch.where(known, 0.0, p_s) / tail_s[:, None]
    flat = (torch.special.xlogy(shape, shape).sum(dim=1) + torch.log((~known).sum(dim=1).double()))
    expected = head + tail_s * torch.log(tail_s / tail_t) + tail_s * flat
    assert got["rkl"].item() == pytest.approx(expected.mean().item(), rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    beta=st.floats(0.0, 1.0),
    temperature=st.floats(0.25, 8.0),
    scale=st.floats(0.1, 30.0),
)
def test_jsd_is_a_bounded_divergence(seed, beta, temperature, scale):
    student, teacher, _ = logits_pair(6, 20, seed=seed, teacher_scale=scale)
    z_s, z_t = student.double() * scale, teacher.double()
    jsd = generalized_jsd(z_s, z_t, beta, temperature)
    assert (jsd >= -1e-12).all()
    assert generalized_jsd(z_t, z_t, beta, temperature).abs().max() < 1e-12
    if 0 < beta < 1:  # β·KL(p_t || m) ≤ β·log(1/β), and likewise for the student: the binary entropy
        entropy = -beta * torch.log(torch.tensor(beta, dtype=torch.float64)) - (1 - beta) * torch.log1p(
            torch.tensor(-beta, dtype=torch.float64))
        assert (jsd <= entropy + 1e-9).all()


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_jsd_refuses_a_beta_outside_0_1(beta):
    student, teacher, target = logits_pair(4, 10)
    with pytest.raises(BadInput, match=r"jsd: beta must lie in \[0, 1\]"):
        compute_loss("jsd", student, TeacherView.from_logits(teacher, target), target, epoch=1,
                     hparams=resolve_hparams("jsd", overrides={"beta": beta}))


def test_jsd_runs_on_draws_only_as_forward_kl_at_their_temperature():
    jsd = get_method("jsd")
    assert jsd.refusal_on_sampled(resolve_hparams("jsd", overrides={"beta": 0.0}), 1.0) is None
    assert "JSD with beta=0.5" in jsd.refusal_on_sampled(resolve_hparams("jsd"), 1.0)
    assert "JSD (beta=0) at T=1" in jsd.refusal_on_sampled(resolve_hparams("jsd", overrides={"beta": 0.0}), 2.0)
    student, view, target = sampled_view(1.0)
    terms = compute_loss("jsd", student, view, target, epoch=1, hparams=resolve_hparams("jsd", overrides={"beta": 0.0}))
    q = view.sampled_probs.double()
    expected = (torch.special.xlogy(q, q) - q * F.log_softmax(student.double(), dim=1)).sum(dim=1).mean()
    assert terms["jsd"].item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------- token rows
def test_every_method_declares_its_verdict_on_tokens_and_the_docs_state_it():
    assert docs_verdicts("Language models", "yes|refused") == {
        name: "refused" if get_method(name).refusal_on_tokens() else "yes" for name in list_methods()
    }
    for name in list_methods():
        info = get_method(name)
        assert info.tokens is not None and info.tokens.reason and "\n" not in info.tokens.reason, name


def test_a_method_not_meaningful_on_tokens_is_refused_with_its_reason():
    get_method("kd").check_tokens()
    with pytest.raises(BadInput, match=r"^lud is not meaningful on token rows \(a text dataset\): .*use kd, rkl or jsd$"):
        get_method("lud").check_tokens()


def test_a_method_without_a_token_verdict_is_refused():
    @register_method("_undeclared_tokens_probe", sampled="never")
    def probe(student_logits, teacher, target, *, epoch: int):
        """A probe method that declares nothing about token rows."""
        return {"x": student_logits.sum()}

    try:
        with pytest.raises(BadInput, match="declares no verdict on token rows"):
            get_method("_undeclared_tokens_probe").check_tokens()
    finally:
        METHODS._items.pop("_undeclared_tokens_probe", None)
