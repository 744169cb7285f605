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


def test_a_cache_this_environment_cannot_replay_is_a_near_miss(spec, monkeypatch):
    """The newest cache of the teacher, made under another Pillow, is passed over (named as a near
    miss, with both resamplers) for an older one whose views this environment replays."""
    from logitcache.store.format import ViewsInfo
    from logitcache.views import ViewSpec

    def entry(name: str, day: int, resampler: str | None) -> cache_home.CacheEntry:
        view = ViewSpec(kind="resized_crop", size=8, **({"resampler": resampler} if resampler else {}))
        views = ViewsInfo(count=spec.views.count, clean=spec.views.clean, seed=spec.views.seed, augmentation=view.to_json())
        return cache_home.CacheEntry(location=f"/home/{name}.zarr", complete=True, created_at=f"2026-01-0{day}",
                                     bytes_on_disk=1, spec=dataclasses.replace(spec, views=views))

    entries = [entry("old-pillow", 3, "pillow-9.5.0-bilinear"), entry("here", 1, None)]
    monkeypatch.setattr(cache_home, "list_caches", lambda home=None: entries)
    d = spec.dataset
    found, notes = cache_home.find_cache(dataset_name=d.name, split=d.split, num_samples=d.num_samples,
                                         num_classes=d.num_classes, fingerprint=d.fingerprint, home="/home")
    assert found is entries[1]
    monkeypatch.setattr(cache_home, "list_caches", lambda home=None: entries[:1])
    with pytest.raises(CacheNotFound, match="old-pillow.zarr: its views were resampled by pillow-9.5.0-bilinear, "
                                            "this environment has pillow-"):
        cache_home.find_cache(dataset_name=d.name, split=d.split, num_samples=d.num_samples,
                              num_classes=d.num_classes, fingerprint=d.fingerprint, home="/home")
