"""Encodings: pure encode/decode functions between teacher logits and stored arrays.

An encoding turns a batch of fp32 teacher logits into named numpy arrays (one row per sample)
and turns stored rows back into a :class:`~logitcache.teacher_view.TeacherView`. It knows
nothing about zarr; ``store/zarr_store.py`` stores whatever fields it declares.
"""

from __future__ import annotations

from ._base import Encoding, Field, get_encoding, list_encodings
from . import full, sampled, topk  # noqa: F401  (registration)

__all__ = ["Encoding", "Field", "get_encoding", "list_encodings"]
