"""Full encoding: all C logits per (view, sample) in fp32, fp16 or bf16."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ...teacher_view import TeacherView
from ._base import STORED_DTYPE, Encoding, Field, from_stored, register_encoding, to_stored


@register_encoding("full")
class FullEncoding(Encoding):
    def fields(self) -> list[Field]:
        return [Field("logits", (self.num_classes,), STORED_DTYPE[self.info.dtype])]

    def encode(self, logits: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
        return {"logits": to_stored(logits, self.info.dtype)}

    def decode(self, arrays: Mapping[str, np.ndarray | Tensor], labels: np.ndarray | Tensor) -> TeacherView:
        return TeacherView.from_logits(from_stored(arrays["logits"], self.info.dtype), torch.as_tensor(labels))
