"""``--config FILE``: a command's options read from a TOML file; the command line wins.

Keys are option names (``batch-size`` or ``batch_size``), each with the option's own type:
``epochs = 240``, ``lr = 0.05``, ``quiet = true``, ``cache = "c.zarr"``. Hyper-parameters go
under ``set``, as a list (``set = ["beta=2"]``) or a table (``[set]`` then ``beta = 2``), and
merge with ``--set`` key by key: a key given on the command line replaces only that key.
"""

from __future__ import annotations

import json
import tomllib
import typing
from pathlib import Path
from typing import Any

import typer

from logitcache._registry import did_you_mean
from logitcache.errors import BadInput

# Where load_config leaves the file's KEY=VALUE list for merge_set, which runs after it.
_FILE_SET = "logitcache.config_set"
_SET = "set_"  # the parameter of --set: ``set`` is a builtin

# An option's Python type -> the TOML types it accepts, and how a message names them.
_TYPES: dict[type, tuple[tuple[type, ...], str]] = {
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
    str: ((str,), "a string"),
}


def load_config(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Callback of an eager ``--config`` option: the file's values become the command's defaults."""
    if not value:
        return value
    path = Path(value)
    options = _options(ctx.command)
    types = typing.get_type_hints(ctx.command.callback)
    values = {key.replace("-", "_"): v for key, v in _read(path).items()}
    unknown = sorted(set(values) - set(options))
    if unknown:
        hints = "".join(f"; {key}: {hint.strip()}" for key in unknown if (hint := did_you_mean(key, options, n=1)))
        raise BadInput(f"unknown key(s) {', '.join(unknown)} in {path}{hints}; valid keys: {', '.join(sorted(options))}")
    defaults = {}
    for key, v in values.items():
        option = options[key]
        if option.name == _SET:
            ctx.meta[_FILE_SET] = _set_entries(v, path)
        else:
            defaults[option.name] = _checked(v, types.get(option.name), key, path)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def merge_set(ctx: typer.Context, param: typer.CallbackParam, value: list[str] | None) -> list[str] | None:
    """Callback of ``--set``: the config file's entries, each replaced by a command-line one with its key."""
    merged: dict[str, str] = {}
    for item in [*ctx.meta.get(_FILE_SET, ()), *(value or ())]:
        merged[item.partition("=")[0].strip()] = item  # a malformed item keeps its text for train's message
    return list(merged.values()) or None


def _read(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise BadInput(f"--config {path} is a folder: pass a TOML file")
    if not path.exists():
        raise BadInput(f"--config {path} does not exist: check the path")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise BadInput(f"cannot read --config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"--config {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"--config {path} is not valid TOML: {e}") from None


def _options(command: Any) -> dict[str, Any]:
    """Option name as a key (``--batch-size`` -> ``batch_size``) -> its parameter."""
    return {
        next(o for o in p.opts if o.startswith("--"))[2:].replace("-", "_"): p
        for p in command.params if p.name not in ("config", "help")
    }


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


def _checked(v: Any, hint: Any, key: str, path: Path) -> Any:
    """``v`` if it has the option's type: TOML ``epochs = true`` is not 1, nor ``lr = "0.1"`` 0.1."""
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]  # int | None -> int
    kind = kinds[0] if len(kinds) == 1 else None
    if typing.get_origin(kind) is list:  # a repeatable option (--log): a list, or one value for a list of one
        items = v if isinstance(v, list) else [v]
        return [_checked(item, typing.get_args(kind)[0], key, path) for item in items]
    accepted, expected = _TYPES.get(kind, ((object,), ""))
    if not isinstance(v, accepted) or (isinstance(v, bool) and bool not in accepted):  # bool is an int
        raise BadInput(f"{key} = {_toml(v)} in {path} is {_kind(v)}: {key} takes {expected}")
    return v


def _toml(v: Any) -> str:
    """``v`` as the file spells it (``true``, ``"0.1"``), for messages."""
    return str(v).lower() if isinstance(v, bool) else json.dumps(v) if isinstance(v, str) else repr(v)


def _set_entries(v: Any, path: Path) -> list[str]:
    """``set = ["beta=2"]`` or ``[set] beta = 2`` as KEY=VALUE strings."""
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return v
    if isinstance(v, dict) and all(isinstance(x, (str, int, float, bool)) for x in v.values()):
        return [f"{k}={_toml(x) if isinstance(x, bool) else x}" for k, x in v.items()]
    raise BadInput(f"set = {_toml(v)} in {path}: use a list of KEY=VALUE strings (set = [\"beta=2\"]) "
                   "or a table ([set] then beta = 2)")
