"""Top-k encoding: the k largest logits, their classes, and two scalars per (view, sample).

Stored per view: ``topk_values`` (descending) and ``topk_indices``, ``lse`` (logsumexp over all
C logits) and ``target_logit`` (the true class's logit, which may not be among the k). From
these the exact teacher probabilities of the stored classes and of the true class are
``exp(z - lse)``; ``TeacherView`` rebuilds the rest.

``dtype="q8"`` is a compact variant. Only logit *differences* matter to every method (softmax
and z-scores are shift-invariant), so it stores gaps from the top-1 logit instead of values:
``topk_gaps`` (k-1 uint8, ``(z_1 - z_j)`` in steps of 1/16 nat, clipped at 255/16), ``lse_gap``
(uint16, ``lse - z_1`` in steps of 2**-12 nat) and ``target_gap`` (uint16, ``z_1 - z_y`` in steps
of 2**-10 nat up to 64 nats; ``TARGET_IN_TOPK`` when the true class is among the k, whose gap is
then the stored one). Decoded logits are shifted so that ``z_1 = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ...teacher_view import TeacherView
from ._base import STORED_DTYPE, Encoding, Field, from_stored, index_dtype, register_encoding, to_stored

GAP_STEP = 1 / 16
LSE_STEP = 2.0**-12
TARGET_STEP = 2.0**-10
TARGET_IN_TOPK = 65535


def _quantize(x: Tensor, step: float, top: int) -> Tensor:
    return torch.round(x / step).clamp_(0, top)


@register_encoding("topk")
class TopKEncoding(Encoding):
    @property
    def k(self) -> int:
        return self.info.k

    def fields(self) -> list[Field]:
        idx = Field("topk_indices", (self.k,), index_dtype(self.num_classes))
        if self.info.dtype != "q8":
            return [
                Field("topk_values", (self.k,), STORED_DTYPE[self.info.dtype]),
                idx,
                Field("lse", (), "float32"),
                Field("target_logit", (), "float32"),
            ]
        gaps = [Field("topk_gaps", (self.k - 1,), "uint8")] if self.k > 1 else []
        return [idx, *gaps, Field("lse_gap", (), "uint16"), Field("target_gap", (), "uint16")]

    def encode(self, logits: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
        logits = logits.float()
        values, indices = torch.topk(logits, self.k, dim=1)  # sorted, descending
        lse = torch.logsumexp(logits, dim=1)
        target = logits.gather(1, labels.long()[:, None])[:, 0]
        out = {"topk_indices": indices.numpy().astype(index_dtype(self.num_classes))}
        if self.info.dtype != "q8":
            out["topk_values"] = to_stored(values, self.info.dtype)
            out["lse"], out["target_logit"] = lse.numpy(), target.numpy()
            return out
        top = values[:, :1]
        if self.k > 1:
            out["topk_gaps"] = _quantize(top - values[:, 1:], GAP_STEP, 255).to(torch.uint8).numpy()
        out["lse_gap"] = _quantize(lse - top[:, 0], LSE_STEP, 65535).to(torch.int32).numpy().astype(np.uint16)
        in_topk = (indices == labels.long()[:, None]).any(dim=1)
        gap = _quantize(top[:, 0] - target, TARGET_STEP, TARGET_IN_TOPK - 1)
        out["target_gap"] = torch.where(in_topk, TARGET_IN_TOPK, gap).to(torch.int32).numpy().astype(np.uint16)
        return out

    def decode(self, arrays: Mapping[str, np.ndarray | Tensor], labels: np.ndarray | Tensor) -> TeacherView:
        labels = torch.as_tensor(labels).long()
        indices = torch.as_tensor(np.asarray(arrays["topk_indices"]).astype(np.int64))
        if self.info.dtype != "q8":
            return TeacherView.from_topk(
                from_stored(arrays["topk_values"], self.info.dtype),
                indices,
                torch.as_tensor(arrays["lse"]).float(),
                torch.as_tensor(arrays["target_logit"]).float(),
                labels,
                self.num_classes,
            )
        batch = indices.shape[0]
        values = torch.zeros(batch, self.k)
        if self.k > 1:
            values[:, 1:] = -torch.as_tensor(np.asarray(arrays["topk_gaps"]).astype(np.float32)) * GAP_STEP
        lse = torch.as_tensor(np.asarray(arrays["lse_gap"]).astype(np.float32)) * LSE_STEP
        code = torch.as_tensor(np.asarray(arrays["target_gap"]).astype(np.int64))
        match = indices == labels[:, None]
        stored_target = (values * match).sum(dim=1)
        target = torch.where(code == TARGET_IN_TOPK, stored_target, -code.float() * TARGET_STEP)
        return TeacherView.from_topk(values, indices, lse, target, labels, self.num_classes)
