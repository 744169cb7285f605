"""How a model's forward pass runs: numeric precision (autocast) and memory format.

One place for dump, verify, train (student and ``--teacher-online`` teacher) and eval, so that
every path runs a model the same way: ``fp32`` is the plain forward; ``bf16`` and ``fp16`` run
it under ``torch.autocast`` of that dtype, and callers take ``.float()`` of what comes out, so
that losses, encodings and comparisons are computed in fp32 whatever the forward's precision.
``fp16`` training scales the loss with ``torch.amp.GradScaler`` (fp16's 5 exponent bits
underflow small gradients); bf16 has fp32's range and needs no scaler. ``channels_last`` puts
the model's weights and 4-D inputs in NHWC order, which convolution kernels (cuDNN with tensor
cores, oneDNN) often run faster; it changes no value beyond float rounding.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import BadInput
from .store.format import PRECISIONS

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP16_MAX = 65504.0  # the largest finite fp16 value: a logit or activation beyond it overflows to inf


@dataclass(frozen=True)
class Compute:
    """A forward pass's precision and memory format on one device type (``Compute.on`` checks them)."""

    precision: str = "fp32"
    channels_last: bool = False
    device_type: str = "cpu"

    @classmethod
    def on(cls, device: torch.device | str, precision: str = "fp32", channels_last: bool = False) -> Compute:
        """The compute for ``device``, refusing a precision it cannot run in one line."""
        device = torch.device(device)
        if precision not in PRECISIONS:
            raise BadInput(f"unknown --precision {precision!r}: use {', '.join(PRECISIONS)}")
        compute = cls(precision=precision, channels_last=channels_last, device_type=device.type)
        if precision != "fp32":
            _check_autocast(compute, device)
        return compute

    @property
    def amp(self) -> bool:
        return self.precision != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a forward runs in: autocast of the precision's dtype, nothing for fp32."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=_AUTOCAST_DTYPES[self.precision])

    def model(self, module: nn.Module) -> nn.Module:
        """``module`` in the memory format its inputs get (in place, as ``Module.to``)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def inputs(self, x: Tensor) -> Tensor:
        """An image batch in the memory format; anything not 4-D (token ids, features) as it is."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        """``module(x)`` under this compute, as fp32: what a teacher's logits are taken as."""
        with self.autocast():
            return module(self.inputs(x)).float()

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for fp16 training; a pass-through (disabled) one otherwise."""
        wanted = self.precision == "fp16"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # where torch cannot scale, it warns and disables: refused below
            scaler = torch.amp.GradScaler(self.device_type, enabled=wanted)
        if wanted and not scaler.is_enabled():
            raise BadInput(f"--precision fp16 training needs a loss scaler, which torch {torch.__version__} does not "
                           f"provide on {self.device_type}: use --precision bf16 or fp32")
        return scaler

    def overflow_hint(self) -> str:
        """What to suggest when this compute's forward gave NaN/inf where fp32's would not."""
        if self.precision == "fp16":
            return (f"the forward overflows fp16 (values beyond {FP16_MAX:g}) under --precision fp16: use --precision "
                    "bf16 (fp32's range) or fp32")
        return f"the forward gives NaN/inf under --precision {self.precision} but not in fp32: use --precision fp32"

    def describe(self) -> str:
        return self.precision + (", channels-last" if self.channels_last else "")


def _check_autocast(compute: Compute, device: torch.device) -> None:
    """Refuse a precision the device cannot autocast to: torch only warns and runs fp32 instead,
    which would record a precision that never ran."""
    if device.type == "cuda" and compute.precision == "bf16" and torch.cuda.get_device_capability(device)[0] < 8:
        raise BadInput(f"--precision bf16 needs a GPU with bfloat16 support (compute capability 8.0+); "
                       f"{torch.cuda.get_device_name(device)} has none: use --precision fp16 or fp32")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with compute.autocast():
                pass
    except RuntimeError as e:
        raise BadInput(f"--precision {compute.precision} is not supported on {device} ({str(e).splitlines()[0]}): "
                       "use --precision fp32") from None
    disabled = [w for w in caught if "autocast" in str(w.message).lower()]
    if disabled:
        raise BadInput(f"--precision {compute.precision} is not supported on {device} "
                       f"({str(disabled[0].message).splitlines()[0]}): use --precision fp32")

