"""``tv:<name>``: any torchvision classification model, built without pretrained weights.

Names are those of ``torchvision.models.list_models(module=torchvision.models)``; the models
are built by ``torchvision.models.get_model(name, weights=None, num_classes=...)``, so nothing
is ever downloaded. torchvision is imported on first use to keep ``import logitcache`` light.
"""

from __future__ import annotations

import difflib

from torch import nn

from ..errors import UnknownName
from ._registry import ModelSource, register_source

TV_PREFIX = "tv:"

# These two return (logits, aux_logits) in training mode unless their auxiliary heads are
# dropped; init_weights=True picks the current initialisation and silences a FutureWarning.
_LOGITS_ONLY_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def torchvision_model_names() -> list[str]:
    """Torchvision classification model names, without the ``tv:`` prefix.

    Returns:
        The sorted names ``tv:<name>`` accepts.
    """
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def create_torchvision_model(name: str, num_classes: int) -> nn.Module:
    """Build torchvision classification model ``name`` with random weights.

    Args:
        name: A torchvision classification model name (no ``tv:`` prefix), e.g. ``resnet18``.
        num_classes: Size of the classifier output.

    Returns:
        The model; its ``forward`` returns logits only.

    Raises:
        UnknownName: ``name`` is not a torchvision classification model; the message lists
            close matches.
    """
    import torchvision

    names = torchvision_model_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(TV_PREFIX + c for c in close)}? " if close else ""
        raise UnknownName(
            f"unknown torchvision model {TV_PREFIX + name!r}: {hint}"
            "`python -c 'import torchvision; print(torchvision.models.list_models("
            "module=torchvision.models))'` lists them all"
        )
    extra = _LOGITS_ONLY_KWARGS.get(name, {})
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)


register_source(ModelSource(TV_PREFIX, create_torchvision_model))
