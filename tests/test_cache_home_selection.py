"""``find_cache`` over arbitrary cache homes (hypothesis): the cache it returns holds exactly the
teacher asked for, and it never chooses between two teachers.

A home is a list of entries of two architectures and three sets of weights, with creation times
that tie, some unfinished; ``list_caches`` is replaced by that list in its own order (newest
first, stable), so the property is about the choice alone.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitcache import cache_home
from logitcache.errors import BadInput, CacheNotFound
from logitcache.store.format import TeacherInfo
from logitcache.store.reader import CacheReader

WEIGHTS = [c * 64 for c in "abc"]
ENTRY = st.tuples(st.sampled_from(["resnet8", "resnet20"]), st.sampled_from(WEIGHTS), st.integers(0, 2), st.booleans())


@pytest.fixture(scope="module")
def spec(digits_cache):
    return CacheReader(digits_cache).spec


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(home=st.lists(ENTRY, max_size=6), teacher=st.sampled_from([None, "resnet8", "resnet20"]),
       weights=st.sampled_from([None, *WEIGHTS]))
def test_find_cache_returns_the_asked_teacher_or_refuses(spec, monkeypatch, home, teacher, weights):
    entries = [cache_home.CacheEntry(
        location=f"/home/{i}-{name}.zarr", complete=complete, created_at=f"2026-01-0{1 + day}", bytes_on_disk=1,
        spec=dataclasses.replace(spec, teacher=TeacherInfo(name=name, weights_sha256=sha, num_classes=10)),
    ) for i, (name, sha, day, complete) in enumerate(home)]
    entries.sort(key=lambda e: e.created_at, reverse=True)  # as list_caches orders them
    monkeypatch.setattr(cache_home, "list_caches", lambda home=None: entries)
    d = spec.dataset
    matches = [e for e in entries if e.complete and teacher in (None, e.spec.teacher.name)
               and weights in (None, e.spec.teacher.weights_sha256)]

    def find():
        return cache_home.find_cache(dataset_name=d.name, split=d.split, num_samples=d.num_samples,
                                     num_classes=d.num_classes, fingerprint=d.fingerprint, teacher=teacher,
                                     weights_sha256=weights, home="/home")

    if not matches:
        with pytest.raises(CacheNotFound):
            find()
    elif len({(e.spec.teacher.name, e.spec.teacher.weights_sha256) for e in matches}) > 1:
        assert weights is None or teacher is None  # a weights hash and a name single out one teacher
        with pytest.raises(BadInput, match="different teachers"):
            find()
    else:
        entry, notes = find()
        assert entry is matches[0]  # the newest, ties in listing order
        assert all(m.location.rsplit("/", 1)[1] in " ".join(notes) for m in matches[1:])
