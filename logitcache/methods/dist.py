"""DIST, KD from a stronger teacher (Huang et al., NeurIPS 2022, arXiv 2205.10536).

Matches relations instead of values: one minus the Pearson correlation between teacher and
student probabilities, across classes per sample (inter-class) and across the batch per class
(intra-class). Follows hunto/image_classification_sota ``lib/models/losses/dist_kd.py`` with
the CIFAR-100 config ``dist_cifar.yaml`` (reference §8).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..teacher_view import TeacherView
from ._common import check_positive, cross_entropy, pearson, prepare, standardize
from ._registry import LS_PRESET, OnTokens, register_method

# No DIST+LS setting is published: the preset only switches the z-score on.
PRESETS: dict[str, dict[str, object]] = {LS_PRESET: {"logit_stand": True}}


SAMPLED_REFUSAL = (
    "DIST's Pearson correlations divide by the spread of the teacher's probabilities, so they are not linear in "
    "them and draws give a biased loss and gradient; use kd, or dump with --full or --topk"
)


@register_method(
    "dist",
    presets=PRESETS,
    sampled=SAMPLED_REFUSAL,
    tokens=OnTokens(True, "inter: per position over the vocabulary; intra: per token over the batch's positions, neighbours in one text included"),
)
def dist(
    student_logits: Tensor,
    teacher: TeacherView,
    target: Tensor,
    *,
    epoch: int,
    ce_weight: float = 1.0,
    kd_weight: float = 2.0,
    temperature: float = 4.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    logit_stand: bool = False,
) -> dict[str, Tensor]:
    """DIST: CE plus τ²-scaled inter- and intra-class Pearson distances of the probabilities.

    Huang et al. 2022, the inter/intra-class relation losses (reference §8): with
    ``Y = softmax(z/τ)`` (B, C),
    ``inter = 1 − mean_b ρ(Y^s[b,:], Y^t[b,:])``, ``intra = 1 − mean_c ρ(Y^s[:,c], Y^t[:,c])``,
    ρ the cosine of mean-centred vectors with 1e-8 added to the product of norms, and
    ``L = w_ce·CE + w_kd·τ²·(β·inter + γ·intra)``. CIFAR-100 config: τ = 4, β = γ = 1,
    w_ce = 1, w_kd = 2. No warm-up. The intra-class term depends on the batch composition, as
    in the paper. ``logit_stand`` (z-score before ``/ τ``) is offered for symmetry with the
    other methods; no DIST+LS result or setting is published, so its "ls" preset changes
    nothing else.

    Args:
        student_logits: (B, C) student logits.
        teacher: The batch's teacher view.
        target: (B,) int64 labels.
        epoch: 1-based epoch; unused.
        ce_weight: Weight of the cross-entropy term (1.0).
        kd_weight: Weight of the DIST term (2.0 on CIFAR-100).
        temperature: Softmax temperature τ (4.0 on CIFAR-100, 1.0 on ImageNet).
        beta: β, weight of the inter-class term (1.0).
        gamma: γ, weight of the intra-class term (1.0).
        logit_stand: Z-score both logit matrices before the temperature.

    Returns:
        ``{"ce": ..., "inter": w_kd·τ²·β·inter, "intra": w_kd·τ²·γ·intra}``.
    """
    check_positive("dist", temperature=temperature)
    z_s, z_t = prepare(student_logits, teacher.logits)
    ce = cross_entropy(z_s, target)
    if logit_stand:
        z_s, z_t = standardize(z_s), standardize(z_t)
    y_s = torch.softmax(z_s / temperature, dim=1)  # (B, C)
    y_t = torch.softmax(z_t / temperature, dim=1)  # (B, C)
    inter = 1.0 - pearson(y_s, y_t).mean()
    intra = 1.0 - pearson(y_s.T, y_t.T).mean()
    scale = kd_weight * temperature**2
    return {
        "ce": ce_weight * ce,
        "inter": scale * beta * inter,
        "intra": scale * gamma * intra,
    }
