"""Hinton KD (arXiv 1503.02531) with mdistiller's conventions and optional logit standardisation.

Loss (reference §2): ``w_ce·CE(z_s, y) + w_kd·T²·KL(softmax(z_t/T) || softmax(z_s/T))``,
batchmean; mdistiller ``KD.py`` / CRD defaults w_ce = 0.1, w_kd = 0.9, T = 4. With
``logit_stand`` both logit matrices are z-scored first (Sun et al., CVPR 2024, reference §7).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from collections.abc import Mapping
from typing import Any

from ..teacher_view import TeacherView
from ._common import check_positive, cross_entropy, kl_from_probs, prepare, standardize, temperature_kl
from ._registry import LS_PRESET, OnTokens, pair_preset_name, register_method

# KD+LS per-pair settings (τ, λ_KD) from logit-standardization-KD's log file names (reference §7).
LS_PAIRS: dict[tuple[str, str], tuple[float, float]] = {
    ("resnet32x4", "resnet8x4"): (2, 9),
    ("vgg13", "vgg8"): (3, 9),
    ("wrn_40_2", "wrn_40_1"): (2, 9),
    ("wrn_40_2", "wrn_16_2"): (2, 9),
    ("resnet56", "resnet20"): (2, 9),
    ("resnet110", "resnet32"): (2, 9),
    ("resnet110", "resnet20"): (4, 12),
    ("resnet32x4", "ShuffleV2"): (2, 9),
    ("resnet32x4", "wrn_16_2"): (3, 9),
    ("resnet32x4", "wrn_40_2"): (3, 9),
    ("wrn_40_2", "resnet8x4"): (2, 9),
    ("wrn_40_2", "MobileNetV2"): (3, 9),
    ("vgg13", "MobileNetV2"): (3, 9),
    ("ResNet50", "MobileNetV2"): (3, 1),
}

# "ls": the LS paper's KD defaults τ = 2, λ_KD = 9, λ_CE = 0.1 (Table 4 caption, code flags).
PRESETS: dict[str, dict[str, object]] = {
    LS_PRESET: {"logit_stand": True, "temperature": 2.0, "kd_weight": 9.0, "ce_weight": 0.1},
    **{
        pair_preset_name(t, s, logit_stand=True): {
            "logit_stand": True,
            "ce_weight": 0.1,
            "temperature": float(tau),
            "kd_weight": float(lam),
        }
        for (t, s), (tau, lam) in LS_PAIRS.items()
    },
}


def on_sampled(hparams: Mapping[str, Any], sample_temperature: float) -> str | None:
    """KD's target is linear in the teacher's softmax at T: defined on draws made at that T.

    Draws at another temperature could be re-weighted to T only with every logit (the
    importance weights need the normaliser at T), and logit standardisation z-scores every
    logit: both are refused.
    """
    if hparams["logit_stand"]:
        return "logit standardisation z-scores all teacher logits, and the cache holds draws: drop --logit-stand"
    return temperature_mismatch("KD", hparams["temperature"], sample_temperature)


def temperature_mismatch(what: str, t: float, sample_temperature: float) -> str | None:
    """The refusal of a loss linear in the teacher's softmax at ``t`` on draws made at another T."""
    if t == sample_temperature:
        return None
    return (
        f"{what} at T={t:g} needs the teacher's softmax at T={t:g} but the draws were made at "
        f"T={sample_temperature:g} (re-weighting them needs every logit): pass --set temperature={sample_temperature:g} "
        f"or dump with --sample-temperature {t:g}"
    )


def forward_kl_on_draws(z_s: Tensor, teacher: TeacherView, temperature: float) -> Tensor:
    """(B,) KL(counts/N || softmax(z_s / T)): forward KL to a sampled target drawn at T."""
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    return kl_from_probs(teacher.sampled_probs.to(z_s.device), log_p_s)


@register_method(
    "kd",
    presets=PRESETS,
    sampled=on_sampled,
    tokens=OnTokens(True, "forward KL to the teacher's next-token distribution at each position (word-level KD, Kim & Rush 2016)"),
)
def kd(
    student_logits: Tensor,
    teacher: TeacherView,
    target: Tensor,
    *,
    epoch: int,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    temperature: float = 4.0,
    logit_stand: bool = False,
) -> dict[str, Tensor]:
    """Hinton KD: CE plus the T²-scaled KL between temperature-softened distributions.

    Hinton et al. 2015, as implemented by mdistiller ``kd_loss`` (reference §2):
    ``kd = T² · mean_b Σ_c p^t_c (log p^t_c − log p^s_c)`` with ``p = softmax(z / T)``.
    No warm-up. With ``logit_stand`` (Sun et al. CVPR 2024, Algorithm 1's z-score; reference §7)
    teacher and student logits are each z-scored per row before ``/ T``; CE keeps the raw
    logits. The "ls" preset sets the paper's T = 2, kd_weight = 9, ce_weight = 0.1, and
    "ls:<teacher>-<student>" the per-pair (τ, λ_KD) of the LS authors' logs.

    Args:
        student_logits: (B, C) student logits.
        teacher: The batch's teacher view (full or top-k rebuild logits, or a sampled target
            drawn at T = ``temperature``).
        target: (B,) int64 labels.
        epoch: 1-based epoch; unused (KD has no warm-up).
        ce_weight: Weight of the cross-entropy term (mdistiller/CRD: 0.1).
        kd_weight: Weight of the KD term (mdistiller/CRD: 0.9; LS: λ_KD = 9).
        temperature: Softmax temperature T (4; LS base temperature τ = 2).
        logit_stand: Z-score both logit matrices before the temperature.

    Returns:
        ``{"ce": ce_weight·CE, "kd": kd_weight·T²·KL}``.
    """
    check_positive("kd", temperature=temperature)
    if teacher.kind == "sampled":
        # counts / N is unbiased for p_t at T and the loss is linear in it: the expected gradient
        # is the full-logit one. The value is KL(counts/N || p_s) · T², not KL(p_t || p_s) · T²: the
        # draws' entropy is a student-independent offset (lower in expectation than the teacher's).
        z_s = student_logits.float()
        kd_term = temperature**2 * forward_kl_on_draws(z_s, teacher, temperature).mean()
        return {"ce": ce_weight * cross_entropy(z_s, target), "kd": kd_weight * kd_term}
    z_s, z_t = prepare(student_logits, teacher.logits)
    ce = cross_entropy(z_s, target)
    if logit_stand:
        z_s, z_t = standardize(z_s), standardize(z_t)
    log_p_t = F.log_softmax(z_t / temperature, dim=1)
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    return {"ce": ce_weight * ce, "kd": kd_weight * temperature_kl(log_p_t, log_p_s, temperature)}
