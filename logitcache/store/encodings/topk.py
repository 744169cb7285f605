"""Top-k encoding: the k largest logits, their classes, and two scalars per (view, sample).

Stored per view: ``topk_values`` (descending) and their classes, ``lse`` (logsumexp over all
C logits) and ``target_logit`` (the true class's logit, which may not be among the k). From
these the exact teacher probabilities of the stored classes and of the true class are
``exp(z - lse)``; ``TeacherView`` rebuilds the rest. The classes are ``topk_indices_packed``
(k indices of ceil(log2 C) bits per row, see :func:`~._base.pack_indices`), or ``topk_indices``
in whole integers in a store of format 2 (``indices="int"``).

fp32 stores the values as they are (``topk_values``, lossless). fp16 and bf16 store the top-1
logit ``top_logit`` in fp32 and ``topk_gaps`` (k-1 values ``z_1 - z_j`` >= 0 in the dtype,
absent when k = 1) instead: a half-precision step is relative to what is stored, and storing the
values would make it relative to the row's offset (a teacher whose logits share a bias of
60,000 would have them rounded to steps of 32), storing gaps makes it relative to each value's
distance from the top. ``lse`` and ``target_logit`` are fp32 for all three.

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
from ._base import STORED_DTYPE, Encoding, Field, from_stored, register_encoding, require_finite, to_stored

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
        idx = self.index_field("topk_indices", self.k)
        dtype = self.info.dtype
        gaps = [Field("topk_gaps", (self.k - 1,), "uint8" if dtype == "q8" else STORED_DTYPE[dtype])] if self.k > 1 else []
        scalars = [Field("lse", (), "float32"), Field("target_logit", (), "float32")]
        if dtype == "fp32":
            return [Field("topk_values", (self.k,), "float32"), idx, *scalars]
        if dtype != "q8":
            return [idx, Field("top_logit", (), "float32"), *gaps, *scalars]
        return [idx, *gaps, Field("lse_gap", (), "uint16"), Field("target_gap", (), "uint16")]

    def encode_pairs(self, logits: Tensor, labels: Tensor, seeds: np.ndarray) -> dict[str, np.ndarray]:
        return self.encode(logits, labels)  # the selection runs on the logits' device

    def encode(self, logits: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
        logits = logits.float()
        dtype = self.info.dtype
        values, indices = torch.topk(logits, self.k, dim=1)  # sorted, descending
        lse = torch.logsumexp(logits, dim=1)
        target = logits.gather(1, labels.long().to(logits.device)[:, None])[:, 0]
        # Only these leave the teacher's device: (rows, k + 2), not (rows, C) (a language model's C is ~1e5).
        values, indices, lse, target = (t.cpu() for t in (values, indices, lse, target))
        require_finite("topk", values, lse, target)  # q8's gaps derive from these three
        top = values[:, 0]
        gaps = top[:, None] - values[:, 1:]
        out = self.store_indices("topk_indices", indices)
        if dtype == "fp32":
            out["topk_values"] = values.numpy()
        elif dtype != "q8":
            out["top_logit"] = top.numpy()
        if dtype != "q8":
            if dtype != "fp32" and self.k > 1:
                out["topk_gaps"] = to_stored(gaps, dtype)
            out["lse"], out["target_logit"] = lse.numpy(), target.numpy()
            return out
        if self.k > 1:
            out["topk_gaps"] = _quantize(gaps, GAP_STEP, 255).to(torch.uint8).numpy()
        out["lse_gap"] = _quantize(lse - top, LSE_STEP, 65535).to(torch.int32).numpy().astype(np.uint16)
        in_topk = (indices == labels.long()[:, None]).any(dim=1)
        gap = _quantize(top - target, TARGET_STEP, TARGET_IN_TOPK - 1)
        out["target_gap"] = torch.where(in_topk, TARGET_IN_TOPK, gap).to(torch.int32).numpy().astype(np.uint16)
        return out

    def class_indices(self, arrays: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
        return "topk_indices", self.load_indices(arrays, "topk_indices", self.k)

    def decode(self, arrays: Mapping[str, np.ndarray | Tensor], labels: np.ndarray | Tensor) -> TeacherView:
        labels = torch.as_tensor(labels).long()
        dtype = self.info.dtype
        indices = torch.from_numpy(self.load_indices(arrays, "topk_indices", self.k))
        if dtype == "fp32":
            values = torch.as_tensor(arrays["topk_values"]).float()
        else:  # the top-1 logit minus the stored gaps; q8's top-1 is 0
            top = torch.zeros(len(indices)) if dtype == "q8" else torch.as_tensor(arrays["top_logit"]).float()
            values = top[:, None].repeat(1, self.k)
            if self.k > 1:
                gaps = arrays["topk_gaps"]
                values[:, 1:] -= (torch.as_tensor(np.asarray(gaps).astype(np.float32)) * GAP_STEP if dtype == "q8"
                                  else from_stored(gaps, dtype))
        if dtype != "q8":
            lse, target = torch.as_tensor(arrays["lse"]).float(), torch.as_tensor(arrays["target_logit"]).float()
            return TeacherView.from_topk(values, indices, lse, target, labels, self.num_classes)
        lse = torch.as_tensor(np.asarray(arrays["lse_gap"]).astype(np.float32)) * LSE_STEP
        code = torch.as_tensor(np.asarray(arrays["target_gap"]).astype(np.int64))
        match = indices == labels[:, None]
        stored_target = (values * match).sum(dim=1)
        target = torch.where(code == TARGET_IN_TOPK, stored_target, -code.float() * TARGET_STEP)
        return TeacherView.from_topk(values, indices, lse, target, labels, self.num_classes)
