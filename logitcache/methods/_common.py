"""Maths shared by the KD methods: masks, binary splits, KL, logit standardisation, warm-up.

Every helper works in fp32 on (B, C) logits and is safe for extreme inputs: sums of
probabilities are formed as log-sum-exps (never ``log`` of a sum, reference note 9), masked
entries get a large *finite* negative (so a fully masked row is uniform, not NaN), and a KL
term never multiplies a zero probability by an infinite log.

References: mdistiller ``DKD.py`` (masks, binary split, "-1000" trick), logit-standardization-KD
``normalize`` (z-score), mdistiller trainer (1-based epochs for the warm-up factor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BadInput

# Magnitude used to knock classes out of a softmax. mdistiller subtracts 1000 (DKD) and RLD
# fills -1e9; both leave a probability of exactly 0 in fp32. The cap keeps it finite in fp16.
_MASK_MAGNITUDE = 1e9

# The logit-standardisation epsilon of the reference code: (z - mean) / (1e-7 + std).
LS_EPS = 1e-7


def large_negative(dtype: torch.dtype) -> float:
    """A finite value whose softmax weight is 0 next to any realistic logit, for ``dtype``.

    -1e9 in fp32/fp64 (RLD's fill value); half of the most negative finite number in fp16/bf16,
    so that subtracting a row maximum cannot overflow to -inf.
    """
    return -min(_MASK_MAGNITUDE, torch.finfo(dtype).max / 2)


def true_class_mask(target: Tensor, num_classes: int) -> Tensor:
    """(B, C) bool mask, True at each row's class ``target[b]``."""
    return F.one_hot(target.long(), num_classes).bool()


def mask_out(logits: Tensor, mask: Tensor) -> Tensor:
    """``logits`` with the entries where ``mask`` is True replaced by a large finite negative.

    A softmax over the result renormalises over the remaining classes; a fully masked row
    becomes uniform (every entry equal), which is what RLD's MCD relies on.
    """
    return logits.masked_fill(mask, large_negative(logits.dtype))


def binary_log_split(logits: Tensor, mask: Tensor) -> Tensor:
    """(B, 2) log of [Σ_{c∈mask} softmax(logits)_c, Σ_{c∉mask} softmax(logits)_c].

    Both parts come from log-sum-exps, so neither underflows to log(0) = -inf when one side
    holds almost all of the mass (DKD's TCKD with a student that is sure of another class).

    Args:
        logits: (B, C) temperature-scaled logits, or log-probabilities (the split is
            shift-invariant).
        mask: (B, C) bool, the classes of the first part (e.g. the true class).
    """
    lse = torch.logsumexp(logits, dim=1)  # (B,)
    inside = torch.logsumexp(mask_out(logits, ~mask), dim=1)  # (B,)
    outside = torch.logsumexp(mask_out(logits, mask), dim=1)  # (B,)
    return torch.stack([inside - lse, outside - lse], dim=1)


def kl_per_sample(log_p: Tensor, log_q: Tensor) -> Tensor:
    """(B,) KL(p || q) = Σ_c p_c (log p_c - log q_c) from log-probabilities (both (B, K)).

    ``p`` is usually the (detached) teacher. Entries with p_c = 0 contribute exactly 0 as long
    as the logs are finite, which every helper here guarantees.
    """
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def kl_from_probs(p: Tensor, log_q: Tensor) -> Tensor:
    """(B,) KL(p || q) with ``p`` as probabilities that may be exactly 0 (a sampled target)."""
    return (torch.special.xlogy(p, p) - p * log_q).sum(dim=1)


def temperature_kl(log_p_teacher: Tensor, log_p_student: Tensor, temperature: float) -> Tensor:
    """T² · batchmean KL(p_teacher || p_student): Hinton's gradient-scale-corrected KD term."""
    return temperature**2 * kl_per_sample(log_p_teacher, log_p_student).mean()


def standardize(logits: Tensor) -> Tensor:
    """Per-row z-score of logit standardisation (Sun et al., CVPR 2024), in the code's form.

    ``(z - mean(z)) / (1e-7 + std(z))`` with the unbiased std (``torch.std``'s default), as in
    logit-standardization-KD's ``normalize``; the paper's Algorithm 1 uses the population std,
    a factor sqrt((K-1)/K) apart. The base temperature is applied afterwards by the host loss.
    Gradients flow through the mean and std (no detach), as in the reference code.
    """
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (LS_EPS + std)


def warmup_factor(epoch: int, warmup: float) -> float:
    """DKD's linear warm-up ``min(epoch / warmup, 1)`` with a 1-based ``epoch``.

    0.05 at epoch 1 and 1.0 from epoch 20 on for warmup = 20; ``warmup <= 0`` disables it.
    """
    if epoch < 1:
        raise BadInput(f"epoch is 1-based (the first epoch is 1), got {epoch}")
    if warmup <= 0:
        return 1.0
    return min(epoch / warmup, 1.0)


class MixedTarget(Tensor):
    """The (B,) true classes of a batch with mixed views (each view's larger share's label, which
    LoCa, DKD, RLD and the stored true-class logit use) that also carries each view's own label
    ``own``, its partner's ``other`` and its own share ``lam``: :func:`cross_entropy` takes the
    λ-weighted pair, timm's mixup target. Every other use sees a plain tensor of true classes."""

    own: Tensor
    other: Tensor
    lam: Tensor

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        # Results of ops are plain tensors (Tensor's own hook would make them attribute-less MixedTargets).
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def mixed_target(true_class: Tensor, own: Tensor, other: Tensor, lam: Tensor) -> MixedTarget:
    target = true_class.as_subclass(MixedTarget)
    target.own, target.other, target.lam = own, other, lam
    return target


def cross_entropy(student_logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy on the raw fp32 student logits (never standardised); of a
    :class:`MixedTarget`, λ·CE(own label) + (1 - λ)·CE(partner's label) per view."""
    z = student_logits.float()
    if isinstance(target, MixedTarget):
        own = F.cross_entropy(z, target.own.long(), reduction="none")
        other = F.cross_entropy(z, target.other.long(), reduction="none")
        lam = target.lam.to(z)
        return (lam * own + (1 - lam) * other).mean()
    return F.cross_entropy(z, target.long())


def pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """(N,) row-wise Pearson correlation of (N, K) matrices, DIST's form.

    The cosine similarity of the mean-centred rows with ``eps`` added to the product of norms,
    so a constant row gives 0 instead of NaN (torch's norm has a zero gradient at 0).
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def check_positive(method: str, **values: float) -> None:
    """Raise :class:`BadInput` naming the first hyper-parameter that is not > 0."""
    for key, value in values.items():
        if not value > 0:
            raise BadInput(f"{method}: {key} must be > 0, got {value!r}")


def prepare(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """fp32 student logits (grad kept) and fp32 detached teacher logits."""
    return student_logits.float(), teacher_logits.detach().float()
