"""A name -> item registry shared by models, methods, encodings and datasets."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownName

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """``"did you mean a, b? "`` for the (at most ``n``) choices close to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


class Registry(Generic[T]):
    """Items registered once under a unique name; unknown names suggest close matches."""

    def __init__(self, kind: str, list_command: str) -> None:
        self.kind = kind
        self._list_command = list_command
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        def register(item: T) -> T:
            return self.add(name, item)

        return register

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.unknown_message(name)) from None

    def unknown_message(self, name: str, *, list_names: bool = False) -> str:
        """``list_names``: name every item instead of the command that lists them (for that command itself)."""
        listing = f"valid are {', '.join(self._items)}" if list_names else f"`{self._list_command}` lists them all"
        return f"unknown {self.kind} {name!r}: {did_you_mean(name, self._items)}{listing}"

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._items if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
