"""Refined Logit Distillation (Sun et al., arXiv 2408.07703 / ICCV 2025) as in zju-SWJ/RLD.

Two terms (reference §4.1): SCD pulls the student's confidence in the *label* towards the
teacher's confidence in its own *top-1* class; MCD matches the distributions over the classes
the teacher ranks strictly below the label (everything at or above it is masked out of both
models). On samples the teacher gets right, RLD equals DKD with the same temperatures.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..teacher_view import TeacherView
from ._common import (
    binary_log_split,
    check_positive,
    cross_entropy,
    kl_per_sample,
    mask_out,
    prepare,
    standardize,
    true_class_mask,
    warmup_factor,
)
from ._registry import LS_PRESET, OnTokens, register_method

# RLD's --logit-stand: α, β times --kd-weight (9) and T = ALPHA_T = --base-temp (2); the
# default scd_temperature=None already ties T_a to T.
PRESETS: dict[str, dict[str, object]] = {
    LS_PRESET: {"logit_stand": True, "temperature": 2.0, "alpha": 9.0, "beta": 72.0},
}


def masked_teacher_ge(teacher_logits: Tensor, target: Tensor) -> Tensor:
    """(B, C) bool, RLD's ``M_ge``: classes whose teacher logit is ≥ the label's (y included)."""
    return teacher_logits >= teacher_logits.gather(1, target.long()[:, None])


SAMPLED_REFUSAL = (
    "RLD masks every class whose teacher logit is at least the true class's and splits at the teacher's top-1 "
    "class: both need every logit, which a sampled cache does not hold; use kd, or dump with --full or --topk"
)


@register_method(
    "rld",
    presets=PRESETS,
    sampled=SAMPLED_REFUSAL,
    tokens=OnTokens(True, "its split on the teacher's top-1 token and the next token is defined at each position"),
)
def rld(
    student_logits: Tensor,
    teacher: TeacherView,
    target: Tensor,
    *,
    epoch: int,
    ce_weight: float = 1.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    scd_temperature: float | None = None,
    warmup: int = 20,
    logit_stand: bool = False,
) -> dict[str, Tensor]:
    """Refined Logit Distillation: CE plus warm-up × (α·SCD + β·MCD), as RLD's rld_loss.

    Sun et al. 2024 (reference §4; paper Eqs. for L_SCD, L_MCD via the reading notes, code
    ``mdistiller/distillers/RLD.py``). With ``k = argmax z_t``:
    ``SCD = T_a²·KL([p^t_k, 1 − p^t_k] || [p^s_y, 1 − p^s_y])`` at ``T_a``, and
    ``MCD = T²·KL(p̃^t || p̃^s)`` with the classes ``{c : z_t[c] ≥ z_t[y]}`` masked out of both
    softmaxes at T (a sample whose label is the teacher's lowest logit gives MCD = 0).
    Both are multiplied by DKD's warm-up ``min(epoch / warmup, 1)``, as in the code (the paper
    writes no warm-up). Defaults follow the README's command (``--same-t``, α = 1, β = 8,
    T = 4): ``scd_temperature=None`` means T_a = T; the code's own default ALPHA_T is 1.0, so
    pass ``scd_temperature=1`` to reproduce a run without ``--same-t``. No per-pair values are
    published. With ``logit_stand`` both logit matrices are z-scored first (the mask, an order
    relation, is taken from the raw teacher logits, which the z-score does not reorder); the
    "ls" preset is RLD's ``--logit-stand``: α, β × 9 and T = T_a = 2.

    Args:
        student_logits: (B, C) student logits.
        teacher: The batch's teacher view; its ``argmax`` is exact for top-k views too.
        target: (B,) int64 labels.
        epoch: 1-based epoch, for the warm-up factor.
        ce_weight: Weight of the cross-entropy term (1.0).
        alpha: Weight α of SCD (1.0).
        beta: Weight β of MCD (8.0).
        temperature: Temperature T of MCD (4.0).
        scd_temperature: Temperature T_a of SCD (cfg ``RLD.ALPHA_T``); None: equal to T.
        warmup: Epochs of linear warm-up of the KD terms (20; 0 disables it).
        logit_stand: Z-score both logit matrices before the temperatures.

    Returns:
        ``{"ce": ..., "scd": warm·α·SCD, "mcd": warm·β·MCD}``.
    """
    t_a = temperature if scd_temperature is None else scd_temperature
    check_positive("rld", temperature=temperature, scd_temperature=t_a)
    z_s, z_t = prepare(student_logits, teacher.logits)
    target = target.long()
    ce = cross_entropy(z_s, target)
    mask = masked_teacher_ge(z_t, target)  # (B, C), from the unstandardised teacher
    if logit_stand:
        z_s, z_t = standardize(z_s), standardize(z_t)
    num_classes = z_s.shape[1]

    top1 = true_class_mask(teacher.argmax.to(z_t.device), num_classes)
    label = true_class_mask(target, num_classes)
    scd = (
        t_a**2
        * kl_per_sample(
            binary_log_split(z_t / t_a, top1), binary_log_split(z_s / t_a, label)
        ).mean()
    )

    log_p_t = F.log_softmax(mask_out(z_t / temperature, mask), dim=1)
    log_p_s = F.log_softmax(mask_out(z_s / temperature, mask), dim=1)
    mcd = temperature**2 * kl_per_sample(log_p_t, log_p_s).mean()

    warm = warmup_factor(epoch, warmup)
    return {"ce": ce_weight * ce, "scd": warm * alpha * scd, "mcd": warm * beta * mcd}
