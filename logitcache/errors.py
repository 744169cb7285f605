"""Exceptions raised by logitcache.

Every error a user can cause is a :class:`LogitcacheError` whose message says what is wrong
and how to fix it; the CLI prints it as one line and exits with code 2. Anything else is a bug.
"""

from __future__ import annotations


class LogitcacheError(Exception):
    """Base class: a user-facing error whose message names the fix."""


class UnknownName(LogitcacheError, KeyError):
    """A model, method, dataset or encoding name that no registry holds."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BadInput(LogitcacheError, ValueError):
    """An option or file that cannot be used as given."""


class OutputError(BadInput):
    """An output location that cannot be created or written (under a file, on /proc, read-only)."""


class CheckpointError(LogitcacheError):
    """A checkpoint that cannot be loaded into the model it is meant for."""


class DataError(LogitcacheError):
    """A dataset that is missing, empty or unreadable."""


class NonFiniteLogits(DataError):
    """Teacher logits an encoding refuses: NaN/inf in what it stores or in the row's logsumexp.

    ``row`` is the first such row of the batch, for the caller to name its (view, sample).
    """

    def __init__(self, row: int, kind: str) -> None:
        super().__init__(f"teacher logits of row {row} are NaN/inf where the {kind} encoding stores them "
                         "(or in their logsumexp): nothing of the batch is stored")
        self.row = row


class CacheError(LogitcacheError):
    """Base class for problems with a logit cache."""


class CacheNotFound(CacheError):
    """No store at the given location, or not a logitcache store."""


class CacheMismatch(CacheError):
    """A store that exists but was made for something else."""


class CacheOutdated(CacheMismatch):
    """A store written by an older format version: it must be dumped again."""


class CacheCorrupt(CacheError):
    """Bytes in a store that do not decode or do not match their checksum."""


class CacheIncomplete(CacheError):
    """A store whose dump has not finished."""


class CacheBusy(CacheError):
    """Another process holds the store's lock."""


class VerifyFailed(CacheError):
    """``verify`` found logits that do not match a fresh teacher forward."""
