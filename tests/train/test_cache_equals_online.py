"""The cache's promise: training from a full fp32 cache trains the same student as running the
teacher online on the same replayed views, step for step."""

from __future__ import annotations

import pytest

from logitcache.models import weights_sha256
from logitcache.store.reader import CacheReader
from logitcache.teacher import build_teacher
from train_helpers import max_abs_diff, read_json, weights

TOLERANCE = 1e-4  # float32 logits of the same images computed in batches of 256 (dump) and 64 (online)


@pytest.fixture(scope="module")
def cached_and_online(digits_full_cache, tmp_path_factory):
    """One epoch of KD on digits from the fp32 cache, with the same teacher online (views from the
    cache, and views derived without it), and from the cache with another student seed."""
    from logitcache.train import TrainConfig, train

    spec = CacheReader(digits_full_cache).spec
    # The online teacher is the cache's: same registry name, same seeded random weights.
    teacher = build_teacher(spec.teacher.name, spec.dataset.num_classes, checkpoint=None, random_init=True,
                            seed=spec.views.seed)
    assert weights_sha256(teacher) == spec.teacher.weights_sha256

    root = tmp_path_factory.mktemp("cache_vs_online")
    common = dict(student="resnet8", dataset="digits", method="kd", epochs=1, device="cpu", workers=0,
                  progress=False)
    online = dict(teacher_online=True, teacher=spec.teacher.name, random_init_teacher=True, view_seed=spec.views.seed)
    configs = {
        "cache": dict(cache=str(digits_full_cache)),
        "online": dict(views=spec.views.count, **online),  # no cache at all: views derived as the dump did
        "online_cache_views": dict(cache=str(digits_full_cache), **online),
        "cache_seed1": dict(cache=str(digits_full_cache), seed=1),
    }
    results = {}
    for name, fields in configs.items():
        results[name] = train(TrainConfig(out=str(root / name), **common, **fields))
    return root, results


def test_cache_and_online_teacher_train_the_same_student(cached_and_online):
    root, _ = cached_and_online
    cached = weights(root / "cache" / "last.pt")
    for online in ("online", "online_cache_views"):
        diff = max_abs_diff(cached, weights(root / online / "last.pt"))
        assert diff < TOLERANCE, f"{online}: max |Δw| = {diff}"


def test_the_comparison_can_fail_another_seed_trains_another_student(cached_and_online):
    root, _ = cached_and_online
    diff = max_abs_diff(weights(root / "cache" / "last.pt"), weights(root / "cache_seed1" / "last.pt"))
    assert diff > 100 * TOLERANCE


def test_online_runs_count_their_teacher_forwards(cached_and_online):
    root, results = cached_and_online
    n = 1438
    assert (results["cache"].teacher_forwards_saved, results["cache"].teacher_forwards_run) == (n, 0)
    for online in ("online", "online_cache_views"):
        assert (results[online].teacher_forwards_saved, results[online].teacher_forwards_run) == (0, n)
        assert read_json(root / online / "summary.json")["teacher_forwards_run"] == n
    # Same student, same test images: the same accuracy to the last sample.
    assert results["online"].last_acc == results["cache"].last_acc
