"""TeacherView: full logits pass through; a top-k view rebuilds the distribution as documented."""

from __future__ import annotations

import math

import torch

from logitcache.teacher_view import TeacherView


def _topk_view(logits: torch.Tensor, target: torch.Tensor, k: int, values_dtype=torch.float32) -> TeacherView:
    values, indices = torch.topk(logits, k, dim=1)
    return TeacherView.from_topk(
        values.to(values_dtype), indices, torch.logsumexp(logits, dim=1), logits.gather(1, target[:, None])[:, 0],
        target, logits.shape[1],
    )


def test_full_view():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float16)
    target = torch.tensor([0, 2], dtype=torch.int32)
    view = TeacherView.from_logits(logits, target)
    assert view.exact and view.batch_size == 2 and view.num_classes == 3
    assert view.logits.dtype == torch.float32 and view.target.dtype == torch.int64
    assert torch.equal(view.argmax, torch.tensor([1, 2]))
    assert torch.allclose(view.log_probs(2.0), torch.log_softmax(logits.float() / 2, dim=1))
    assert torch.allclose(view.probs(), torch.softmax(logits.float(), dim=1))
    want = torch.log_softmax(logits.float(), dim=1)[[0, 1], [0, 2]]
    assert torch.allclose(view.target_log_prob, want)


def test_topk_rebuild_by_hand():
    # C = 5, k = 2, label 4 outside the top-k: known {0, 1, 4}; classes 2 and 3 share the rest.
    logits = torch.tensor([[4.0, 3.0, 1.0, -2.0, 0.0]])
    view = _topk_view(logits, torch.tensor([4]), 2)
    assert not view.exact
    p = torch.softmax(logits.double(), dim=1)[0]
    rest = (1 - p[0] - p[1] - p[4]) / 2
    want = torch.log(torch.tensor([p[0], p[1], rest, rest, p[4]]))
    assert torch.allclose(view.log_probs()[0].double(), want, atol=1e-6)
    assert math.isclose(float(view.target_log_prob), math.log(p[4]), abs_tol=1e-6)
    assert int(view.argmax) == 0


def test_topk_with_label_inside_the_topk():
    logits = torch.tensor([[4.0, 3.0, 1.0, -2.0, 0.0]])
    view = _topk_view(logits, torch.tensor([1]), 2)
    p = torch.softmax(logits.double(), dim=1)[0]
    rest = (1 - p[0] - p[1]) / 3
    assert torch.allclose(view.probs()[0].double(), torch.tensor([p[0], p[1], rest, rest, rest]), atol=1e-7)


def test_fp32_true_class_logit_wins_over_fp16_value():
    logits = torch.tensor([[10.123456, 3.0, 1.0]])
    view = _topk_view(logits, torch.tensor([0]), 1, values_dtype=torch.float16)
    assert float(view.topk_values[0, 0]) != float(logits[0, 0])  # fp16 rounded it
    assert float(view.logits[0, 0]) == float(logits[0, 0])


def test_known_mass_rounding_past_one_stays_finite():
    # fp16 values can round the known mass up to (or past) one; the rest then gets almost
    # nothing instead of log(negative) = NaN.
    logits = torch.tensor([[20.0, 0.0, -30.0, -30.0]])
    values, indices = torch.topk(logits, 2, dim=1)
    lse = torch.logsumexp(logits, dim=1) - 1e-3  # a normaliser a little too small
    view = TeacherView.from_topk(values, indices, lse, logits[:, 0], torch.tensor([0]), 4)
    assert torch.isfinite(view.log_probs()).all()
    assert view.logits[0, 2] == view.logits[0, 3] and float(view.probs()[0, 2]) < 1e-5


def test_to_moves_every_tensor():
    logits = torch.randn(3, 6)
    for view in (TeacherView.from_logits(logits, torch.tensor([0, 1, 2])), _topk_view(logits, torch.tensor([0, 1, 2]), 2)):
        moved = view.to("cpu")
        assert moved is not view and moved.exact == view.exact
        assert torch.equal(moved.logits, view.logits) and torch.equal(moved.target, view.target)
