"""The model registry, the factory, checkpoint loading and weight hashing.

CIFAR architectures register themselves here by name (see the family files); ``tv:<name>``
builds any torchvision classification model instead. Checkpoints are read with
``weights_only=True`` so that loading a teacher can never run code from the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .._registry import Registry
from ..errors import BadInput, CheckpointError
from .torchvision_models import TV_PREFIX, create_torchvision_model

ModelFn = Callable[[int], nn.Module]

MODELS: Registry[ModelFn] = Registry("model", "logitcache models")

# Containers that training scripts wrap a state dict in (mdistiller/RepDistiller use "model").
_NESTED_KEYS = ("model", "state_dict", "net")
# DataParallel and DistributedDataParallel save every key under this prefix.
_WRAPPER_PREFIX = "module."
_RESAVE_HINT = "re-save it with torch.save(model.state_dict(), path)"


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Register a model builder under ``name``.

    Args:
        name: The name ``create_model`` will accept; registering it twice raises ``ValueError``.

    Returns:
        A decorator for a function ``fn(num_classes: int) -> nn.Module``; it returns the
        function unchanged.
    """
    return MODELS.decorator(name)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered CIFAR models, in registration order.

    Args:
        pattern: An ``fnmatch`` pattern (case-sensitive), e.g. ``"resnet*"``.

    Returns:
        The matching names. ``tv:`` models are not listed: any torchvision classification
        model name works after the ``tv:`` prefix.
    """
    return MODELS.names(pattern)


def create_model(
    name: str,
    num_classes: int = 100,
    checkpoint: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build a model by name, optionally loading its weights.

    Args:
        name: A registered CIFAR model (see ``list_models``) or ``tv:<torchvision name>``.
        num_classes: Size of the classifier output.
        checkpoint: A state-dict file to load with ``load_checkpoint``.

    Returns:
        The model, in training mode (``nn.Module``'s default); its ``forward`` returns logits.

    Raises:
        UnknownName: ``name`` is neither registered nor a torchvision classification model.
        BadInput: ``num_classes`` is not a positive integer.
        CheckpointError: the checkpoint cannot be loaded into this model.
    """
    # bool is an int subclass, and True would silently build a 1-class model.
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BadInput(f"num_classes must be a positive integer, got {num_classes!r}")
    if name.startswith(TV_PREFIX):
        model = create_torchvision_model(name[len(TV_PREFIX) :], num_classes)
    else:
        model = MODELS.get(name)(num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of learnable values (weights, biases, norm affines); buffers are not counted.

    Args:
        model: Any module.

    Returns:
        ``sum(p.numel() for p in model.parameters())``.
    """
    return sum(p.numel() for p in model.parameters())


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict from ``path`` into ``model`` strictly, in place.

    The file may hold the state dict itself or a dict with it under ``"model"``,
    ``"state_dict"`` or ``"net"``; a ``"module."`` prefix left by (Distributed)DataParallel is
    removed. Only tensors and plain containers are unpickled (``weights_only=True``).

    Args:
        model: The model to fill; it must have exactly the checkpoint's keys and shapes.
        path: The checkpoint file.

    Raises:
        CheckpointError: the file is missing, unreadable, holds arbitrary Python objects or
            no state dict, or its keys or shapes (e.g. its number of classes) differ from
            the model's. The message is one line and names the fix.
    """
    where = os.fspath(path)
    if os.path.isdir(where):
        raise CheckpointError(f"checkpoint {where} is a directory: pass the file inside it")
    if not os.path.isfile(where):
        raise CheckpointError(f"checkpoint {where} not found: check the path")
    payload = _read(where)
    state = _strip_wrapper_prefix(_find_state_dict(payload, where))
    _check_fits(model, state, where)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # what _check_fits cannot foresee, e.g. a module's own checks
        reason = " ".join(str(err).split())
        raise CheckpointError(
            f"checkpoint {where} does not fit {type(model).__name__} ({reason}): "
            "pass the model name the checkpoint was trained with"
        ) from None


def weights_sha256(model: nn.Module) -> str:
    """A hash of the model's weights that ignores how or where they were stored.

    Covers every state-dict entry (parameters and buffers) in sorted key order: the key,
    dtype, shape and raw bytes of the tensor (contiguous, on CPU).

    Args:
        model: Any module.

    Returns:
        The hex SHA-256 digest.
    """
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        # A uint8 view reads the bytes of any dtype, bfloat16 included, which numpy lacks.
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        header = f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0{raw.nbytes}\n"
        digest.update(header.encode())
        digest.update(raw)
    return digest.hexdigest()


def _read(where: str) -> object:
    try:
        return torch.load(where, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        # The weights-only unpickler also fails on bytes that are no pickle at all.
        if "Weights only load failed" not in text or "Unsupported operand" in text:
            raise _unreadable(where, "not a pickle torch.load understands") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {where} holds pickled Python objects{what}, not only tensors, and "
            f"is not loaded because that could run code: {_RESAVE_HINT}"
        ) from None
    except Exception as err:  # torch.load raises EOFError, KeyError, RuntimeError... on junk
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        raise _unreadable(where, reason) from None


def _unreadable(where: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {where} is not a readable PyTorch file ({reason}): "
        "pass a file written by torch.save"
    )


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _find_state_dict(payload: object, where: str) -> Mapping[str, Tensor]:
    if _is_state_dict(payload):
        return payload  # type: ignore[return-value]
    if isinstance(payload, Mapping):
        for key in _NESTED_KEYS:
            if _is_state_dict(payload.get(key)):
                return payload[key]
        keys = ", ".join(repr(k) for k in list(payload)[:8])
        raise CheckpointError(
            f"checkpoint {where} holds no state dict (top-level keys: {keys or 'none'}; looked "
            f"for tensors at the top level and under {', '.join(_NESTED_KEYS)}): {_RESAVE_HINT}"
        )
    raise CheckpointError(
        f"checkpoint {where} holds a {type(payload).__name__}, not a state dict: {_RESAVE_HINT}"
    )


def _strip_wrapper_prefix(state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    # Strip only when every key has the prefix: a real submodule may be called "module".
    if not all(k.startswith(_WRAPPER_PREFIX) for k in state):
        return state
    cut = len(_WRAPPER_PREFIX)
    stripped: OrderedDict[str, Tensor] = OrderedDict((k[cut:], v) for k, v in state.items())
    # load_state_dict reads module versions from _metadata (BatchNorm uses it to accept
    # checkpoints older than num_batches_tracked), so it has to follow the keys.
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        moved: OrderedDict[str, object] = OrderedDict()
        for key, value in metadata.items():
            if key == "module":  # the wrapped model's root; the wrapper's own root is dropped
                moved[""] = value
            elif key.startswith(_WRAPPER_PREFIX):
                moved[key[cut:]] = value
        stripped._metadata = moved  # type: ignore[attr-defined]
    return stripped


def _classifier_weight_key(model: nn.Module) -> str | None:
    # The classifier is the last module registered with a matrix-or-larger weight in every
    # model here (fc, linear, classifier, classifier.0, heads.head, ...).
    last = None
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor) and weight.dim() >= 2:
            last = f"{name}.weight" if name else "weight"
    return last


def _check_fits(model: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    expected = model.state_dict()
    head = _classifier_weight_key(model)
    if head is not None and head in state and head in expected:
        have, want = tuple(state[head].shape), tuple(expected[head].shape)
        if have != want and have[1:] == want[1:]:
            raise CheckpointError(
                f"checkpoint {where} has {have[0]} classes but the model was built for "
                f"{want[0]}: pass the dataset the teacher was trained on, or the right checkpoint"
            )
    # BatchNorm fills a missing num_batches_tracked itself for checkpoints from older torch.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_sample(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_sample(unexpected)})")
        raise CheckpointError(
            f"checkpoint {where} does not fit {type(model).__name__}: {'; '.join(parts)}: "
            "pass the model name the checkpoint was trained with"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"checkpoint {where} does not fit {type(model).__name__}: {key} has shape "
                f"{tuple(tensor.shape)} in the checkpoint but {tuple(expected[key].shape)} in "
                "the model: pass the model name the checkpoint was trained with"
            )


def _sample(keys: list[str], shown: int = 3) -> str:
    more = f", ... +{len(keys) - shown}" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
