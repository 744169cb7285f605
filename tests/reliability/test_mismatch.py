"""No wrong logit used: a cache made for other data is refused, naming the difference.

Caches are made by real dumps of other data (another synthetic seed, size, class count, the
test split, the digits test split) and handed to ``logitcache train`` for data they do not
belong to: exit 2, one line naming each difference, no run folder. A cache's augmentation is
not checked against anything because nothing can ask for another one: ``train`` replays the
cache's own (there is no option to choose it), which the last test proves batch by batch.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from logitcache.store.zarr_store import ZarrStore
from logitcache.teacher import build_teacher
from logitcache.views import ViewSpec

train_module = importlib.import_module("logitcache.train")  # the package re-exports the function
SYNTHETIC = "synthetic:n=64,size=8"
CACHE = dict(dataset=SYNTHETIC, topk=3, chunk_samples=16)  # shared with tests/store


def _train(cache, dataset, out, *extra) -> list:
    return ["train", "--student", "resnet8", "--dataset", dataset, "--cache", cache, "--out", out, "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--quiet", *extra]


# (cache made from, training data, phrases the refusal must hold)
CASES = {
    "fingerprint": (dict(CACHE, dataset="synthetic:n=64,size=8,seed=1"), SYNTHETIC,
                    ["dataset fingerprint: cache has"]),
    "split": (dict(CACHE, split="test"), SYNTHETIC, ["split: cache has test, training data has train"]),
    "classes": (dict(CACHE, dataset="synthetic:n=64,size=8,classes=5"), SYNTHETIC,
                ["number of classes: cache has 5, training data has 10"]),
    "samples": (dict(CACHE, dataset="synthetic:n=48,size=8"), SYNTHETIC,
                ["number of samples: cache has 48, training data has 64"]),
    "digits test split": (dict(split="test"), "digits",
                          ["split: cache has test, training data has train",
                           "number of samples: cache has 359, training data has 1438"]),
    "other dataset": (dict(), SYNTHETIC, ["cache (digits, train) does not match the training data",
                                          "number of samples: cache has 1438, training data has 64"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_cache_of_other_data_is_refused_naming_the_difference(case, make_cache, run_cli, tmp_path):
    fields, dataset, phrases = CASES[case]
    cache = make_cache(**fields)
    out = tmp_path / "run"
    result = run_cli(_train(cache, dataset, out))
    assert result.code == 2, result.out
    assert result.err.startswith("error: ") and result.err.count("\n") == 1 and "Traceback" not in result.err
    for phrase in phrases:
        assert phrase in result.err, result.err
    assert "does not match the training data" in result.err and "dump one for it" in result.err
    assert not out.exists()  # refused before anything is written


def test_the_same_data_under_another_name_is_accepted(make_cache, run_cli, tmp_path):
    """Matching is by content, not by the name typed: option order does not matter."""
    result = run_cli(_train(make_cache(**CACHE), "synthetic:size=8,n=64,seed=0", tmp_path / "run"))
    assert result.code == 0, result.err


def test_the_caches_augmentation_is_the_one_replayed(make_cache, run_cli, tmp_path, monkeypatch):
    """A cache dumped with a non-default augmentation: every batch the student trains on is the
    image whose logits the cache holds. Checked by running the dump's teacher on each training
    batch and comparing with the cached (full fp32) logits it is trained against."""
    cache = make_cache(dataset=SYNTHETIC, encoding="full", dtype="fp32", chunk_samples=16, augmentation="crop:8:3")
    spec = ZarrStore.open(cache).spec
    default = train_module.open_dataset(SYNTHETIC).train_view
    assert ViewSpec.from_json(spec.views.augmentation) != default  # otherwise the test proves nothing
    teacher = build_teacher("resnet8", 10, checkpoint=None, random_init=True, seed=0)
    real, seen = train_module._teacher_view, []

    def checked(reader, online, views, samples, images, target, device, compute):
        cached = real(reader, online, views, samples, images, target, device, compute)
        with torch.inference_mode():
            fresh = teacher(images).float()
        assert torch.allclose(cached.logits, fresh, rtol=1e-5, atol=1e-5)
        seen.extend(zip(views.tolist(), samples.tolist()))
        return cached

    monkeypatch.setattr(train_module, "_teacher_view", checked)
    result = run_cli(_train(cache, SYNTHETIC, tmp_path / "run", "--epochs", "2", "--view-policy", "random"))
    assert result.code == 0, result.err
    assert len(seen) == 2 * 64 and {v for v, _ in seen} == {1, 2}
    assert sorted(i for _, i in seen[:64]) == list(range(64))
    # The same batches under the dataset's default augmentation give other logits: the check bites.
    wrong = np.array([i for _, i in seen[:16]])
    reader = train_module.CacheReader(cache)
    views = np.array([v for v, _ in seen[:16]])
    batch = train_module.ViewBatch(samples=wrong, seeds=np.array([reader.seeds(v)[i] for v, i in zip(views, wrong)],
                                                                 dtype=np.uint32), clean=np.zeros(16, dtype=bool))
    [(_, images)] = list(train_module.augmented_batches(train_module.open_dataset(SYNTHETIC), default, [batch],
                                                         device=torch.device("cpu")))
    with torch.inference_mode():
        assert not torch.allclose(reader.read(views, wrong).logits, teacher(images).float(), atol=1e-3)
    reader.close()


# --------------------------------------------------------------------------- resampler
@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> str:
    """Twelve tiny training images of two sizes in three classes, and three to test on."""
    from image_files import write_png

    root = tmp_path_factory.mktemp("resampler-folder")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("val", 3)):
        for j in range(count):
            (root / split / f"c{j % 3}").mkdir(parents=True, exist_ok=True)
            h, w = (14, 20) if j % 2 else (18, 12)
            write_png(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8),
                      root / split / f"c{j % 3}" / f"{j:02d}.png")
    return f"imagefolder:{root}"


def _folder_dump(dataset: str, out) -> list:
    return ["dump", "--teacher", "resnet8", "--dataset", dataset, "--random-init", "--augment", "resized_crop:8",
            "--views", "1", "--full", "--dtype", "fp32", "--chunk-samples", "8", "--device", "cpu", "--quiet",
            "--out", out]


def _one_line(result) -> str:
    assert result.code == 2 and result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    return result.err


def test_a_cache_resampled_by_another_pillow_is_refused_naming_it(small_folder, run_cli, tmp_path, monkeypatch):
    """Resized crops are Pillow's, whose output may change between releases: a cache made under
    another Pillow is refused by ``train`` (before its run folder exists) and ``verify``'s replay,
    naming both resamplers and the Pillow to install; the same dump command here names the field."""
    cache = tmp_path / "c.zarr"
    with monkeypatch.context() as m:  # the dump ran where Pillow 9.5.0 was installed
        m.setattr("logitcache.views.pillow_resampler", lambda: "pillow-9.5.0-bilinear")
        assert run_cli(_folder_dump(small_folder, cache)).code == 0
    assert ZarrStore.open(cache).spec.views.augmentation["resampler"] == "pillow-9.5.0-bilinear"
    here = ViewSpec(kind="resized_crop", size=8).resampler
    out = tmp_path / "run"
    for command in (_train(cache, small_folder, out, "--method", "kd"),
                    ["verify", cache, "--random-init", "--samples", "4", "--device", "cpu"]):
        line = _one_line(run_cli(command))
        assert f"resampled by pillow-9.5.0-bilinear, this environment has {here}" in line, line
        assert "pip install pillow==9.5.0" in line and "re-dump" in line
    assert not out.exists()
    assert run_cli(["verify", cache, "--samples", "0"]).code == 0  # integrity needs no replay
    line = _one_line(run_cli(_folder_dump(small_folder, cache)))
    assert f"views.augmentation.resampler: 'pillow-9.5.0-bilinear' vs '{here}'" in line and "--overwrite" in line


def test_a_cache_of_the_former_integer_resampler_is_refused_and_overwritten(small_folder, run_cli, tmp_path):
    """A resized-crop store made before the resampler was recorded (its views are the former integer
    filter's): ``train``, ``verify`` and ``info`` refuse it asking for a re-dump, which replaces it."""
    import json

    from logitcache.store.format import ATTR, spec_digest

    cache = tmp_path / "c.zarr"
    assert run_cli(_folder_dump(small_folder, cache)).code == 0
    meta = json.loads((cache / "zarr.json").read_text())
    attrs = meta["attributes"][ATTR]
    del attrs["spec"]["views"]["augmentation"]["resampler"]
    attrs["spec_sha256"] = spec_digest(attrs["spec"])  # as the older logitcache wrote it
    (cache / "zarr.json").write_text(json.dumps(meta))
    out = tmp_path / "run"
    for command in (_train(cache, small_folder, out, "--method", "kd"), ["info", cache],
                    ["verify", cache, "--random-init", "--samples", "4", "--device", "cpu"]):
        line = _one_line(run_cli(command))
        assert "former integer filter" in line and "re-dump it (the same dump command with --overwrite)" in line, line
    assert not out.exists()
    assert run_cli([*_folder_dump(small_folder, cache), "--overwrite"]).code == 0
    assert "resampler" in ZarrStore.open(cache).spec.views.augmentation
    assert run_cli(_train(cache, small_folder, out, "--method", "kd")).code == 0


@pytest.mark.parametrize("stored_aa, given", [
    ("rand-m9-n2-mstd200-mmax10-inc0-p0.5", "rand-m9-mstd200"),  # a Gaussian of width 200 then, uniform now
    ("rand-m15-n2-mstd0-mmax20-inc1-p0.5", "rand-m15-mmax20-inc1"),  # no floor on enhance factors then
])
def test_a_cache_of_a_policy_drawn_before_timms_rules_is_refused(stored_aa, given, small_folder, run_cli, tmp_path):
    """A store whose policy meets a rule logitcache took from timm later (its spec has no
    ``aa_rules``, as the older logitcache wrote it): its teacher saw other views than the policy
    now makes, so ``train``, ``verify`` and ``info`` refuse it asking for a re-dump, which works."""
    import json

    from logitcache.store.format import ATTR, spec_digest

    cache = tmp_path / "c.zarr"
    assert run_cli([*_folder_dump(small_folder, cache), "--views", "2", "--aa", given]).code == 0
    meta = json.loads((cache / "zarr.json").read_text())
    attrs = meta["attributes"][ATTR]
    augmentation = attrs["spec"]["views"]["augmentation"]
    assert augmentation.pop("aa_rules") == 2
    augmentation["aa"] = stored_aa
    attrs["spec_sha256"] = spec_digest(attrs["spec"])
    (cache / "zarr.json").write_text(json.dumps(meta))
    out = tmp_path / "run"
    for command in (_train(cache, small_folder, out, "--method", "kd"), ["info", cache],
                    ["verify", cache, "--random-init", "--samples", "4", "--device", "cpu"]):
        line = _one_line(run_cli(command))
        assert f"--aa {stored_aa} was made before logitcache drew it as timm does" in line, line
        assert "re-dump it (the same dump command with --overwrite)" in line
    assert not out.exists()
    assert run_cli([*_folder_dump(small_folder, cache), "--views", "2", "--aa", given, "--overwrite"]).code == 0
    assert ZarrStore.open(cache).spec.views.augmentation["aa_rules"] == 2
    assert run_cli(_train(cache, small_folder, out, "--method", "kd")).code == 0


def test_policies_whose_meaning_never_changed_record_no_rules_version():
    """So that their stores keep their spec and identity."""
    for aa in ("rand-m9-mstd0.5-inc1", "rand-m15-mmax20", "rand-m9-mstd100-inc1", "trivial"):
        assert "aa_rules" not in ViewSpec(kind="crop", size=8, padding=1, aa=aa).to_json()
