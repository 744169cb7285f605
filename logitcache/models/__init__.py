"""The model zoo: the CIFAR architectures of the KD literature plus any torchvision or timm classifier.

``create_model("resnet32x4", num_classes=100, checkpoint=...)`` builds a model by name; every
``forward`` returns logits only and accepts any input size. The CIFAR models keep the
state-dict keys of mdistiller/RepDistiller, so their public teacher checkpoints load as they
are. ``tv:<name>`` builds a torchvision classification model and ``timm:<name>`` a timm one,
both without pretrained weights (their weights come from a checkpoint file); ``hf:<folder>`` a
causal language model from a local Hugging Face folder (``hf.py``).
"""

from __future__ import annotations

# Imported for their side effect: each family file registers its models, and list_models()
# keeps this order.
# isort: off
from . import resnet, resnetv2, wrn, vgg, mobilenetv2, shufflenetv1, shufflenetv2  # noqa: F401
from . import torchvision_models, timm_models, hf  # noqa: F401  (the tv:, timm: and hf: model sources)

# isort: on
from ._registry import (
    ModelSource,
    count_parameters,
    create_model,
    fit_to_model,
    list_models,
    load_checkpoint,
    model_input,
    register_model,
    register_source,
    weights_sha256,
)
from .inputs import ModelInput

__all__ = [
    "ModelInput",
    "ModelSource",
    "count_parameters",
    "create_model",
    "fit_to_model",
    "list_models",
    "load_checkpoint",
    "model_input",
    "register_model",
    "register_source",
    "weights_sha256",
]
