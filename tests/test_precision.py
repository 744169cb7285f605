"""``logitcache.precision.Compute``: what it refuses, and what it does to models and inputs."""

from __future__ import annotations

import pytest
import torch

from logitcache import precision
from logitcache.errors import BadInput
from logitcache.precision import Compute


def test_an_unknown_precision_is_refused_naming_the_choices():
    with pytest.raises(BadInput, match=r"unknown --precision 'half': use fp32, bf16, fp16"):
        Compute.on("cpu", "half")


def test_a_precision_the_device_cannot_autocast_to_is_refused(monkeypatch):
    """torch only warns and runs fp32 where a device's autocast lacks a dtype (as CPUs lacked fp16
    before torch 2.x): recording a precision that never ran is refused instead. CPU autocast of
    float64 is such a case in every torch."""
    monkeypatch.setitem(precision._AUTOCAST_DTYPES, "fp16", torch.float64)
    with pytest.raises(BadInput, match=r"--precision fp16 is not supported on cpu \(.*autocast.*\): use --precision fp32"):
        Compute.on("cpu", "fp16")


def test_forward_runs_in_the_precision_and_returns_fp32():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))
    x = torch.randn(2, 3, 6, 6)
    dtypes = []
    model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with torch.no_grad():
            out = Compute.on("cpu", name).forward(model, x)
        assert dtypes[-1] == dtype and out.dtype == torch.float32


def test_channels_last_applies_to_models_and_image_batches_only():
    compute = Compute.on("cpu", channels_last=True)
    conv = compute.model(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert compute.inputs(torch.randn(2, 3, 5, 5)).is_contiguous(memory_format=torch.channels_last)
    tokens = torch.arange(12).reshape(3, 4)  # a text batch: no memory format to change
    assert compute.inputs(tokens) is tokens
