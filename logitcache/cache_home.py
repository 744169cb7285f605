"""The cache home: where caches are filed, listed and found again by what they are.

``LOGITCACHE_HOME`` (default ``$XDG_CACHE_HOME/logitcache`` or ``~/.cache/logitcache``) is a
folder or an fsspec URL (``s3://bucket/caches``) that a team can share. ``dump`` without
``--out`` files its store there as ``<teacher>_<dataset>_<split>_<views>v_<encoding>-<id>.zarr``,
where ``<id>`` is a fingerprint of the store's spec, so equal dumps land on the same name and
resume each other. ``train`` without ``--cache`` looks there for the complete cache made for its
dataset (and teacher, and the teacher's weights, if given), says which it used, or explains the
near-misses; caches of two different teachers are never chosen between silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._utils import plural
from .errors import BadInput, CacheError, CacheMismatch, CacheNotFound
from .store.format import CacheSpec, TeacherInfo
from .store.zarr_store import ZarrStore, is_url, remote_errors
from .views import ViewSpec


def cache_home() -> str:
    """The cache home location (a path or a URL), from ``LOGITCACHE_HOME`` or the default."""
    env = os.environ.get("LOGITCACHE_HOME")
    if env:
        return env.rstrip("/")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "logitcache")


def store_name(spec: CacheSpec) -> str:
    """The readable, content-addressed name a spec is filed under."""
    dataset = _slug(spec.dataset.name.replace("imagefolder:", "folder-"))
    views = f"L{spec.dataset.seq_len}" if spec.dataset.seq_len else f"{spec.views.count}v"
    # An hf: teacher is a folder path: only its last part goes into the name (the id tells folders apart).
    teacher = _slug(Path(spec.teacher.name[3:]).name) if spec.teacher.name.startswith("hf:") else spec.teacher.name
    return f"{teacher}_{dataset}_{spec.dataset.split}_{views}_{spec.encoding.slug()}-{spec.short_id()}.zarr"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def location_in_home(spec: CacheSpec, home: str | None = None) -> str:
    home = home or cache_home()
    return f"{home}/{store_name(spec)}"


@dataclass(frozen=True)
class CacheEntry:
    """One store found in the cache home."""

    location: str
    spec: CacheSpec
    complete: bool
    created_at: str
    bytes_on_disk: int
    teacher_test_accuracy: float | None = None

    def describe(self) -> str:
        return describe_cache(self.spec, self.teacher_test_accuracy)


def describe_teacher(teacher: TeacherInfo, test_accuracy: float | None) -> str:
    """The teacher of a cache, told apart from other checkpoints of its architecture."""
    acc = "unknown" if test_accuracy is None else f"{test_accuracy:.2f}%"
    return f"{teacher.name} weights {teacher.weights_sha256[:12]}, teacher test acc {acc}"


def describe_cache(spec: CacheSpec, teacher_test_accuracy: float | None) -> str:
    """One line on what a cache holds: teacher (with its weights), data, views, encoding."""
    return (f"{describe_teacher(spec.teacher, teacher_test_accuracy)}, on {spec.dataset.name} [{spec.dataset.split}], "
            f"{describe_views(spec)}, {spec.encoding.describe()}"
            + (f", teacher forward {spec.precision}" if spec.precision != "fp32" else ""))


def describe_views(spec: CacheSpec) -> str:
    """``8 views``, or for text ``sequences of 128 tokens`` (its one clean view)."""
    return f"sequences of {spec.dataset.seq_len} tokens" if spec.dataset.seq_len else plural(spec.views.count, "view")


def list_caches(home: str | None = None, *, skipped: list[str] | None = None) -> list[CacheEntry]:
    """Every logitcache store directly under the home, newest first.

    A ``.zarr`` or ``.zip`` entry that is not a readable store (a junk file in a shared home, a
    damaged archive) is left out, never an error for everyone: ``skipped`` gets one line naming
    it and why.
    """
    home = home or cache_home()
    entries = []
    for location in _children(home):
        try:
            store = ZarrStore.open(location, read_only=True)
            entry = CacheEntry(location=location, spec=store.spec, complete=store.provenance.complete,
                               created_at=store.provenance.created_at, bytes_on_disk=store.nbytes_stored(),
                               teacher_test_accuracy=store.provenance.teacher_test_accuracy)
        except (CacheError, OSError) as e:
            if skipped is not None:
                skipped.append(f"skipped {location}: {e}")
            continue
        entries.append(entry)
    return sorted(entries, key=lambda e: e.created_at, reverse=True)


def _children(home: str) -> list[str]:
    if not is_url(home) or home.startswith("file://"):
        root = Path(home.removeprefix("file://")).expanduser()
        if root.exists() and not root.is_dir():
            raise BadInput(f"the cache home {root} is a file, not a folder: point LOGITCACHE_HOME (or --home) at a folder")
        if not root.is_dir():
            return []
        return [str(p) for p in sorted(root.iterdir()) if p.suffix in (".zarr", ".zip")]
    import fsspec

    fs, path = fsspec.core.url_to_fs(home)
    protocol = home.split("://", 1)[0]
    with remote_errors(home):
        try:
            names = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
    return [f"{protocol}://{n}" for n in sorted(names) if n.endswith((".zarr", ".zip"))]


def find_cache(*, dataset_name: str, split: str, num_samples: int, num_classes: int, fingerprint: str,
               teacher: str | None = None, weights_sha256: str | None = None, home: str | None = None,
               unusable: Callable[[CacheSpec], str | None] | None = None) -> tuple[CacheEntry, list[str]]:
    """The newest complete cache for this data (and teacher, and teacher weights), plus notes on
    what else was seen.

    Caches of one teacher are interchangeable (the newest wins, ties by name, and the notes say
    which others matched); caches of different teachers (architecture or weights) are not, so
    matches of several teachers are refused rather than picked from.

    ``unusable(spec)`` may name why a cache that matches the data cannot serve this run (e.g. a
    sampled cache for a method not defined on draws); such a cache is a near miss, not the pick.

    Raises:
        CacheNotFound: no cache matches; the message lists every near-miss and why it is one.
        BadInput: the matches hold more than one teacher; the message lists them.
    """
    home = home or cache_home()
    entries = list_caches(home)
    misses: list[str] = []
    matches: list[CacheEntry] = []
    for e in entries:
        d, t = e.spec.dataset, e.spec.teacher
        why = []
        if teacher is not None and t.name != teacher:
            why.append(f"teacher {t.name}, not {teacher}")
        elif weights_sha256 is not None and t.weights_sha256 != weights_sha256:
            why.append(f"teacher weights {t.weights_sha256[:12]}, not {weights_sha256[:12]} (another checkpoint)")
        if d.split != split:
            why.append(f"split {d.split}, not {split}")
        if d.num_classes != num_classes or d.num_samples != num_samples:
            why.append(f"{d.num_samples} samples × {d.num_classes} classes, not {num_samples} × {num_classes}")
        elif d.fingerprint != fingerprint:
            why.append("other image content (dataset fingerprint differs)")
        if not e.complete:
            why.append("its dump has not finished")
        reason = unusable(e.spec) if unusable is not None else None
        if reason is not None:
            why.append(reason)
        try:  # views this environment would replay as other pixels (another Pillow, the former resampler)
            reason = ViewSpec.from_json(e.spec.views.augmentation).replay_problem()
        except CacheMismatch as err:
            reason = str(err)
        if reason is not None:
            why.append(reason)
        if why:
            misses.append(f"{Path(e.location).name}: {'; '.join(why)}")
        else:
            matches.append(e)
    wanted = f"{dataset_name} [{split}]" + (f" with teacher {teacher}" if teacher else "")
    if weights_sha256 is not None:
        wanted += f" of weights {weights_sha256[:12]}"
    if not matches:
        detail = (" Near misses: " + " | ".join(misses) + ".") if misses else f" The cache home {home} holds no caches."
        raise CacheNotFound(
            f"no cache in {home} for {wanted}.{detail} Make one with `logitcache dump` (without --out it is filed "
            "there), or pass --cache"
        )
    teachers = {(e.spec.teacher.name, e.spec.teacher.weights_sha256) for e in matches}
    if len(teachers) > 1:
        listed = " | ".join(f"{Path(e.location).name}: {describe_teacher(e.spec.teacher, e.teacher_test_accuracy)}"
                            for e in matches)
        raise BadInput(
            f"{len(matches)} caches in {home} match {wanted} but hold {len(teachers)} different teachers ({listed}): "
            "say which with --teacher NAME --checkpoint PATH (the cache of those weights is used), or pass --cache"
        )
    # list_caches sorts newest first, stably over names: the same home always gives the same pick.
    others = [Path(e.location).name for e in matches[1:]]
    notes = [f"newest of {len(matches)} caches of this teacher (also matching: {', '.join(others)})"] if others else []
    return matches[0], notes
