"""Reverse KL: KD with the divergence's direction swapped, KL(student || teacher).

Forward KL (``kd``) is mean-seeking: the student must cover every token the teacher gives mass.
Reverse KL is mode-seeking: the student is penalised for mass where the teacher has little, so a
small student concentrates on the teacher's main modes; at the token level it is the β = 1 end
of GKD's generalised JSD (Agarwal et al., ICLR 2024, arXiv 2306.13649; ``jsd``) and the
divergence MiniLLM (Gu et al., ICLR 2024) minimises over sequences. The weights, temperature and
T² scaling are ``kd``'s, so the two differ only in the direction of the KL.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..teacher_view import TeacherView
from ._common import check_positive, cross_entropy, kl_per_sample, prepare
from ._registry import OnTokens, register_method

SAMPLED_REFUSAL = (
    "reverse KL weighs the teacher's log-probability of every class by the student's probability, and draws give "
    "no log-probability of the classes they missed (counts / N is 0 there); use kd, or dump with --full or --topk"
)


@register_method(
    "rkl",
    sampled=SAMPLED_REFUSAL,
    tokens=OnTokens(True, "reverse KL to the teacher's next-token distribution at each position (GKD's beta = 1 end)"),
)
def rkl(
    student_logits: Tensor,
    teacher: TeacherView,
    target: Tensor,
    *,
    epoch: int,
    ce_weight: float = 0.1,
    rkl_weight: float = 0.9,
    temperature: float = 4.0,
) -> dict[str, Tensor]:
    """Reverse KL: CE plus the T²-scaled KL(student || teacher) of temperature-softened distributions.

    ``rkl = T² · mean_b Σ_c p^s_c (log p^s_c − log p^t_c)`` with ``p = softmax(z / T)``: ``kd``'s
    term with the two distributions swapped (so its value at T = 1 is TRL's
    ``generalized_jsd_loss`` at β = 1; TRL does not scale by T²). On a top-k view p^t is the
    rebuild (module ``teacher_view``), as for every method: each class outside the stored ones
    and the true class gets the same share of the rest mass. The tail's part of the sum is then
    the KL of the two tail masses (exact at T = 1) plus ``P^s_tail · KL(student's tail shape ||
    uniform)``, where the teacher's own logits would give ``KL(student's tail shape || teacher's
    tail shape)``: the unknown shape is taken flat (docs/methods.md, "Top-k caches"). No warm-up.

    Args:
        student_logits: (B, C) student logits.
        teacher: The batch's teacher view (full or top-k rebuild logits).
        target: (B,) int64 labels.
        epoch: 1-based epoch; unused.
        ce_weight: Weight of the cross-entropy term (``kd``'s 0.1).
        rkl_weight: Weight of the reverse-KL term (``kd``'s 0.9).
        temperature: Softmax temperature T (``kd``'s 4; token-level LM distillation usually uses 1).

    Returns:
        ``{"ce": ce_weight·CE, "rkl": rkl_weight·T²·KL(p_s || p_t)}``.
    """
    check_positive("rkl", temperature=temperature)
    z_s, z_t = prepare(student_logits, teacher.logits)
    log_p_s = F.log_softmax(z_s / temperature, dim=1)
    log_p_t = F.log_softmax(z_t / temperature, dim=1)
    reverse = temperature**2 * kl_per_sample(log_p_s, log_p_t).mean()
    return {"ce": ce_weight * cross_entropy(z_s, target), "rkl": rkl_weight * reverse}
