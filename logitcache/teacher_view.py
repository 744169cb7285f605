"""``TeacherView``: the only door between a teacher (cached or live) and a KD method.

A method never runs a teacher and never reads a store; it receives a ``TeacherView`` for the
batch it is training on. A view holds either the teacher's full logits, or a top-k encoding:
the k largest logits with their class indices, the log-normaliser ``lse = logsumexp(z)`` over
all C classes and the true-class logit ``z_y``.

Top-k rebuild (the one place this is defined): with ``S = topk ∪ {y}`` the classes whose logits
are known, the exact teacher probabilities at temperature 1 are ``p_c = exp(z_c - lse)`` for
``c ∈ S``. The remaining mass ``1 - Σ_{c∈S} p_c`` is spread evenly over the ``C - |S|`` classes
not stored, i.e. each gets the logit ``r = lse + log((1 - Σ_S p_c) / (C - |S|))``. The rebuilt
logit vector therefore gives, at T = 1, the exact probabilities of the stored classes and of
the true class, the exact top-1 class and the exact total mass of the rest. At T ≠ 1 the
stored classes keep their exact ratios to one another, while the rest is approximated (the
benchmarks in ``bench/`` measure what that costs). A method that consumes ``logits`` works from
full and top-k views alike — but for a top-k view ``logits`` is this rebuild, not the
teacher's logits: only the stored classes and the true class carry the teacher's values (up to a
shift for ``q8``, whose top-1 logit decodes as 0), and every other class holds the shared rest
logit ``r``. Read ``exact`` to tell the two apart.

Sampled views (``from_sampled``) hold N classes drawn with replacement from ``softmax(z / T)``
as distinct classes and counts, plus ``lse`` and ``z_y``. They do not pretend to have logits:
:attr:`sampled_probs` (counts / N, an unbiased estimate of the teacher's distribution at the
sampling temperature) and :attr:`target_log_prob` (exact) are what they offer; ``logits``,
``argmax`` and what derives from them raise. Methods declare whether they are defined on such a
target (``register_method(..., sampled=...)``), and training refuses the others up front.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .errors import BadInput

# log(1 - p) needs p < 1; stored fp16 logits can round the known mass up to or past 1.
_MAX_KNOWN_LOG_MASS = -1e-6


@dataclass(frozen=True, eq=False)
class TeacherView:
    """Teacher information for one batch, keyed by the same (view, sample) pairs as the student.

    Build it with :meth:`from_logits`, :meth:`from_topk` or :meth:`from_sampled`; read it through
    :attr:`logits`, :meth:`log_probs`, :meth:`probs`, :attr:`argmax` and :attr:`target_log_prob`,
    or, for a sampled view, :attr:`sampled_probs` and :attr:`target_log_prob`.
    """

    target: Tensor  # (B,) int64 labels
    num_classes: int
    full_logits: Tensor | None = None  # (B, C)
    topk_values: Tensor | None = None  # (B, k) descending
    topk_indices: Tensor | None = None  # (B, k) int64
    lse: Tensor | None = None  # (B,) logsumexp over all C logits
    target_logit: Tensor | None = None  # (B,)
    sample_indices: Tensor | None = None  # (B, slots) int64 distinct drawn classes (0 in empty slots)
    sample_counts: Tensor | None = None  # (B, slots) int64 draws per class (0 in empty slots)
    sample_draws: int = 0  # N
    sample_temperature: float = 0.0  # T of the softmax the draws came from

    @classmethod
    def from_logits(cls, logits: Tensor, target: Tensor) -> TeacherView:
        """A view of full teacher logits (B, C); kept in fp32 whatever they were stored in."""
        return cls(target=target.long(), num_classes=logits.shape[1], full_logits=logits.float())

    @classmethod
    def from_topk(
        cls,
        values: Tensor,
        indices: Tensor,
        lse: Tensor,
        target_logit: Tensor,
        target: Tensor,
        num_classes: int,
    ) -> TeacherView:
        """A view of a top-k encoding; ``values``/``indices`` are (B, k), the rest (B,)."""
        return cls(
            target=target.long(),
            num_classes=num_classes,
            topk_values=values.float(),
            topk_indices=indices.long(),
            lse=lse.float(),
            target_logit=target_logit.float(),
        )

    @classmethod
    def from_sampled(
        cls,
        indices: Tensor,
        counts: Tensor,
        draws: int,
        temperature: float,
        lse: Tensor,
        target_logit: Tensor,
        target: Tensor,
        num_classes: int,
    ) -> TeacherView:
        """A view of ``draws`` classes sampled at ``temperature``: (B, slots) classes and counts, the rest (B,)."""
        return cls(
            target=target.long(),
            num_classes=num_classes,
            lse=lse.float(),
            target_logit=target_logit.float(),
            sample_indices=indices.long(),
            sample_counts=counts.long(),
            sample_draws=draws,
            sample_temperature=temperature,
        )

    @property
    def kind(self) -> str:
        """``full``, ``topk`` or ``sampled``: which teacher information the view holds."""
        return "full" if self.full_logits is not None else "sampled" if self.sample_counts is not None else "topk"

    @property
    def exact(self) -> bool:
        """True when every logit is known (full encoding or a live teacher)."""
        return self.full_logits is not None

    @cached_property
    def finite(self) -> Tensor:
        """(B,) whether every stored number of each row is finite (a readable store holds no NaN/inf)."""
        if self.full_logits is not None:
            return torch.isfinite(self.full_logits).all(dim=1)
        scalars = torch.isfinite(self.lse) & torch.isfinite(self.target_logit)
        return scalars if self.topk_values is None else scalars & torch.isfinite(self.topk_values).all(dim=1)

    @property
    def batch_size(self) -> int:
        return int(self.target.shape[0])

    @cached_property
    def logits(self) -> Tensor:
        """(B, C) fp32 logits: the teacher's own (``exact``), or for a top-k view the rebuild
        described above: the stored classes' and the true class's logits, every other class the
        shared rest logit. A sampled view has none (it raises)."""
        if self.full_logits is not None:
            return self.full_logits
        self._no_logits("logits")
        return _rebuild(self)

    def log_probs(self, temperature: float = 1.0) -> Tensor:
        """(B, C) log-softmax of the logits at ``temperature``."""
        return torch.log_softmax(self.logits / temperature, dim=1)

    def probs(self, temperature: float = 1.0) -> Tensor:
        """(B, C) softmax of the logits at ``temperature``."""
        return torch.softmax(self.logits / temperature, dim=1)

    @cached_property
    def argmax(self) -> Tensor:
        """(B,) the teacher's top-1 class; exact for full and top-k views (a sampled view has none)."""
        if self.full_logits is not None:
            return self.full_logits.argmax(dim=1)
        self._no_logits("argmax")
        return self.topk_indices[:, 0]

    @cached_property
    def target_log_prob(self) -> Tensor:
        """(B,) exact log-probability of the true class at temperature 1."""
        if self.full_logits is not None:
            return torch.log_softmax(self.full_logits, dim=1).gather(1, self.target[:, None])[:, 0]
        return self.target_logit - self.lse

    def with_teacher_labels(self, rows: Tensor) -> TeacherView:
        """The same view with the label of each row in ``rows`` ((B,) bool) replaced by the
        teacher's top-1 class: a sample without a label (``train --label-fraction``).

        A top-k view stores the true-class logit beside its top-k; on those rows it is replaced by
        the top-1 logit (the new label's, already stored), so the rebuild knows exactly the top-k
        and spreads the rest mass evenly, the hidden label included: nothing of it stays in the view.
        """
        target = torch.where(rows, self.argmax, self.target)
        if self.full_logits is not None:
            return dataclasses.replace(self, target=target)
        target_logit = torch.where(rows, self.topk_values[:, 0], self.target_logit)
        return dataclasses.replace(self, target=target, target_logit=target_logit)

    @cached_property
    def sampled_probs(self) -> Tensor:
        """(B, C) counts / N: an unbiased estimate of ``softmax(z / T)`` at the sampling temperature."""
        if self.sample_counts is None:
            raise BadInput(f"a {self.kind} teacher view has no sampled target: read its logits")
        dense = torch.zeros(self.batch_size, self.num_classes, dtype=torch.float32, device=self.sample_counts.device)
        return dense.scatter_add_(1, self.sample_indices, self.sample_counts.float() / self.sample_draws)

    def _no_logits(self, what: str) -> None:
        if self.sample_counts is not None:
            raise BadInput(
                f"a sampled teacher view has no {what}, only {self.sample_draws} draws at T={self.sample_temperature:g}: "
                "read sampled_probs, or dump the cache with --full or --topk"
            )

    def to(self, device: torch.device | str) -> TeacherView:
        """The same view with every tensor on ``device`` (non-blocking where possible)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return TeacherView(
            target=move(self.target),
            num_classes=self.num_classes,
            full_logits=move(self.full_logits),
            topk_values=move(self.topk_values),
            topk_indices=move(self.topk_indices),
            lse=move(self.lse),
            target_logit=move(self.target_logit),
            sample_indices=move(self.sample_indices),
            sample_counts=move(self.sample_counts),
            sample_draws=self.sample_draws,
            sample_temperature=self.sample_temperature,
        )


def _rebuild(view: TeacherView) -> Tensor:
    values, indices, lse = view.topk_values, view.topk_indices, view.lse
    batch, num_classes = values.shape[0], view.num_classes
    target = view.target[:, None]
    # The true-class logit is stored in fp32 even when the values are fp16: it wins.
    is_target = indices == target
    values = torch.where(is_target, view.target_logit[:, None], values)
    outside = ~is_target.any(dim=1, keepdim=True)  # the true class is known beside the top-k
    # The known mass from the k (+1) known logits alone: a language model's C is ~1e5, k ~ 1e1.
    extra = torch.where(outside, view.target_logit[:, None], float("-inf"))
    log_known_mass = (torch.logsumexp(torch.cat([values, extra], dim=1), dim=1) - lse).clamp(max=_MAX_KNOWN_LOG_MASS)
    n_rest = (num_classes - indices.shape[1] - outside[:, 0].long()).clamp(min=1).float()
    # log(1 - m) as log(-expm1(log m)): no cancellation when the known mass is close to 1.
    rest_logit = lse + torch.log(-torch.expm1(log_known_mass)) - torch.log(n_rest)
    logits = rest_logit[:, None].expand(batch, num_classes).contiguous()
    logits.scatter_(1, indices, values)
    return logits.scatter_(1, target, view.target_logit[:, None])
