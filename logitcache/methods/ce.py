"""Plain cross-entropy: the no-teacher baseline ("student" rows of the reference tables)."""

from __future__ import annotations

from torch import Tensor

from ..teacher_view import TeacherView
from ._common import cross_entropy
from ._registry import OnTokens, register_method


@register_method(
    "ce",
    needs_teacher=False,
    tokens=OnTokens(True, "next-token cross-entropy: the language-modelling loss itself"),
)
def ce(
    student_logits: Tensor,
    teacher: TeacherView | None,
    target: Tensor,
    *,
    epoch: int,
) -> dict[str, Tensor]:
    """Cross-entropy on the labels only; no teacher, no hyper-parameters.

    The student trained from scratch, the baseline every KD method is compared with.

    Args:
        student_logits: (B, C) student logits.
        teacher: Always None (the method is registered with ``needs_teacher=False``).
        target: (B,) int64 labels.
        epoch: 1-based epoch; unused.

    Returns:
        ``{"ce": mean cross-entropy}``.
    """
    return {"ce": cross_entropy(student_logits, target)}
