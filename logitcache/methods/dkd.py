"""Decoupled KD (Zhao et al., CVPR 2022, arXiv 2203.08679) as implemented by mdistiller.

KD splits into a target-class term and a non-target term,
``KL(p^t || p^s) = TCKD + (1 − p^t_y)·NCKD`` (the DKD paper's reformulation of KD); DKD
weights them freely: ``α·TCKD + β·NCKD`` (reference §3). ``tckd_per_sample`` and
``nckd_per_sample`` are the decomposition itself, reused by ``dkd+loca``.
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
from ._registry import LS_PRESET, OnTokens, pair_preset_name, register_method

# β per CIFAR-100 pair (α = 1, T = 4, warm-up 20, CE 1 everywhere): mdistiller
# configs/cifar100/dkd/*.yaml, plus the extra pairs of RLD's configs (reference §3).
PAIR_BETA: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("resnet110", "resnet20"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("resnet32x4", "ShuffleV1"): 8.0,
    ("resnet32x4", "ShuffleV2"): 8.0,
    ("wrn_40_2", "ShuffleV1"): 8.0,
    ("vgg13", "MobileNetV2"): 6.0,
    ("ResNet50", "MobileNetV2"): 8.0,
    ("resnet32x4", "wrn_16_2"): 8.0,
    ("resnet32x4", "wrn_40_2"): 8.0,
    ("wrn_40_2", "resnet8x4"): 6.0,
    ("wrn_40_2", "MobileNetV2"): 6.0,
}

# DKD+LS per pair (τ, λ_KD, base β) from the LS authors' log file names (reference §7); the
# effective weights are α' = 1·λ_KD and β' = β·λ_KD.
LS_PAIRS: dict[tuple[str, str], tuple[float, float, float]] = {
    ("resnet32x4", "resnet8x4"): (2, 9, 8),
    ("vgg13", "vgg8"): (2, 15, 2),
    ("wrn_40_2", "wrn_40_1"): (2, 12, 2),
    ("wrn_40_2", "wrn_16_2"): (2, 12, 2),
    ("resnet56", "resnet20"): (3, 18, 2),
    ("resnet110", "resnet32"): (2, 15, 2),
    ("resnet110", "resnet20"): (2, 15, 2),
    ("resnet32x4", "ShuffleV2"): (2, 9, 8),
    ("resnet32x4", "wrn_16_2"): (2, 9, 2),
    ("resnet32x4", "wrn_40_2"): (2, 9, 8),
    ("wrn_40_2", "resnet8x4"): (2, 18, 2),
    ("wrn_40_2", "MobileNetV2"): (2, 15, 2),
    ("vgg13", "MobileNetV2"): (3, 9, 2),
    ("ResNet50", "MobileNetV2"): (2, 15, 2),
}
# Pairs with a DKD β but no published DKD+LS run: the generic "ls" setting (τ = 2, λ_KD = 9)
# composed with the pair's DKD β. Not published; present so that `--preset auto --logit-stand`
# never falls back to the plain pair preset, whose unscaled β would undo the λ_KD scaling.
LS_PAIRS_DERIVED: dict[tuple[str, str], tuple[float, float, float]] = {
    pair: (2, 9, beta) for pair, beta in PAIR_BETA.items() if pair not in LS_PAIRS
}

_LS_WEIGHT = 9.0  # λ_KD, the LS code's --kd-weight default


def _ls_setting(tau: float, lam: float, beta: float) -> dict[str, object]:
    return {
        "logit_stand": True,
        "temperature": float(tau),
        "alpha": float(lam),
        "beta": float(beta * lam),
    }


# Shared with dkd+loca (loca.py), which runs DKD with its published settings.
PRESETS: dict[str, dict[str, object]] = {
    LS_PRESET: _ls_setting(2, _LS_WEIGHT, 8),
    **{pair_preset_name(t, s): {"beta": beta} for (t, s), beta in PAIR_BETA.items()},
    **{
        pair_preset_name(t, s, logit_stand=True): _ls_setting(*setting)
        for (t, s), setting in {**LS_PAIRS, **LS_PAIRS_DERIVED}.items()
    },
}


def tckd_per_sample(student_scaled: Tensor, teacher_scaled: Tensor, target: Tensor) -> Tensor:
    """(B,) TCKD without T²: KL between the [target, rest] binaries of teacher and student.

    ``b = [p_y, 1 − p_y]`` with ``p = softmax(scaled)``; both parts are log-sum-exps, so the
    student side never takes ``log 0`` (mdistiller takes a plain ``log`` of the sums).

    Args:
        student_scaled: (B, C) student logits already divided by T.
        teacher_scaled: (B, C) teacher logits divided by T, or any row-shifted version of them
            (e.g. teacher log-probabilities).
        target: (B,) labels.
    """
    gt = true_class_mask(target, student_scaled.shape[1])
    return kl_per_sample(binary_log_split(teacher_scaled, gt), binary_log_split(student_scaled, gt))


def nckd_per_sample(student_scaled: Tensor, teacher_scaled: Tensor, target: Tensor) -> Tensor:
    """(B,) NCKD without T²: KL between the distributions renormalised over non-target classes.

    mdistiller removes the true class with ``z/T − 1000·g``; here it is masked with a large
    finite negative (the same result, also for logit gaps beyond 1000).
    """
    gt = true_class_mask(target, student_scaled.shape[1])
    log_p_t = F.log_softmax(mask_out(teacher_scaled, gt), dim=1)
    log_p_s = F.log_softmax(mask_out(student_scaled, gt), dim=1)
    return kl_per_sample(log_p_t, log_p_s)


SAMPLED_REFUSAL = (
    "DKD splits the teacher's softmax at T into the true class and the renormalised rest, which needs the "
    "true-class probability at T exactly; a sampled cache has it only at T = 1 (its lse), and the split is not "
    "implemented for draws: use kd, or dump with --full or --topk"
)


@register_method(
    "dkd",
    presets=PRESETS,
    sampled=SAMPLED_REFUSAL,
    tokens=OnTokens(True, "the next token is the true class, so KL = TCKD + (1 - p_y)·NCKD holds at each position (the weights are CIFAR's)"),
)
def dkd(
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
    logit_stand: bool = False,
) -> dict[str, Tensor]:
    """Decoupled KD: CE plus warm-up × (α·TCKD + β·NCKD), as mdistiller's dkd_loss.

    Zhao et al., CVPR 2022, the DKD objective ``α·TCKD + β·NCKD`` (reference §3): TCKD is the T²-
    scaled KL of the binary [p_y, 1 − p_y] distributions, NCKD the T²-scaled KL of the
    distributions over the non-target classes. Both are multiplied by the linear warm-up
    ``min(epoch / warmup, 1)`` (1-based epoch: 0.05 at epoch 1, 1 from epoch 20). Defaults
    are mdistiller's ``cfg.py`` (confirmed in mdistiller issue #49); presets
    "<teacher>-<student>" set the per-pair β of mdistiller's CIFAR-100 configs. With
    ``logit_stand`` (Sun et al. CVPR 2024; reference §7) both logit matrices are z-scored
    first; the "ls" preset is τ = 2, α = 1·9, β = 8·9, and "ls:<pair>" the LS authors' per-pair
    (τ, λ_KD, β) as temperature = τ, alpha = λ_KD, beta = β·λ_KD.

    Args:
        student_logits: (B, C) student logits.
        teacher: The batch's teacher view (full or top-k rebuild logits).
        target: (B,) int64 labels.
        epoch: 1-based epoch, for the warm-up factor.
        ce_weight: Weight of the cross-entropy term (1.0).
        alpha: Weight α of TCKD (1.0).
        beta: Weight β of NCKD (8.0; 2 or 6 for some pairs, see the presets).
        temperature: Softmax temperature T (4.0).
        warmup: Epochs of linear warm-up of the KD terms (20; 0 disables it).
        logit_stand: Z-score both logit matrices before the temperature.

    Returns:
        ``{"ce": ..., "tckd": warm·α·T²·TCKD, "nckd": warm·β·T²·NCKD}``.
    """
    check_positive("dkd", temperature=temperature)
    z_s, z_t = prepare(student_logits, teacher.logits)
    ce = cross_entropy(z_s, target)
    if logit_stand:
        z_s, z_t = standardize(z_s), standardize(z_t)
    s, t = z_s / temperature, z_t / temperature
    scale = warmup_factor(epoch, warmup) * temperature**2
    return {
        "ce": ce_weight * ce,
        "tckd": scale * alpha * tckd_per_sample(s, t, target).mean(),
        "nckd": scale * beta * nckd_per_sample(s, t, target).mean(),
    }
