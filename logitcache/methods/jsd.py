"""Generalised Jensen-Shannon divergence, GKD's token-level loss (Agarwal et al., ICLR 2024, arXiv 2306.13649).

With the mixture ``m = β·p_t + (1 − β)·p_s``,

    JSD_β = β·KL(p_t || m) + (1 − β)·KL(p_s || m),

and, as in TRL's ``GKDTrainer.generalized_jsd_loss`` (the reference this follows to the last
convention), the ends are the two KLs themselves: β = 0 is forward KL(p_t || p_s), β = 1 reverse
KL(p_s || p_t) (JSD_β itself vanishes at both ends). Both distributions are softmaxes at
temperature T, and the value is *not* multiplied by T² (TRL's choice; ``kd`` and ``rkl`` are).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BadInput
from ..teacher_view import TeacherView
from ._common import check_positive, cross_entropy, kl_per_sample, prepare
from ._registry import OnTokens, register_method
from .kd import forward_kl_on_draws, temperature_mismatch


def generalized_jsd(z_s: Tensor, z_t: Tensor, beta: float, temperature: float) -> Tensor:
    """(B,) TRL's generalised JSD per row of the logits at ``temperature``, in their dtype.

    β = 0 and β = 1 are the forward and reverse KL exactly (TRL's branches); in between, the
    mixture's log is a log-sum-exp of the two weighted logs, never the log of a sum.
    """
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    log_p_t = F.log_softmax(z_t / temperature, dim=1)
    if beta == 0:
        return kl_per_sample(log_p_t, log_p_s)
    if beta == 1:
        return kl_per_sample(log_p_s, log_p_t)
    log_m = torch.logsumexp(torch.stack([log_p_s + math.log1p(-beta), log_p_t + math.log(beta)]), dim=0)
    return beta * kl_per_sample(log_p_t, log_m) + (1 - beta) * kl_per_sample(log_p_s, log_m)


def on_sampled(hparams: Mapping[str, Any], sample_temperature: float) -> str | None:
    """Only β = 0, forward KL, is linear in the teacher's distribution: defined on draws made at T."""
    if hparams["beta"] != 0:
        return (
            f"JSD with beta={hparams['beta']:g} compares both models with their mixture, whose log is not linear in the "
            "teacher's probabilities, so draws bias loss and gradient; pass --set beta=0 (forward KL), or dump with "
            "--full or --topk"
        )
    return temperature_mismatch("JSD (beta=0)", hparams["temperature"], sample_temperature)


@register_method(
    "jsd",
    sampled=on_sampled,
    tokens=OnTokens(True, "GKD's generalised JSD between next-token distributions at each position"),
)
def jsd(
    student_logits: Tensor,
    teacher: TeacherView,
    target: Tensor,
    *,
    epoch: int,
    ce_weight: float = 0.0,
    jsd_weight: float = 1.0,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Generalised JSD (GKD): β·KL(p_t || m) + (1 − β)·KL(p_s || m), m = β·p_t + (1 − β)·p_s.

    TRL's ``generalized_jsd_loss`` with ``reduction="batchmean"`` over the rows (positions):
    ``mean_b JSD_β(softmax(z_s[b] / T), softmax(z_t[b] / T))``, no T² factor; β = 0 is forward KL
    and β = 1 reverse KL, as TRL defines its ends. GKD trains on the divergence alone, hence
    ``ce_weight = 0``. On a top-k view p_t is the rebuild (module ``teacher_view``), as for every
    method. On a sampled view only β = 0 runs: KL(counts/N || p_s), whose gradient is the
    full-logit one in expectation (``kd``'s reading).

    Args:
        student_logits: (B, C) student logits.
        teacher: The batch's teacher view (full or top-k rebuild logits; sampled at T when β = 0).
        target: (B,) int64 labels.
        epoch: 1-based epoch; unused.
        ce_weight: Weight of the cross-entropy term (0: GKD has none).
        jsd_weight: Weight of the divergence term (1).
        beta: Mixture weight of the teacher, in [0, 1] (TRL's and GKD's default 0.5).
        temperature: Softmax temperature T of both models (TRL's loss default 1).

    Returns:
        ``{"ce": ce_weight·CE, "jsd": jsd_weight·JSD_β}``.
    """
    check_positive("jsd", temperature=temperature)
    if not 0.0 <= beta <= 1.0:
        raise BadInput(f"jsd: beta must lie in [0, 1] (0: forward KL, 1: reverse KL), got {beta!r}")
    if teacher.kind == "sampled":
        z_s = student_logits.float()
        divergence = forward_kl_on_draws(z_s, teacher, temperature)
    else:
        z_s, z_t = prepare(student_logits, teacher.logits)
        divergence = generalized_jsd(z_s, z_t, beta, temperature)
    return {"ce": ce_weight * cross_entropy(z_s, target), "jsd": jsd_weight * divergence.mean()}
