"""Full encoding: all C logits per (view, sample) in fp32, fp16 or bf16.

fp32 stores the logits as they are (lossless). fp16 and bf16 store ``top_logit`` (the row's
largest logit, fp32) and ``logit_gaps`` (``top_logit - z`` for every class, >= 0, in the
dtype): a half-precision step is relative to the value stored, so storing logits themselves
would make it relative to wherever the row sits: a teacher whose logits share an offset of
60,000 (softmax unchanged) would have every logit rounded to a step of 32. Gaps keep the top
logit exact to fp32 and every other one within half a step of its own distance from the top
(2**-11 of the gap for fp16, 2**-8 for bf16), whatever the offset.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ...teacher_view import TeacherView
from ._base import STORED_DTYPE, Encoding, Field, from_stored, register_encoding, require_finite, to_stored


@register_encoding("full")
class FullEncoding(Encoding):
    @property
    def relative(self) -> bool:
        return self.info.dtype != "fp32"

    def fields(self) -> list[Field]:
        if not self.relative:
            return [Field("logits", (self.num_classes,), "float32")]
        return [Field("top_logit", (), "float32"), Field("logit_gaps", (self.num_classes,), STORED_DTYPE[self.info.dtype])]

    def encode(self, logits: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
        logits = logits.float()
        require_finite("full", logits)  # every logit is stored
        if not self.relative:
            return {"logits": logits.numpy()}
        top = logits.max(dim=1, keepdim=True).values
        return {"top_logit": top[:, 0].numpy(), "logit_gaps": to_stored(top - logits, self.info.dtype)}

    def decode(self, arrays: Mapping[str, np.ndarray | Tensor], labels: np.ndarray | Tensor) -> TeacherView:
        if not self.relative:
            logits = torch.as_tensor(arrays["logits"]).float()
        else:
            top = torch.as_tensor(arrays["top_logit"]).float()
            logits = top[:, None] - from_stored(arrays["logit_gaps"], self.info.dtype)
        return TeacherView.from_logits(logits, torch.as_tensor(labels))
