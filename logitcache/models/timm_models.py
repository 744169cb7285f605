"""``timm:<name>``: any timm model, built without pretrained weights (they come from --checkpoint).

``<name>`` is a timm architecture, optionally with a pretrained tag (``resnet50.a1_in1k``): the
tag chooses the pretrained configuration (input size, crop share, mean/std) that
:func:`timm_input` reads, never weights. Models are built by ``timm.create_model(name,
pretrained=False, num_classes=...)`` with the configuration's download locations blanked, so
nothing can be fetched from the Hugging Face hub or a URL even by mistake. timm is imported on
first use (``pip install 'logitcache[timm]'``) to keep ``import logitcache`` light.
"""

from __future__ import annotations

import difflib
import fnmatch
from types import ModuleType

from torch import nn

from ..errors import BadInput, UnknownName
from ._registry import ModelSource, register_source
from .inputs import ModelInput

TIMM_PREFIX = "timm:"
INSTALL_HINT = "pip install 'logitcache[timm]'"
# Blanking where the pretrained configuration would download weights from: pretrained=False
# already loads none, and with these nothing could.
_NO_DOWNLOAD = {"url": "", "hf_hub_id": None, "hf_hub_filename": None, "file": None, "state_dict": None}


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise BadInput(f"timm: models need the timm package: {INSTALL_HINT}") from None
    return timm


def timm_model_names(pattern: str = "*") -> list[str]:
    """timm model names (no ``timm:`` prefix) matching an ``fnmatch`` pattern, sorted.

    A pattern with a ``.`` lists pretrained tags (``resnet18.*``); without one, architectures.
    """
    timm = _timm()
    if "." in pattern:
        return sorted(n for n in timm.list_pretrained() if fnmatch.fnmatchcase(n, pattern))
    return sorted(n for n in timm.list_models() if fnmatch.fnmatchcase(n, pattern))


def _check_name(timm: ModuleType, name: str) -> None:
    arch, dot, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}? " if close else ""
        raise UnknownName(f"unknown timm model {TIMM_PREFIX + name!r}: {hint}"
                          "`logitcache models --timm 'PATTERN'` lists them")
    if dot and name not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        close = difflib.get_close_matches(name, tags, n=3, cutoff=0.0) if tags else []
        hint = (f"its tags include {', '.join(TIMM_PREFIX + c for c in close)}" if close
                else f"it has no pretrained tags: use {TIMM_PREFIX + arch}")
        raise UnknownName(f"timm model {arch} has no pretrained tag {tag!r}: {hint} "
                          f"(`logitcache models --timm '{arch}.*'` lists them)")


def create_timm_model(name: str, num_classes: int) -> nn.Module:
    """Build timm model ``name`` (no ``timm:`` prefix) with random weights and ``num_classes`` outputs.

    Raises:
        BadInput: timm is not installed (the message names the extra to install).
        UnknownName: no such architecture or pretrained tag; the message lists close names.
    """
    timm = _timm()
    _check_name(timm, name)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, pretrained_cfg_overlay=_NO_DOWNLOAD)


def timm_data_config(name: str) -> dict:
    """``timm.data.resolve_data_config`` of timm model ``name``'s pretrained config (the tag's, or
    the architecture's default tag's), with its ``origin``: input_size, interpolation, mean, std, crop_pct."""
    timm = _timm()
    _check_name(timm, name)
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    data = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg is not None and cfg.tag else name
    return {**data, "origin": f"timm's pretrained config of {tag}"}


def timm_input(name: str) -> ModelInput:
    """The input configuration of timm model ``name`` (``timm_data_config``)."""
    data = timm_data_config(name)
    _, height, width = data["input_size"]
    if height != width:
        raise BadInput(f"timm model {name} expects {height}x{width} images; logitcache's views are square: "
                       "choose a model or tag with a square input size")
    return ModelInput(mean=data["mean"], std=data["std"], size=int(height), crop_pct=float(data["crop_pct"]),
                      interpolation=str(data["interpolation"]), origin=data["origin"])


register_source(ModelSource(TIMM_PREFIX, create_timm_model, timm_input))
