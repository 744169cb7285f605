"""Which methods are defined on a sampled target: each runs or refuses with its reason, as
docs/methods.md's verdict table says, and KD's verdict depends on its temperature and --logit-stand."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from logitcache.errors import BadInput
from logitcache.methods import compute_loss, get_method, list_methods, register_method, resolve_hparams
from logitcache.methods._registry import _UNDECLARED, METHODS
from logitcache.store.encodings import get_encoding
from logitcache.store.format import EncodingInfo

from .cases import docs_verdicts, logits_pair


def sampled_docs() -> dict[str, str]:
    return docs_verdicts("Sampled caches", "runs|refused")


def sampled_view(temperature: float, classes: int = 10, batch: int = 6):
    student, teacher, target = logits_pair(batch, classes)
    info = EncodingInfo(kind="sampled", dtype="fp32", samples=20, temperature=temperature)
    encoding = get_encoding(info, classes)
    view = encoding.decode(encoding.encode_pairs(teacher, target, np.arange(batch, dtype=np.uint32)), target)
    return student, view, target


def test_every_method_declares_a_verdict_and_the_docs_list_it():
    assert sampled_docs().keys() == set(list_methods())
    for name in list_methods():
        assert get_method(name).needs_teacher is False or get_method(name).sampled != _UNDECLARED, name


@pytest.mark.parametrize("name", list_methods())
def test_each_method_runs_or_refuses_as_documented(name):
    """With default hyper-parameters at their own temperature (where they have one)."""
    hparams = resolve_hparams(name)
    student, view, target = sampled_view(hparams.get("temperature") or 4.0)
    if sampled_docs()[name] == "runs":
        terms = compute_loss(name, student.requires_grad_(), view, target, epoch=1, hparams=hparams)
        total = sum(terms.values())
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(student.grad).all()
    else:
        reason = get_method(name).refusal_on_sampled(hparams, view.sample_temperature)
        assert reason and "dump with --full or --topk" in reason
        with pytest.raises(BadInput, match=f"^{re.escape(name)} is not defined on a sampled cache: "):
            compute_loss(name, student, view, target, epoch=1, hparams=hparams)


def test_kd_needs_the_sampling_temperature_and_no_logit_stand():
    kd = get_method("kd")
    assert kd.refusal_on_sampled(resolve_hparams("kd", overrides={"temperature": 2.0}), 2.0) is None
    reason = kd.refusal_on_sampled(resolve_hparams("kd"), 1.0)
    assert "KD at T=4" in reason and "--set temperature=1" in reason and "--sample-temperature 4" in reason
    assert "logit standardisation" in kd.refusal_on_sampled(resolve_hparams("kd", logit_stand=True, overrides={"temperature": 1.0}), 1.0)
    student, view, target = sampled_view(1.0)
    with pytest.raises(BadInput, match="KD at T=4"):
        compute_loss("kd", student, view, target, epoch=1, hparams=resolve_hparams("kd"))


def test_kd_on_draws_is_kl_from_the_empirical_target():
    student, view, target = sampled_view(4.0)
    terms = compute_loss("kd", student, view, target, epoch=1, hparams=resolve_hparams("kd"))
    q = view.sampled_probs.double()
    log_p_s = torch.log_softmax(student.double() / 4.0, dim=1)
    kl = (torch.special.xlogy(q, q) - q * log_p_s).sum(dim=1).mean()
    assert float(terms["kd"]) == pytest.approx(0.9 * 16 * float(kl), rel=1e-5)
    assert float(terms["ce"]) == pytest.approx(0.1 * float(torch.nn.functional.cross_entropy(student, target)), rel=1e-5)


def test_a_method_without_a_declaration_is_refused():
    @register_method("_undeclared_probe")
    def probe(student_logits, teacher, target, *, epoch: int, weight: float = 1.0):
        """A probe method that declares nothing about sampled targets."""
        return {"x": weight * student_logits.sum()}

    try:
        student, view, target = sampled_view(1.0)
        with pytest.raises(BadInput, match="declares no verdict on sampled targets"):
            compute_loss("_undeclared_probe", student, view, target, epoch=1, hparams={})
    finally:
        METHODS._items.pop("_undeclared_probe", None)
