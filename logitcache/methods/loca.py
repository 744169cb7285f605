"""LoCa: logit calibration of mis-instructing teachers (Yang, Wu, Yang, ECAI 2024, 2409.04778).

No public code exists; the rule follows the reading-note transcription of Eqs. 1–6 and a
summary (reference §5). On a sample whose teacher ranks another class k above the label y,
the temperature-softened teacher distribution p becomes

    p'_i = s·p_i (i ≠ y),   p'_y = 1 − s·(1 − p_y),   s = α·σ,   σ = 1 / (1 − p_y + p_k),

which sums to one, makes y the argmax (s < σ) and keeps every ratio between non-target classes.
Registers ``loca`` (KD + LoCa) and ``dkd+loca`` (DKD whose TCKD teacher binary is calibrated).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BadInput
from ..teacher_view import TeacherView
from . import dkd as _dkd
from . import kd as _kd
from ._common import (
    check_positive,
    cross_entropy,
    prepare,
    standardize,
    temperature_kl,
    warmup_factor,
)
from ._registry import OnTokens, register_method


def calibrate_log_probs(log_probs: Tensor, target: Tensor, alpha: float) -> Tensor:
    """(B, C) log of LoCa's calibrated teacher distribution (no gradient).

    Mis-instructed rows (``p_y`` strictly below the row's maximum ``p_k``) are calibrated as in
    the module docstring; every other row, ties with the top included, is returned unchanged
    (reference §5.1's reading: the rule is defined for mis-instructed samples only).

    Computed in log space: ``log p'_i = log α − log(1 − p_y + p_k) + log p_i`` and
    ``p'_y = ((1 − α)(1 − p_y) + p_k) / (1 − p_y + p_k)``, a ratio of positive terms (no
    cancellation when p_y underflows).

    Args:
        log_probs: (B, C) teacher log-probabilities (at the KD temperature).
        target: (B,) labels.
        alpha: LoCa's α ∈ (0, 1); α → 1 is the smallest correction (y just above k).
    """
    if not 0.0 < alpha < 1.0:
        raise BadInput(f"loca_alpha must lie in (0, 1), got {alpha!r}")
    log_probs = log_probs.detach().float()
    target = target.long()[:, None]  # (B, 1)
    log_p_y = log_probs.gather(1, target)  # (B, 1)
    log_p_k = log_probs.max(dim=1, keepdim=True).values  # (B, 1)
    wrong = log_p_y < log_p_k  # (B, 1)
    p_k = log_p_k.exp()
    rest = -torch.expm1(log_p_y)  # 1 − p_y, exact also when p_y is tiny
    log_denominator = torch.log(rest + p_k)  # log(1/σ), in [0, log 2) on wrong rows
    scaled = log_probs + (math.log(alpha) - log_denominator)  # (B, C) log(s·p_i)
    log_target = torch.log((1.0 - alpha) * rest + p_k) - log_denominator  # (B, 1)
    calibrated = scaled.scatter(1, target, log_target)
    return torch.where(wrong, calibrated, log_probs)


SAMPLED_REFUSAL = (
    "LoCa rescales the teacher's distribution by its largest probability (its top-1 class), which draws do not "
    "give exactly; use kd, or dump with --full or --topk"
)


# The LoCa paper reports text generation as well; on a text, the true class is the next token.
ON_TOKENS = OnTokens(True, "the teacher mis-instructs where its top-1 token is not the next token, which LoCa calibrates per position")


@register_method("loca", presets=_kd.PRESETS, sampled=SAMPLED_REFUSAL, tokens=ON_TOKENS)
def kd_loca(
    student_logits: Tensor,
    teacher: TeacherView,
    target: Tensor,
    *,
    epoch: int,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    temperature: float = 4.0,
    loca_alpha: float = 0.9,
    logit_stand: bool = False,
) -> dict[str, Tensor]:
    """KD + LoCa: Hinton KD towards the LoCa-calibrated, temperature-softened teacher.

    Yang et al., ECAI 2024 (reference §5, Eqs. 1–6 via a reading note; no official code):
    ``kd = T²·KL(p' || softmax(z_s/T))`` with ``p'`` = LoCa(softmax(z_t/T)) (see
    ``calibrate_log_probs``). Readings that are choices, not facts from the paper:
    the calibration is applied to the temperature-softened distribution that is actually
    matched (the paper's order is unknown); samples the teacher classifies correctly are
    left unchanged; the host loss keeps mdistiller KD's weights and T (0.1 / 0.9 / 4) and the
    KD presets ("ls", "ls:<pair>"); α = 0.9 is the summaries' robust range [0.9, 1) start.
    With ``logit_stand`` the z-score comes first, then ``/ T``, then the calibration.

    Args:
        student_logits: (B, C) student logits.
        teacher: The batch's teacher view.
        target: (B,) int64 labels.
        epoch: 1-based epoch; unused.
        ce_weight: Weight of the cross-entropy term (0.1).
        kd_weight: Weight of the KD term (0.9).
        temperature: Softmax temperature T (4.0).
        loca_alpha: LoCa's α ∈ (0, 1), the scaling ``s = α·σ`` (0.9).
        logit_stand: Z-score both logit matrices before the temperature.

    Returns:
        ``{"ce": ce_weight·CE, "kd": kd_weight·T²·KL(p' || p^s)}``.
    """
    check_positive("loca", temperature=temperature)
    z_s, z_t = prepare(student_logits, teacher.logits)
    ce = cross_entropy(z_s, target)
    if logit_stand:
        z_s, z_t = standardize(z_s), standardize(z_t)
    log_p_t = calibrate_log_probs(F.log_softmax(z_t / temperature, dim=1), target, loca_alpha)
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    return {"ce": ce_weight * ce, "kd": kd_weight * temperature_kl(log_p_t, log_p_s, temperature)}


@register_method("dkd+loca", presets=_dkd.PRESETS, sampled=SAMPLED_REFUSAL, tokens=ON_TOKENS)
def dkd_loca(
    student_logits: Tensor,
    teacher: TeacherView,
    target: Tensor,
    *,
    epoch: int,
    ce_weight: float = 1.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    warmup: int = 20,
    loca_alpha: float = 0.9,
    logit_stand: bool = False,
) -> dict[str, Tensor]:
    """DKD + LoCa: DKD whose TCKD uses the LoCa-calibrated teacher binary.

    LoCa keeps the ratios between non-target classes, so the renormalised non-target
    distribution, hence NCKD, is unchanged; only TCKD's teacher binary becomes
    ``[1 − s(1 − p_y), s(1 − p_y)]`` (reference §5.2, derived from Eqs. 1–6; the paper reports
    DKD + LoCa but no code). NCKD is computed from the uncalibrated teacher. Everything else,
    defaults and presets (per-pair β, "ls", "ls:<pair>") included, is ``dkd``'s. Readings:
    as for ``loca`` (calibrate the softened distribution, correct samples unchanged, α = 0.9).

    Args:
        student_logits: (B, C) student logits.
        teacher: The batch's teacher view.
        target: (B,) int64 labels.
        epoch: 1-based epoch, for the warm-up factor.
        ce_weight: Weight of the cross-entropy term (1.0).
        alpha: Weight α of TCKD (1.0).
        beta: Weight β of NCKD (8.0).
        temperature: Softmax temperature T (4.0).
        warmup: Epochs of linear warm-up of the KD terms (20; 0 disables it).
        loca_alpha: LoCa's α ∈ (0, 1) (0.9).
        logit_stand: Z-score both logit matrices before the temperature.

    Returns:
        ``{"ce": ..., "tckd": warm·α·T²·TCKD(LoCa), "nckd": warm·β·T²·NCKD}``.
    """
    check_positive("dkd+loca", temperature=temperature)
    z_s, z_t = prepare(student_logits, teacher.logits)
    ce = cross_entropy(z_s, target)
    if logit_stand:
        z_s, z_t = standardize(z_s), standardize(z_t)
    s, t = z_s / temperature, z_t / temperature
    log_p_t = calibrate_log_probs(F.log_softmax(t, dim=1), target, loca_alpha)
    scale = warmup_factor(epoch, warmup) * temperature**2
    return {
        "ce": ce_weight * ce,
        "tckd": scale * alpha * _dkd.tckd_per_sample(s, log_p_t, target).mean(),
        "nckd": scale * beta * _dkd.nckd_per_sample(s, t, target).mean(),
    }
