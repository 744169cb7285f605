"""KD methods: one pure loss function per file, registered by name.

Every method has the signature ``fn(student_logits, teacher, target, *, epoch, **hparams)`` and
returns a dict of named, already weighted scalar loss terms whose sum is the training loss.
Hyper-parameters and their defaults live in each function's signature; ``resolve_hparams``
layers presets and ``--set`` overrides on top. To add a method, write one module that
decorates its function with ``@register_method("name")`` and import it below.

"reference §N" in the docstrings points to a section of the project's implementation
reference for these losses ("Logit-based KD losses: implementation-ready specification"),
which records the sources, published settings and the readings of incomplete sources;
``docs/methods.md`` is the user-facing summary.
"""

from __future__ import annotations

from ._registry import (
    AUTO_PRESET,
    MethodInfo,
    ResolvedHparams,
    compute_loss,
    get_method,
    list_methods,
    pair_preset_name,
    register_method,
    resolve_hparams,
    resolve_method,
)

# Importing a module registers its methods; the order here is the order of list_methods().
from . import ce, kd, rkl, jsd, dkd, loca, rld, lud, dist  # noqa: F401  isort: skip

__all__ = [
    "AUTO_PRESET",
    "MethodInfo",
    "ResolvedHparams",
    "compute_loss",
    "get_method",
    "list_methods",
    "pair_preset_name",
    "register_method",
    "resolve_hparams",
    "resolve_method",
]
