"""The model registry, the factory, checkpoint loading and weight hashing.

CIFAR architectures register themselves here by name (see the family files); a name
``PREFIX:NAME`` goes to the model source of that prefix instead (``tv:`` torchvision, ``timm:``
timm; ``register_source`` adds one). Checkpoints are read with ``weights_only=True`` (or from
safetensors, which holds only tensors) so that loading a teacher can never run code from the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .._registry import Registry
from ..errors import BadInput, CheckpointError, UnknownName
from .inputs import ModelInput

if TYPE_CHECKING:
    from ..datasets import ImageDataset

ModelFn = Callable[[int], nn.Module]

MODELS: Registry[ModelFn] = Registry("model", "logitcache models")

# Containers that training scripts wrap a state dict in (mdistiller/RepDistiller use "model").
_NESTED_KEYS = ("model", "state_dict", "net")
# (Distributed)DataParallel save every key under "module.", training wrappers (Lightning modules,
# EMA holders) under "model.": stripped, in this order, when every key has one the model's own lack.
_WRAPPER_PREFIXES = ("module.", "model.")
_RESAVE_HINT = "re-save it with torch.save(model.state_dict(), path)"
_SAFETENSORS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ModelSource:
    """Models named ``PREFIX:NAME`` that another library builds (torchvision, timm, ...).

    ``create(name, num_classes)`` builds one with random weights, never downloading any;
    ``input(name)`` is its own input configuration, or None to take the dataset's.
    """

    prefix: str
    create: Callable[[str, int], nn.Module]
    input: Callable[[str], ModelInput | None] = lambda name: None


SOURCES: dict[str, ModelSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Route names starting with ``source.prefix`` (e.g. ``"timm:"``) to ``source``."""
    if not source.prefix.endswith(":") or source.prefix in SOURCES:
        raise ValueError(f"model source prefix {source.prefix!r} must end with ':' and be registered once")
    SOURCES[source.prefix] = source
    return source


def _split_source(name: str) -> tuple[ModelSource, str] | None:
    prefix, colon, rest = name.partition(":")
    if not colon:
        return None
    source = SOURCES.get(prefix + colon)
    if source is None:
        raise UnknownName(f"unknown model source {prefix + colon!r} in {name!r}: use one of "
                          f"{', '.join(SOURCES)} or a name `logitcache models` lists")
    return source, rest


def model_input(name: str) -> ModelInput | None:
    """The input configuration of model ``name`` (timm's pretrained config), or None when it has
    none of its own and takes the dataset's normalisation and view size."""
    found = _split_source(name)
    return None if found is None else found[0].input(found[1])


def fit_to_model(dataset: ImageDataset, name: str, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> tuple[ImageDataset, ModelInput | None]:
    """``dataset`` normalised and (for image folders) sized as model ``name`` is fed, and the input
    configuration that says how: the model's own (``model_input``), with the user's ``mean``/``std``
    in place of its normalisation (or of the dataset's, for a model without one). ``(dataset,
    None)`` when the dataset is used as it is."""
    inp = model_input(name)
    if mean is not None or std is not None:
        inp = (inp or ModelInput.of_dataset(dataset)).normalised(mean, std)
    return (dataset, None) if inp is None else (inp.fit(dataset), inp)


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
        name: A registered CIFAR model (see ``list_models``) or ``PREFIX:NAME`` of a model source
            (``tv:resnet18``, ``timm:resnet50.a1_in1k``, ``hf:<folder>``: a causal LM, whose
            ``num_classes`` is its vocabulary size).
        num_classes: Size of the classifier output.
        checkpoint: A state-dict file to load with ``load_checkpoint``.

    Returns:
        The model, in training mode (``nn.Module``'s default); its ``forward`` returns logits.

    Raises:
        UnknownName: ``name`` is neither registered nor a model of its source.
        BadInput: ``num_classes`` is not a positive integer.
        CheckpointError: the checkpoint cannot be loaded into this model.
    """
    # bool is an int subclass, and True would silently build a 1-class model.
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BadInput(f"num_classes must be a positive integer, got {num_classes!r}")
    found = _split_source(name)
    model = MODELS.get(name)(num_classes) if found is None else found[0].create(found[1], num_classes)
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

    The file is a safetensors file (``.safetensors``, or any name holding one, e.g. a hub
    ``model.safetensors``) or a ``torch.save`` file (``.pt``, ``.pth``, ``pytorch_model.bin``)
    holding the state dict itself or a dict with it under ``"model"``, ``"state_dict"`` or
    ``"net"``; a ``"module."`` or ``"model."`` prefix on every key (left by DataParallel or a
    training wrapper) is removed when the model's own keys have none. Only tensors and plain
    containers are unpickled (``weights_only=True``); safetensors holds nothing else.

    Args:
        model: The model to fill; it must have exactly the checkpoint's keys and shapes.
        path: The checkpoint file.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, damaged, or safetensors
            without the package), holds arbitrary Python objects or no state dict, or its keys
            or shapes (e.g. its number of classes) differ from the model's. The message is one
            line and names the fix.
    """
    where = os.fspath(path)
    if os.path.isdir(where):
        raise CheckpointError(f"checkpoint {where} is a directory: pass the file inside it")
    if not os.path.isfile(where):
        raise CheckpointError(f"checkpoint {where} not found: check the path")
    payload = _read_safetensors(where) if _is_safetensors(where) else _read(where)
    state = _strip_wrapper_prefixes(_find_state_dict(payload, where), model)
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


def _is_safetensors(where: str) -> bool:
    if where.endswith(_SAFETENSORS_SUFFIX):
        return True
    # Its format: an 8-byte little-endian header length, then the JSON header. torch.save files
    # start with a zip ("PK") or pickle (0x80) signature instead.
    try:
        with open(where, "rb") as f:
            head = f.read(9)
    except OSError:
        return False  # torch.load then names what is wrong with it
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 32


def _read_safetensors(where: str) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"checkpoint {where} is a safetensors file, which needs the safetensors package: "
                              "pip install 'logitcache[timm]' (or pip install safetensors)") from None
    try:
        return load_file(where, device="cpu")
    except Exception as err:  # SafetensorError, OSError, ... on truncated or damaged files
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        raise CheckpointError(
            f"checkpoint {where} is not a readable safetensors file ({reason}): it is truncated or damaged; "
            "copy or export it again"
        ) from None


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


def _strip_wrapper_prefixes(state: Mapping[str, Tensor], model: nn.Module) -> Mapping[str, Tensor]:
    own = model.state_dict().keys()
    for prefix in _WRAPPER_PREFIXES:
        # Only when every key has it and the model's own keys do not: a real submodule may be so named.
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = _strip(state, prefix)
    return state


def _strip(state: Mapping[str, Tensor], prefix: str) -> Mapping[str, Tensor]:
    cut = len(prefix)
    stripped: OrderedDict[str, Tensor] = OrderedDict((k[cut:], v) for k, v in state.items())
    # load_state_dict reads module versions from _metadata (BatchNorm uses it to accept
    # checkpoints older than num_batches_tracked), so it has to follow the keys.
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        moved: OrderedDict[str, object] = OrderedDict()
        for key, value in metadata.items():
            if key == prefix[:-1]:  # the wrapped model's root; the wrapper's own root is dropped
                moved[""] = value
            elif key.startswith(prefix):
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
