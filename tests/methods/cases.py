"""Shared builders for the method tests: seeded logits, teacher views of either encoding."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from logitcache.methods import get_method, list_methods, resolve_hparams
from logitcache.teacher_view import TeacherView

DOCS = Path(__file__).parents[2] / "docs" / "methods.md"


def docs_verdicts(section: str, words: str) -> dict[str, str]:
    """method -> verdict (one of ``words``, a regex alternation: ``runs|refused``) from the verdict
    table of docs/methods.md's ``## {section}``: the docs and the registry must agree."""
    text = DOCS.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    verdicts: dict[str, str] = {}
    for names, verdict in re.findall(rf"^\| (`[^|]+`) \| ({words})", text, flags=re.M):
        for name in re.findall(r"`([^`]+)`", names):
            verdicts[name] = verdict
    return verdicts


# (encoding, C, k): a full view, and top-k views as the cache stores them (k=5 of 100, k=3 of 10).
ENCODINGS = [("full", 100, None), ("full", 10, None), ("topk", 100, 5), ("topk", 10, 3)]
ENCODING_IDS = [f"{e}{k or ''}-C{c}" for e, c, k in ENCODINGS]


def logits_pair(
    batch: int, num_classes: int, seed: int = 0, teacher_scale: float = 3.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded (student logits, teacher logits, labels); the teacher is right on most samples."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (batch,), generator=gen)
    teacher = teacher_scale * torch.randn(batch, num_classes, generator=gen)
    # Push the label up on every other sample so that both right and wrong teachers occur.
    teacher[::2] += 2.0 * teacher_scale * torch.nn.functional.one_hot(target, num_classes)[::2]
    student = torch.randn(batch, num_classes, generator=gen)
    return student, teacher, target


def make_view(
    teacher_logits: Tensor, target: Tensor, encoding: str, k: int | None = None
) -> TeacherView:
    """A ``TeacherView`` of ``teacher_logits``: full, or top-k as a cache stores it."""
    if encoding == "full":
        return TeacherView.from_logits(teacher_logits, target)
    num_classes = teacher_logits.shape[1]
    k = k or max(1, min(5, num_classes - 1))
    values, indices = torch.topk(teacher_logits, k, dim=1)
    lse = torch.logsumexp(teacher_logits.float(), dim=1)
    target_logit = teacher_logits.gather(1, target[:, None])[:, 0]
    return TeacherView.from_topk(values, indices, lse, target_logit, target, num_classes)


def hparam_variants(name: str) -> list[tuple[str, dict]]:
    """("default", ...) for every method and ("ls", ...) where logit standardisation exists."""
    variants = [("default", resolve_hparams(name))]
    if get_method(name).supports_logit_stand:
        variants.append(("ls", resolve_hparams(name, logit_stand=True)))
    return variants


METHOD_VARIANTS = [
    pytest.param(name, label, hp, id=f"{name}-{label}")
    for name in list_methods()
    for label, hp in hparam_variants(name)
]


def assert_finite_terms(terms: dict[str, Tensor]) -> None:
    assert isinstance(terms, dict) and terms
    for key, value in terms.items():
        assert isinstance(key, str)
        assert isinstance(value, Tensor), key
        assert value.dim() == 0, (key, value.shape)
        assert value.dtype == torch.float32, (key, value.dtype)
        assert math.isfinite(value.item()), (key, value.item())
