"""The model zoo: the CIFAR architectures of the KD literature plus any torchvision classifier.

``create_model("resnet32x4", num_classes=100, checkpoint=...)`` builds a model by name; every
``forward`` returns logits only and accepts any input size. The CIFAR models keep the
state-dict keys of mdistiller/RepDistiller, so their public teacher checkpoints load as they
are. ``tv:<name>`` builds a torchvision classification model without pretrained weights.
"""

from __future__ import annotations

# Imported for their side effect: each family file registers its models, and list_models()
# keeps this order.
# isort: off
from . import resnet, resnetv2, wrn, vgg, mobilenetv2, shufflenetv1, shufflenetv2  # noqa: F401

# isort: on
from ._registry import (
    count_parameters,
    create_model,
    list_models,
    load_checkpoint,
    register_model,
    weights_sha256,
)

__all__ = [
    "count_parameters",
    "create_model",
    "list_models",
    "load_checkpoint",
    "register_model",
    "weights_sha256",
]
