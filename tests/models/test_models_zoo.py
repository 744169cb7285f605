"""Every registered CIFAR model through the same checks, plus the tv: models and the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from logitcache.errors import BadInput, UnknownName
from logitcache.models import (
    count_parameters,
    create_model,
    list_models,
    load_checkpoint,
    register_model,
    weights_sha256,
)

# sum(p.numel() for p in model.parameters()) with num_classes=100. These match the
# mdistiller/RepDistiller definitions; the WRNs include their 1x1 projection shortcuts
# (convShortcut), which the public WRN teacher checkpoints hold.
EXPECTED_PARAMETERS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "ResNet18": 11_220_132,
    "ResNet50": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
}

MODELS = list_models()


def _randomize_buffers(model: nn.Module) -> None:
    # Fresh BatchNorm statistics are identical in every model; make them carry information.
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)


def test_every_model_is_listed_with_its_parameter_count() -> None:
    assert list(EXPECTED_PARAMETERS) == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count(name: str) -> None:
    assert count_parameters(create_model(name, num_classes=100)) == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_finite_logits_at_32_and_8_pixels(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        for size in (32, 8):
            logits = model(torch.randn(2, 3, size, size))
            assert isinstance(logits, torch.Tensor)
            assert logits.shape == (2, num_classes)
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip_and_weights_hash(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model(name, num_classes=10).eval()
    _randomize_buffers(source)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)

    torch.manual_seed(1)
    target = create_model(name, num_classes=10).eval()
    assert weights_sha256(target) != weights_sha256(source)
    load_checkpoint(target, path)
    assert weights_sha256(target) == weights_sha256(source)

    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))

    with torch.no_grad():
        next(target.parameters()).view(-1)[0] += 1.0
    assert weights_sha256(target) != weights_sha256(source)


def test_forward_at_64_and_224_pixels() -> None:
    for name in ("resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV2"):
        model = create_model(name, num_classes=7).eval()
        with torch.no_grad():
            for size in (64, 224):
                assert model(torch.randn(1, 3, size, size)).shape == (1, 7)


def test_training_mode_forward_and_backward() -> None:
    model = create_model("resnet8", num_classes=10)
    assert model.training
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_list_models_pattern_keeps_registration_order() -> None:
    assert list_models("resnet*") == [
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet8x4",
        "resnet32x4",
    ]
    assert list_models("wrn_40_?") == ["wrn_40_1", "wrn_40_2"]
    assert list_models("nothing*") == []
    assert not any(name.startswith("tv:") for name in list_models())


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownName) as err:
        create_model("resnet111")
    message = str(err.value)
    assert "resnet110" in message
    assert "`logitcache models`" in message


def test_register_model_refuses_a_taken_name() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet8")(lambda num_classes: nn.Linear(1, num_classes))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_num_classes_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(BadInput, match="num_classes"):
        create_model("resnet8", num_classes=bad)  # type: ignore[arg-type]


def test_torchvision_model_forward() -> None:
    model = create_model("tv:resnet18", num_classes=10).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_torchvision_googlenet_returns_logits_only_in_training_mode() -> None:
    model = create_model("tv:googlenet", num_classes=5)
    assert model.training
    logits = model(torch.randn(2, 3, 64, 64))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, 5)


def test_unknown_torchvision_model_suggests_close_names() -> None:
    with pytest.raises(UnknownName) as err:
        create_model("tv:resnet181")
    message = str(err.value)
    assert "tv:resnet18" in message
    assert "\n" not in message


def test_torchvision_detection_models_are_not_classifiers() -> None:
    with pytest.raises(UnknownName):
        create_model("tv:fasterrcnn_resnet50_fpn")
