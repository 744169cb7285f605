"""Conformance tests run for every registered method (and its "ls" variant) and encoding.

Each method must return named finite scalar terms, backpropagate finite gradients to the
student, and stay finite on extreme inputs: logits ×1e3 (also at T = 1), teacher logits that
went through fp16, a label the teacher ranks last, and binary problems.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from logitcache.methods import compute_loss, get_method, list_methods
from logitcache.teacher_view import TeacherView

from .cases import (
    ENCODING_IDS,
    ENCODINGS,
    METHOD_VARIANTS,
    assert_finite_terms,
    logits_pair,
    make_view,
)


def _run(name, hparams, student, teacher_logits, target, encoding, k, epoch=5):
    return _run_view(
        name, hparams, student, make_view(teacher_logits, target, encoding, k), target, epoch
    )


def _run_view(name, hparams, student, view, target, epoch=5):
    student = student.clone().requires_grad_(True)
    terms = compute_loss(name, student, view, target, epoch=epoch, hparams=hparams)
    assert_finite_terms(terms)
    sum(terms.values()).backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all(), f"{name}: non-finite student gradient"
    return terms, student.grad


@pytest.mark.parametrize(("encoding", "num_classes", "k"), ENCODINGS, ids=ENCODING_IDS)
@pytest.mark.parametrize(("name", "label", "hparams"), METHOD_VARIANTS)
def test_finite_terms_and_gradients(name, label, hparams, encoding, num_classes, k):
    student, teacher, target = logits_pair(16, num_classes, seed=1)
    terms, grad = _run(name, hparams, student, teacher, target, encoding, k)
    assert grad.abs().sum() > 0
    assert "ce" in terms


def _extreme_cases(num_classes):
    student, teacher, target = logits_pair(12, num_classes, seed=2)
    last = teacher.argmin(dim=1)
    yield "x1e3", student * 1e3, teacher * 1e3, target, False
    yield "x1e3-T1", student * 1e3, teacher * 1e3, target, True
    yield "fp16-teacher", student, (teacher * 40).half().float(), target, False
    yield "label-ranked-last", student, teacher, last, False
    yield "label-last-x1e3-T1", student * 1e3, teacher * 1e3, last, True
    yield "constant-student", torch.zeros_like(student), teacher, target, False


EXTREME_IDS = [
    "x1e3",
    "x1e3-T1",
    "fp16-teacher",
    "label-ranked-last",
    "label-last-x1e3-T1",
    "constant-student",
]


def _at_temperature_one(hparams):
    hp = dict(hparams)
    for key in ("temperature", "scd_temperature"):
        if key in hp:
            hp[key] = 1.0
    if "t_min" in hp:
        hp["t_min"], hp["t_max"] = 1.0, 1.0
    return hp


@pytest.mark.parametrize("case", range(len(EXTREME_IDS)), ids=EXTREME_IDS)
@pytest.mark.parametrize(("encoding", "num_classes", "k"), ENCODINGS, ids=ENCODING_IDS)
@pytest.mark.parametrize(("name", "label", "hparams"), METHOD_VARIANTS)
def test_extreme_inputs_stay_finite(name, label, hparams, encoding, num_classes, k, case):
    _, student, teacher, target, t_one = list(_extreme_cases(num_classes))[case]
    hp = _at_temperature_one(hparams) if t_one else hparams
    _run(name, hp, student, teacher, target, encoding, k)


@pytest.mark.parametrize(("encoding", "k"), [("full", None), ("topk", 1)])
@pytest.mark.parametrize(("name", "label", "hparams"), METHOD_VARIANTS)
def test_binary_problems(name, label, hparams, encoding, k):
    student, teacher, target = logits_pair(8, 2, seed=3)
    _run(name, hparams, student, teacher, target, encoding, k)
    _run(name, hparams, student * 1e3, teacher * 1e3, target, encoding, k)


@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize(("name", "label", "hparams"), METHOD_VARIANTS)
def test_fp16_topk_cache(name, label, hparams, scale):
    # A cache stores the top-k values in fp16 but lse and the true-class logit in fp32, so the
    # known mass can round past 1; TeacherView clamps it, and every method must stay finite.
    student, teacher, target = logits_pair(16, 100, seed=6)
    teacher = scale * teacher
    values, indices = torch.topk(teacher, 5, dim=1)
    lse = torch.logsumexp(teacher, dim=1)
    target_logit = teacher.gather(1, target[:, None])[:, 0]
    view = TeacherView.from_topk(values.half(), indices, lse, target_logit, target, 100)
    _run_view(name, hparams, student, view, target)


@pytest.mark.parametrize("name", list_methods())
def test_fp16_student_logits_are_computed_in_fp32(name):
    student, teacher, target = logits_pair(8, 10, seed=4)
    view = make_view(teacher, target, "full")
    half = compute_loss(name, student.half(), view, target, epoch=5, hparams={})
    full = compute_loss(name, student.half().float(), view, target, epoch=5, hparams={})
    assert_finite_terms(half)
    for key in full:
        torch.testing.assert_close(half[key], full[key])


@pytest.mark.parametrize("name", list_methods())
def test_defaults_come_from_the_signature(name):
    info = get_method(name)
    params = inspect.signature(info.fn).parameters
    expected = {
        p.name: p.default for p in params.values() if p.kind is p.KEYWORD_ONLY and p.name != "epoch"
    }
    assert info.defaults() == expected
    assert info.supports_logit_stand == ("logit_stand" in expected)
    assert info.summary and info.summary == inspect.getdoc(info.fn).splitlines()[0]
    doc = inspect.getdoc(info.fn)
    for key in expected:  # every hyper-parameter is documented
        assert f"{key}:" in doc, f"{name}: {key} missing from the docstring"


@pytest.mark.parametrize("name", list_methods())
def test_methods_are_pure(name):
    student, teacher, target = logits_pair(8, 10, seed=5)
    view = make_view(teacher, target, "topk", 3)
    before = (student.clone(), view.logits.clone(), target.clone())
    first = compute_loss(name, student, view, target, epoch=7, hparams={})
    second = compute_loss(name, student, view, target, epoch=7, hparams={})
    for key in first:
        assert torch.equal(first[key], second[key])
    assert torch.equal(student, before[0]) and torch.equal(view.logits, before[1])
    assert torch.equal(target, before[2])
