"""The KD-method registry: ``register_method``, ``MethodInfo`` and hyper-parameter resolution.

A method is a pure function ``fn(student_logits, teacher, target, *, epoch, **hparams)``
returning a dict of named, already weighted scalar loss terms. Its hyper-parameters are its
keyword-only arguments after ``epoch``, with the paper's defaults; they are read from the
signature here and nowhere else is a default written down. Presets are named partial
overrides declared at registration ("ls", "<teacher>-<student>", "ls:<teacher>-<student>").
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from torch import Tensor

from .._registry import Registry
from ..errors import BadInput

MethodFn = Callable[..., dict[str, Tensor]]
# Whether a method is defined on a sampled teacher target (counts / N of draws at a temperature):
# a fixed reason it never is, or a check of (resolved hyper-parameters, sampling temperature) that
# returns None when it is and the reason when it is not.
SampledVerdict = str | Callable[[Mapping[str, Any], float], str | None]
_UNDECLARED = "it declares no verdict on sampled targets (register_method(..., sampled=...))"
_UNDECLARED_TOKENS = "it declares no verdict on token rows (register_method(..., tokens=...))"

# Preset names with a meaning to resolve_hparams.
LS_PRESET = "ls"
AUTO_PRESET = "auto"
_LS_PAIR_PREFIX = "ls:"

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_NONE = frozenset({"none", "null"})
_SCALAR_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class _HParam:
    """One hyper-parameter: its default, scalar type, and whether ``None`` is allowed."""

    name: str
    default: Any
    kind: type
    optional: bool


@dataclass(frozen=True)
class OnTokens:
    """Whether a method is meaningful on token rows (rows = positions of a text, the true class of
    a row = the next token), and the one-line reason shown by ``logitcache methods``."""

    meaningful: bool
    reason: str


@dataclass(frozen=True)
class MethodInfo:
    """A registered KD method.

    Attributes:
        name: The registry name (``--method``).
        fn: The loss function.
        needs_teacher: False only for methods that never look at a teacher (``ce``); those
            receive ``teacher=None``.
        presets: Named partial hyper-parameter settings (read-only mappings).
        summary: The first line of the function's docstring.
        sampled: Whether the method is defined on a sampled cache, see ``register_method``.
        tokens: Whether the method is meaningful on token rows, see ``register_method``.
    """

    name: str
    fn: MethodFn
    needs_teacher: bool
    presets: Mapping[str, Mapping[str, Any]]
    summary: str
    sampled: SampledVerdict = _UNDECLARED
    tokens: OnTokens | None = None

    def refusal_on_sampled(self, hparams: Mapping[str, Any], temperature: float) -> str | None:
        """None when the method, with these hyper-parameters, is defined on draws sampled at
        ``temperature``; otherwise the reason it is not."""
        if not self.needs_teacher:
            return None
        if isinstance(self.sampled, str):
            return self.sampled
        return self.sampled({**self.defaults(), **hparams}, temperature)

    def check_sampled(self, hparams: Mapping[str, Any], temperature: float) -> None:
        """Raise :class:`BadInput` with the reason when :meth:`refusal_on_sampled` refuses."""
        reason = self.refusal_on_sampled(hparams, temperature)
        if reason is not None:
            raise BadInput(f"{self.name} is not defined on a sampled cache: {reason}")

    def refusal_on_tokens(self) -> str | None:
        """None when the method is meaningful on token rows; otherwise the reason it is not."""
        if self.tokens is None:
            return _UNDECLARED_TOKENS
        return None if self.tokens.meaningful else self.tokens.reason

    def check_tokens(self) -> None:
        """Raise :class:`BadInput` with the reason when the method is not meaningful on token
        rows: what training on a text dataset calls before it writes anything."""
        reason = self.refusal_on_tokens()
        if reason is not None:
            raise BadInput(f"{self.name} is not meaningful on token rows (a text dataset): {reason}")

    def defaults(self) -> dict[str, Any]:
        """The hyper-parameters and their defaults, in signature order."""
        return {p.name: p.default for p in _hparams(self.fn).values()}

    @property
    def supports_logit_stand(self) -> bool:
        """True when the method has a ``logit_stand`` switch (``--logit-stand``)."""
        return "logit_stand" in _hparams(self.fn)


METHODS: Registry[MethodInfo] = Registry("method", "logitcache methods")

# Signature analysis is done once per function (at registration) and kept here.
_HPARAMS: dict[MethodFn, dict[str, _HParam]] = {}


def register_method(
    name: str,
    *,
    needs_teacher: bool = True,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    sampled: SampledVerdict = _UNDECLARED,
    tokens: OnTokens | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Register a KD method under ``name``.

    The signature is checked at import time: three positional arguments (student logits,
    teacher view, target), a keyword-only ``epoch``, then keyword-only hyper-parameters, each
    with a bool/int/float/str default (or ``None`` with an ``X | None`` annotation). Every
    preset may only name those hyper-parameters, with values of the right type.

    Args:
        name: The name ``get_method`` will accept; registering it twice raises ``ValueError``.
        needs_teacher: False for methods that use no teacher (they receive ``teacher=None``).
        presets: Named partial hyper-parameter settings, see ``resolve_hparams``.
        sampled: Whether the method is defined on a sampled cache (an unbiased estimate of the
            teacher's softmax at the sampling temperature, no logits): the reason it never is,
            or a check ``(hparams, sampling_temperature) -> reason | None``. Training refuses a
            sampled cache with the reason before its first step.
        tokens: Whether the method is meaningful on token rows (a causal LM's positions, the true
            class of a row being the next token), with a one-line reason; training on a text
            dataset refuses a method that is not, or that declares nothing, with the reason.

    Returns:
        A decorator that registers the function and returns it unchanged.
    """

    def register(fn: MethodFn) -> MethodFn:
        params = _analyse_signature(name, fn)
        _HPARAMS[fn] = params
        frozen: dict[str, Mapping[str, Any]] = {}
        for preset_name, values in (presets or {}).items():
            if preset_name == AUTO_PRESET:
                raise ValueError(f"method {name!r}: the preset name {AUTO_PRESET!r} is reserved")
            checked = {}
            for key, value in values.items():
                if key not in params:
                    raise ValueError(
                        f"method {name!r}, preset {preset_name!r}: unknown key {key!r}"
                    )
                checked[key] = _coerce(name, params[key], value)
            frozen[preset_name] = types.MappingProxyType(checked)
        doc = inspect.getdoc(fn)
        if not doc:
            raise ValueError(f"method {name!r} needs a docstring (its first line is the summary)")
        METHODS.add(
            name,
            MethodInfo(
                name=name,
                fn=fn,
                needs_teacher=needs_teacher,
                presets=types.MappingProxyType(frozen),
                summary=doc.splitlines()[0].strip(),
                sampled=sampled,
                tokens=tokens,
            ),
        )
        return fn

    return register


def get_method(name: str) -> MethodInfo:
    """The registered method ``name``.

    Raises:
        UnknownName: no such method; the message suggests close matches.
    """
    return METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    """Names of the registered methods matching the ``fnmatch`` ``pattern``, in order."""
    return METHODS.names(pattern)


def pair_preset_name(teacher: str, student: str, *, logit_stand: bool = False) -> str:
    """The preset name of a teacher/student pair: ``"<teacher>-<student>"`` (``"ls:"`` prefixed)."""
    return f"{_LS_PAIR_PREFIX if logit_stand else ''}{teacher}-{student}"


@dataclass(frozen=True)
class ResolvedHparams:
    """A run's hyper-parameters, with where each value came from, for printing and config.json.

    Attributes:
        values: Exactly the method's hyper-parameter keys, in signature order.
        preset: The preset applied in layer 3 (``"auto"`` resolved to its pair), or None.
        sources: Per key: ``"default"``, ``"ls"``, ``"preset <name>"`` or ``"--set"``.
    """

    values: dict[str, Any]
    preset: str | None
    sources: dict[str, str]


def resolve_hparams(
    name: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
    logit_stand: bool = False,
    teacher: str | None = None,
    student: str | None = None,
    force_preset: bool = False,
) -> dict[str, Any]:
    """The complete hyper-parameters of a method for one run (``resolve_method(...).values``).

    Layers, each overriding the previous one:

    1. the defaults in the method's signature;
    2. with ``logit_stand``: the method's ``"ls"`` preset and ``logit_stand=True``;
    3. the named ``preset``; ``"auto"`` picks the pair preset ``"<teacher>-<student>"``
       (with ``logit_stand``: ``"ls:<teacher>-<student>"`` when registered, else the plain
       pair) and applies nothing when the method has no preset for the pair;
    4. ``overrides`` (e.g. from ``--set beta=2``): strings are converted to the default's type.

    Args:
        name: A registered method.
        overrides: Hyper-parameter values set by the user, as values or strings.
        preset: A preset name, ``"auto"``, or None.
        logit_stand: Apply logit standardisation (``--logit-stand``).
        teacher: Teacher model name, for ``preset="auto"`` and the pair check.
        student: Student model name, for ``preset="auto"`` and the pair check.
        force_preset: Apply a pair preset named for another teacher/student pair.

    Returns:
        A new dict with exactly the method's hyper-parameter keys.

    Raises:
        UnknownName: ``name`` is not a registered method.
        BadInput: ``logit_stand`` for a method without it, an unknown preset, a pair preset of
            another pair than ``teacher``/``student`` (without ``force_preset``), an unknown
            hyper-parameter or a value of the wrong type.
    """
    return resolve_method(name, overrides=overrides, preset=preset, logit_stand=logit_stand, teacher=teacher,
                          student=student, force_preset=force_preset).values


def resolve_method(
    name: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
    logit_stand: bool = False,
    teacher: str | None = None,
    student: str | None = None,
    force_preset: bool = False,
) -> ResolvedHparams:
    """``resolve_hparams``, also saying which preset was applied and where each value came from."""
    info = get_method(name)
    params = _hparams(info.fn)
    resolved = info.defaults()
    sources = dict.fromkeys(resolved, "default")

    def apply(values: Mapping[str, Any], source: str) -> None:
        resolved.update(values)
        sources.update(dict.fromkeys(values, source))

    if logit_stand:
        if not info.supports_logit_stand:
            raise BadInput(f"logit standardization is not defined for {name}; drop --logit-stand")
        apply({**info.presets.get(LS_PRESET, {}), "logit_stand": True}, LS_PRESET)
    chosen = _choose_preset(info, preset, logit_stand, teacher, student)
    if chosen is not None:
        if not force_preset:
            _check_pair(chosen, teacher, student)
        apply(info.presets[chosen], f"preset {chosen}")
    for key, value in (overrides or {}).items():
        if key not in params:
            valid = ", ".join(sorted(params)) or "(none)"
            close = difflib.get_close_matches(key, list(params), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BadInput(f"unknown hyper-parameter {key!r} for {name}: valid are {valid}{hint}")
        apply({key: _coerce(name, params[key], value)}, "--set")
    return ResolvedHparams(values=resolved, preset=chosen, sources=sources)


def _check_pair(preset: str, teacher: str | None, student: str | None) -> None:
    """Refuse a pair preset published for other models: its weights were tuned for that pair only."""
    if preset == LS_PRESET or teacher is None or student is None:
        return
    pair = preset.removeprefix(_LS_PAIR_PREFIX)
    if pair != pair_preset_name(teacher, student):
        raise BadInput(
            f"--preset {preset} is the published setting of the pair {pair}, but this run distills {teacher} into "
            f"{student} (pair {pair_preset_name(teacher, student)}): use --preset auto (or none), or --force-preset "
            "to apply it anyway"
        )


def compute_loss(
    name: str,
    student_logits: Tensor,
    teacher: Any,
    target: Tensor,
    *,
    epoch: int,
    hparams: Mapping[str, Any],
) -> dict[str, Tensor]:
    """Call method ``name`` on one batch (thin helper over ``get_method(name).fn``).

    Args:
        name: A registered method.
        student_logits: (B, C) student logits (any float dtype; methods compute in fp32).
        teacher: The batch's ``TeacherView``; ignored (None is passed) for ``needs_teacher=False``.
        target: (B,) int64 labels.
        epoch: The current epoch, 1-based (drives warm-up).
        hparams: Hyper-parameters, usually from ``resolve_hparams``; missing keys take defaults.

    Returns:
        The named, weighted scalar loss terms; the training loss is their sum.
    """
    info = get_method(name)
    unknown = sorted(set(hparams) - set(_hparams(info.fn)))
    if unknown:
        raise BadInput(f"unknown hyper-parameters {', '.join(unknown)} for {name}")
    if info.needs_teacher and teacher is None:
        raise BadInput(f"method {name} needs a teacher: pass a cache or a teacher model")
    view = teacher if info.needs_teacher else None
    if view is not None and view.kind == "sampled":
        info.check_sampled(hparams, view.sample_temperature)
    return info.fn(student_logits, view, target, epoch=epoch, **hparams)


def _hparams(fn: MethodFn) -> dict[str, _HParam]:
    return _HPARAMS[fn]


def _choose_preset(
    info: MethodInfo,
    preset: str | None,
    logit_stand: bool,
    teacher: str | None,
    student: str | None,
) -> str | None:
    if preset is None:
        return None
    if preset == AUTO_PRESET:
        if teacher is None or student is None:
            return None
        candidates = [pair_preset_name(teacher, student)]
        if logit_stand:
            candidates.insert(0, pair_preset_name(teacher, student, logit_stand=True))
        return next((c for c in candidates if c in info.presets), None)
    if preset not in info.presets:
        valid = ", ".join([AUTO_PRESET, *info.presets])
        close = difflib.get_close_matches(preset, list(info.presets), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BadInput(f"unknown preset {preset!r} for {info.name}: valid are {valid}{hint}")
    return preset


def _analyse_signature(name: str, fn: MethodFn) -> dict[str, _HParam]:
    try:
        signature = inspect.signature(fn, eval_str=True)
    except NameError as err:  # an annotation that does not resolve at runtime
        raise ValueError(f"method {name!r}: cannot read its signature ({err})") from None
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) != 3:
        raise ValueError(
            f"method {name!r} must take exactly (student_logits, teacher, target) positionally"
        )
    keyword = [p for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
    if not keyword or keyword[0].name != "epoch":
        raise ValueError(f"method {name!r}: the first keyword-only argument must be 'epoch'")
    params: dict[str, _HParam] = {}
    for p in keyword[1:]:
        if p.default is p.empty:
            raise ValueError(f"method {name!r}: hyper-parameter {p.name!r} needs a default")
        kind, optional = _scalar_kind(p.annotation)
        if kind is None or (p.default is None and not optional):
            raise ValueError(
                f"method {name!r}: hyper-parameter {p.name!r} must be annotated bool, int, "
                f"float or str (optionally '| None'), got {p.annotation!r}"
            )
        if p.default is not None and type(p.default) is not kind:
            raise ValueError(f"method {name!r}: the default of {p.name!r} is not a {kind.__name__}")
        params[p.name] = _HParam(p.name, p.default, kind, optional)
    return params


def _scalar_kind(annotation: Any) -> tuple[type | None, bool]:
    if annotation in _SCALAR_TYPES:
        return annotation, False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in _SCALAR_TYPES and len(get_args(annotation)) == 2:
            return args[0], True
    return None, False


def _coerce(method: str, param: _HParam, value: Any) -> Any:
    """``value`` as ``param``'s type; strings are parsed (CLI ``--set key=value``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
        if param.optional:
            return None
        raise _bad_value(method, param, value)
    kind = param.kind
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise _bad_value(method, param, value)
        try:
            parsed = int(text) if kind is int else float(text)
        except ValueError:
            raise _bad_value(method, param, value) from None
        if kind is float and not math.isfinite(parsed):
            raise _bad_value(method, param, value)
        return parsed
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _bad_value(method, param, value)
    if isinstance(value, bool):  # bool is an int subclass: True must not pass as 1 or 1.0
        raise _bad_value(method, param, value)
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad_value(method, param, value)
    if kind is float:
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        raise _bad_value(method, param, value)
    if isinstance(value, str):
        return value
    raise _bad_value(method, param, value)


def _bad_value(method: str, param: _HParam, value: Any) -> BadInput:
    expected = {
        bool: "a bool (true/false/1/0/yes/no)",
        int: "an int",
        float: "a finite float",
        str: "a string",
    }[param.kind]
    if param.optional:
        expected += " or none"
    return BadInput(f"hyper-parameter {param.name!r} of {method} expects {expected}, got {value!r}")
