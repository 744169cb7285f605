"""Where the data shipped with logitcache (the ``logitcache_data`` package, ``data/`` in the repo) lives.

The shipped names are shortcuts, not a namespace: an existing path of the same name always wins, so
a user's own ``./tiny-teacher`` folder is never shadowed by the shipped one.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import BadInput, UnknownName

SHIPPED_TEXTS = {"botchan": "botchan.txt"}
SHIPPED_MODELS = {"tiny-teacher": "lm/tiny-teacher", "tiny-student": "lm/tiny-student"}


def shipped(relative: str) -> Path:
    """The path of a shipped file; setuptools installs package data as plain files, never zipped."""
    return Path(str(files("logitcache_data").joinpath(relative)))


def _resolve(arg: str, names: dict[str, str], what: str, prefix: str, usage: str) -> Path:
    shortcuts = ", ".join(names)
    if not arg:  # Path("") is the working directory, which exists
        raise BadInput(f"{prefix} needs {usage}, or one of the shipped {shortcuts}")
    path = Path(arg).expanduser()
    if path.exists():
        return path
    if arg in names:
        return shipped(names[arg])
    raise UnknownName(
        f"{prefix}{arg}: no such {what}; give an existing path or a shipped name: "
        + ", ".join(f"{prefix}{n}" for n in names)
    )


def resolve_text(arg: str) -> Path:
    """``text:ARG``: an existing file or folder, else a shipped text by name (``botchan``)."""
    return _resolve(arg, SHIPPED_TEXTS, "text file or folder", "text:",
                    "a path: text:PATH (a .txt, .jsonl or .parquet file or a folder of them)")


def resolve_model_dir(arg: str) -> Path:
    """``hf:ARG``: an existing folder, else a shipped config-only model by name (``tiny-teacher``)."""
    return _resolve(arg, SHIPPED_MODELS, "model folder", "hf:", "a folder: hf:DIR")
