"""The shared maths of ``logitcache.methods._common``, tested on its own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from logitcache.errors import BadInput
from logitcache.methods._common import (
    binary_log_split,
    kl_per_sample,
    large_negative,
    mask_out,
    pearson,
    standardize,
    temperature_kl,
    true_class_mask,
    warmup_factor,
)


def test_true_class_mask():
    mask = true_class_mask(torch.tensor([2, 0]), 4)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[False, False, True, False], [True, False, False, False]]


def test_binary_split_matches_the_sums():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=gen)
    mask = true_class_mask(torch.tensor([0, 1, 2, 3, 6]), 7)
    probs = logits.softmax(dim=1)
    expected = torch.stack([(probs * mask).sum(1), (probs * ~mask).sum(1)], dim=1).log()
    torch.testing.assert_close(binary_log_split(logits, mask), expected)


def test_binary_split_does_not_underflow():
    logits = torch.tensor([[0.0, 1e4, -1e4], [-1e4, 0.0, 0.0]], requires_grad=True)
    mask = true_class_mask(torch.tensor([0, 0]), 3)
    split = binary_log_split(logits, mask)
    assert torch.isfinite(split).all()
    # log of the plain sums would be -inf here (the "plain log, no epsilon" of the reference).
    assert split[0, 0].item() == pytest.approx(-1e4)
    assert split[1, 0].item() == pytest.approx(-1e4 - torch.log(torch.tensor(2.0)).item())
    split.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_mask_value_is_finite_and_drops_the_class(dtype):
    value = large_negative(dtype)
    assert torch.isfinite(torch.tensor(value, dtype=dtype))
    logits = torch.tensor([[3.0, 1.0, -2.0]], dtype=dtype)
    probs = mask_out(logits, torch.tensor([[True, False, False]])).float().softmax(dim=1)
    assert probs[0, 0].item() == 0.0
    torch.testing.assert_close(probs[0, 1:], logits[0, 1:].float().softmax(dim=0))


def test_fully_masked_row_is_uniform():
    logits = torch.randn(2, 4)
    log_p = F.log_softmax(mask_out(logits, torch.ones(2, 4, dtype=torch.bool)), dim=1)
    torch.testing.assert_close(log_p, torch.full((2, 4), -torch.log(torch.tensor(4.0)).item()))


def test_kl_matches_torch_and_ignores_zero_mass():
    gen = torch.Generator().manual_seed(1)
    log_p = F.log_softmax(torch.randn(4, 6, generator=gen), dim=1)
    log_q = F.log_softmax(torch.randn(4, 6, generator=gen), dim=1)
    expected = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)
    torch.testing.assert_close(kl_per_sample(log_p, log_q), expected)
    torch.testing.assert_close(kl_per_sample(log_p, log_p), torch.zeros(4))
    # A class with zero teacher mass and a very negative student log-probability adds nothing.
    log_p0 = torch.tensor([[0.0, -1e9]])
    log_q0 = torch.tensor([[-1e-3, -2e9]])
    assert kl_per_sample(log_p0, log_q0).item() == pytest.approx(1e-3)


def test_temperature_kl_is_t_squared_batchmean():
    gen = torch.Generator().manual_seed(2)
    log_p = F.log_softmax(torch.randn(4, 6, generator=gen), dim=1)
    log_q = F.log_softmax(torch.randn(4, 6, generator=gen), dim=1)
    expected = 9.0 * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    torch.testing.assert_close(temperature_kl(log_p, log_q, 3.0), expected)


def test_standardize_is_the_reference_z_score():
    gen = torch.Generator().manual_seed(3)
    logits = 5 * torch.randn(6, 100, generator=gen) + 3
    z = standardize(logits)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        z.std(dim=1), torch.ones(6), atol=1e-5, rtol=0
    )  # unbiased, as the code
    mean, std = logits.mean(-1, keepdim=True), logits.std(-1, keepdim=True)
    torch.testing.assert_close(z, (logits - mean) / (1e-7 + std))


def test_standardize_gradient_flows_through_mean_and_std():
    logits = torch.randn(3, 10, requires_grad=True)
    weights = torch.randn(3, 10)
    (standardize(logits) * weights).sum().backward()
    # Shifting or scaling a row leaves z unchanged, so the gradient is orthogonal to both.
    torch.testing.assert_close(logits.grad.sum(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        (logits.grad * logits.detach()).sum(dim=1), torch.zeros(3), atol=1e-4, rtol=0
    )


def test_standardize_constant_rows_are_finite():
    logits = torch.full((2, 5), 3.0, requires_grad=True)
    z = standardize(logits)
    assert torch.isfinite(z).all()
    z.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("epoch", "factor"), [(1, 0.05), (10, 0.5), (20, 1.0), (30, 1.0), (240, 1.0)]
)
def test_warmup_factor(epoch, factor):
    assert warmup_factor(epoch, 20) == pytest.approx(factor)


def test_warmup_factor_edges():
    assert warmup_factor(1, 0) == 1.0
    with pytest.raises(BadInput, match="1-based"):
        warmup_factor(0, 20)


def test_pearson_is_dist_form_and_safe():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    expected = torch.stack(
        [torch.corrcoef(torch.stack([x, y]))[0, 1] for x, y in zip(a, b, strict=True)]
    )
    torch.testing.assert_close(pearson(a, b), expected, atol=1e-6, rtol=1e-5)
    constant = torch.ones(2, 8, requires_grad=True)
    rho = pearson(constant, torch.randn(2, 8))
    assert rho.tolist() == [0.0, 0.0]
    rho.sum().backward()
    assert torch.isfinite(constant.grad).all()
