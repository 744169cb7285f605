"""A timm teacher from a safetensors file, end to end: dump, verify, train; its identity; bad inputs.

The teacher is ``timm:test_resnet`` (0.37 M parameters) with seeded weights saved as
``.safetensors``, on 96 synthetic 8x8 images. Its pretrained config normalises with mean 0.5,
std 0.5 where the dataset's own std is 0.25, so a view fed with the wrong normalisation shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.models import create_model
from logitcache.store.reader import CacheReader
from logitcache.teacher import Renormalize
from logitcache.views import Normalize
from image_files import write_png

SYNTHETIC = "synthetic:n=96,size=8"
TEACHER = "timm:test_resnet"
DUMP = ["dump", "--dataset", SYNTHETIC, "--views", "2", "--topk", "3", "--chunk-samples", "32", "--batch-size", "32",
        "--device", "cpu", "--workers", "0", "--quiet"]
TRAIN = ["train", "--method", "kd", "--dataset", SYNTHETIC, "--epochs", "1", "--batch-size", "48", "--device", "cpu",
         "--workers", "0", "--quiet"]


def _one_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


def _weights(path: Path, name: str = TEACHER, seed: int = 0, num_classes: int = 10) -> Path:
    torch.manual_seed(seed)
    save_file(create_model(name, num_classes=num_classes).state_dict(), path)
    return path


class Setup:
    """The teacher's checkpoint, another one of the same model, and the cache dumped from the first."""

    def __init__(self, root: Path) -> None:
        self.ckpt = _weights(root / "teacher.safetensors")
        self.other_seed = _weights(root / "other.safetensors", seed=1)
        self.cache = root / "c.zarr"
        self.dump = dump(DumpConfig(teacher=TEACHER, checkpoint=str(self.ckpt), dataset=SYNTHETIC, out=str(self.cache),
                                    views=2, topk=3, chunk_samples=32, batch_size=32, device="cpu", workers=0,
                                    progress=False))
        assert self.dump.complete


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    return Setup(tmp_path_factory.mktemp("timm"))


def test_dump_feeds_the_teacher_its_own_normalisation_and_records_it(setup):
    note = next(n for n in setup.dump.notes if n.startswith("teacher input:"))
    assert "8x8, the dataset's own" in note and "mean (0.5, 0.5, 0.5) std (0.5, 0.5, 0.5)" in note
    reader = CacheReader(setup.cache)
    try:
        teacher = reader.spec.teacher
        assert teacher.name == TEACHER and teacher.input["mean"] == [0.5] * 3 and teacher.input["std"] == [0.5] * 3
        stored = reader.read(views=0, samples=np.arange(4)).logits
    finally:
        reader.close()
    model = create_model(TEACHER, num_classes=10, checkpoint=setup.ckpt).eval()
    images = open_dataset(SYNTHETIC).images(np.arange(4))
    with torch.no_grad():
        own = model(Normalize((0.5,) * 3, (0.5,) * 3)(images))
        dataset_s = model(open_dataset(SYNTHETIC).normalize(images))
    top = own.topk(3).indices
    assert torch.allclose(stored.gather(1, top), own.gather(1, top), atol=0.05)
    assert not torch.allclose(own, dataset_s, atol=0.05)  # the two normalisations do differ here


def test_verify_replays_with_the_recorded_input_and_info_shows_it(setup, run_cli):
    result = run_cli(["verify", setup.cache, "--checkpoint", setup.ckpt, "--device", "cpu"])
    assert result.code == 0 and "OK" in result.out, result
    info = run_cli(["info", setup.cache])
    assert info.code == 0 and "teacher in   8x8, the dataset's own" in info.out, info


def test_a_timm_student_trains_from_the_cache_and_records_its_input(setup, tmp_path, run_cli):
    out = tmp_path / "run"
    result = run_cli([*TRAIN, "--cache", setup.cache, "--student", "timm:test_efficientnet", "--out", out])
    assert result.code == 0, result
    assert "input      student timm:test_efficientnet" in result.out
    record = json.loads((out / "config.json").read_text())
    assert record["student_input"]["mean"] == [0.485, 0.456, 0.406]
    evaluated = run_cli(["eval", "--checkpoint", out / "best.pt", "--dataset", SYNTHETIC, "--device", "cpu"])
    assert evaluated.code == 0 and "timm:test_efficientnet" in evaluated.out, evaluated


def test_an_online_timm_teacher_sees_its_own_normalisation():
    torch.manual_seed(0)
    model = create_model(TEACHER, num_classes=10).eval()
    images = open_dataset(SYNTHETIC).images(np.arange(8))
    student_norm, teacher_norm = Normalize((0.1, 0.2, 0.3), (0.2, 0.3, 0.4)), Normalize((0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        wrapped = Renormalize(model, student_norm, teacher_norm)(student_norm(images))
        direct = model(teacher_norm(images))
    assert torch.allclose(wrapped, direct, atol=1e-4)


def test_an_online_timm_teacher_trains_the_student_its_cache_trains(setup, tmp_path, run_cli):
    # resnet8 sees the dataset's normalisation (std 0.25), the online teacher its own (std 0.5), as the dump fed it.
    full = tmp_path / "full.zarr"
    assert run_cli([*DUMP[:3], "--teacher", TEACHER, "--checkpoint", setup.ckpt, "--views", "1", "--full", "--dtype",
                    "fp32", "--device", "cpu", "--workers", "0", "--quiet", "--out", full]).code == 0
    cached = run_cli([*TRAIN, "--cache", full, "--student", "resnet8", "--out", tmp_path / "cached"])
    online = run_cli([*TRAIN, "--cache", full, "--teacher-online", "--teacher", TEACHER, "--checkpoint", setup.ckpt,
                      "--student", "resnet8", "--out", tmp_path / "online"])
    assert cached.code == 0 and online.code == 0 and "input      teacher timm:test_resnet" in online.out, online
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("cached", "online"))
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) < 1e-4


# --------------------------------------------------------------------------- identity
def test_another_checkpoint_of_the_same_timm_model_is_refused(setup, tmp_path, run_cli):
    line = _one_line(run_cli([*TRAIN, "--cache", setup.cache, "--checkpoint", setup.other_seed,
                              "--student", "resnet8", "--out", tmp_path / "run"]))
    assert "holds teacher weights" in line and not (tmp_path / "run").exists()


def test_another_timm_model_is_refused_for_the_cache(setup, tmp_path, run_cli):
    line = _one_line(run_cli([*TRAIN, "--cache", setup.cache, "--teacher", "timm:test_resnet.r160_in1k",
                              "--student", "resnet8", "--out", tmp_path / "run"]))
    assert "cache holds logits of timm:test_resnet" in line
    other = _weights(tmp_path / "eff.safetensors", "timm:test_efficientnet")
    before = sorted(p.name for p in setup.cache.iterdir())
    line = _one_line(run_cli([*DUMP, "--teacher", "timm:test_efficientnet", "--checkpoint", other, "--out", setup.cache]))
    assert "other settings" in line and "teacher.input" in line
    assert sorted(p.name for p in setup.cache.iterdir()) == before


# --------------------------------------------------------------------------- bad inputs
def _refused(run_cli, tmp_path, teacher: str, *extra) -> str:
    out = tmp_path / "c.zarr"
    line = _one_line(run_cli([*DUMP, "--teacher", teacher, *extra, "--out", out]))
    assert not out.exists(), "a refused dump left its --out behind"
    return line


def test_a_timm_name_that_does_not_exist_suggests_close_ones(tmp_path, run_cli):
    assert "did you mean timm:test_resnet" in _refused(run_cli, tmp_path, "timm:test_resnt", "--random-init")


def test_timm_not_installed_names_the_extra(tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert "pip install 'logitcache[timm]'" in _refused(run_cli, tmp_path, TEACHER, "--random-init")


def test_safetensors_of_another_architecture_is_refused_naming_keys(tmp_path, run_cli):
    other = _weights(tmp_path / "eff.safetensors", "timm:test_efficientnet")
    line = _refused(run_cli, tmp_path, TEACHER, "--checkpoint", other)
    assert "missing keys" in line and "unexpected keys" in line


def test_truncated_safetensors_is_refused(setup, tmp_path, run_cli):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(setup.ckpt.read_bytes()[:-500])
    assert "not a readable safetensors file" in _refused(run_cli, tmp_path, TEACHER, "--checkpoint", cut)


def test_a_class_count_other_than_the_datasets_is_refused(tmp_path, run_cli):
    five = _weights(tmp_path / "five.safetensors", num_classes=5)
    assert "has 5 classes but the model was built for 10" in _refused(run_cli, tmp_path, TEACHER, "--checkpoint", five)


def test_a_model_that_cannot_take_the_image_size_is_refused(tmp_path, run_cli):
    line = _refused(run_cli, tmp_path, "timm:test_vit", "--random-init")
    assert "teacher timm:test_vit cannot run on this dataset's 8x8 views" in line
    out = tmp_path / "run"
    line = _one_line(run_cli([*TRAIN, "--method", "ce", "--student", "timm:test_vit", "--out", out]))
    assert "student timm:test_vit cannot run on this dataset's 8x8 views" in line and not out.exists()


# --------------------------------------------------------------------------- image folders, listing
def test_an_image_folder_takes_the_models_input_size_and_crop(tmp_path, run_cli):
    # A ViT with a fixed 160x160 patch grid, on 20x24 images: it must see the views, never the files.
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / "f" / split / cls).mkdir(parents=True)
            for i in range(count):
                write_png(torch.randint(0, 256, (3, 20, 24), generator=gen, dtype=torch.uint8),
                          tmp_path / "f" / split / cls / f"{i}.png")
    vit = "timm:test_vit"
    teacher = _weights(tmp_path / "t2.safetensors", vit, num_classes=2)
    out, folder = tmp_path / "folder.zarr", f"imagefolder:{tmp_path / 'f'}"
    result = run_cli(["dump", "--teacher", vit, "--checkpoint", teacher, "--dataset", folder,
                      "--views", "1", "--device", "cpu", "--workers", "0", "--quiet", "--out", out])
    assert result.code == 0, result
    assert "teacher input: 160x160 (clean view: resize 168, centre crop)" in result.out
    assert "resampled bilinear (the config asks for bicubic; resized crops here are bilinear)" in result.out
    trained = run_cli(["train", "--method", "kd", "--cache", out, "--student", vit, "--dataset", folder, "--epochs", "1",
                       "--batch-size", "6", "--device", "cpu", "--workers", "0", "--quiet", "--out", tmp_path / "run"])
    assert trained.code == 0, trained
    reader = CacheReader(out)
    try:
        aug = reader.spec.views.augmentation
        assert (aug["size"], aug["eval_resize"]) == (160, 168)
        assert reader.store.provenance.teacher_test_accuracy is not None
    finally:
        reader.close()


def test_models_lists_timm_offline(run_cli):
    result = run_cli(["models", "--timm", "test_res*"])
    assert result.code == 0 and "timm:test_resnet  input 160x160, mean (0.5, 0.5, 0.5), bilinear" in result.out
    tags = run_cli(["models", "--timm", "test_resnet.*"])
    assert tags.code == 0 and "timm:test_resnet.r160_in1k" in tags.out
    assert "no timm model matches" in _one_line(run_cli(["models", "--timm", "zzz*"]))


# --------------------------------------------------------------------------- --mean / --std
def test_mean_and_std_override_the_teachers_normalisation_and_verify_replays_them(tmp_path, run_cli):
    zoo = ["--teacher", "resnet8", "--random-init", "--views", "1", "--chunk-samples", "96"]
    out = tmp_path / "c.zarr"
    result = run_cli([*DUMP[:3], *zoo, "--device", "cpu", "--workers", "0", "--quiet", "--out", out,
                      "--mean", "0.4", "--std", "0.2,0.3,0.4"])
    assert result.code == 0 and "normalisation from --mean and --std" in result.out, result
    reader = CacheReader(out)
    try:
        assert (reader.spec.teacher.input["mean"], reader.spec.teacher.input["std"]) == ([0.4] * 3, [0.2, 0.3, 0.4])
    finally:
        reader.close()
    assert run_cli(["verify", out, "--random-init", "--device", "cpu"]).code == 0
    # Without them a zoo teacher records no input: the spec (and the id) of such stores is what it was.
    plain = tmp_path / "plain.zarr"
    assert run_cli([*DUMP[:3], *zoo, "--device", "cpu", "--workers", "0", "--quiet", "--out", plain]).code == 0
    spec = json.loads((plain / "zarr.json").read_text())["attributes"]["logitcache"]["spec"]
    assert "input" not in spec["teacher"]


def test_a_students_mean_is_recorded_and_eval_feeds_it_the_same(tmp_path, run_cli):
    out = tmp_path / "run"
    result = run_cli([*TRAIN, "--method", "ce", "--student", TEACHER, "--mean", "0.1", "--out", out])
    assert result.code == 0, result
    record = json.loads((out / "config.json").read_text())
    assert record["student_input"]["mean"] == [0.1] * 3
    summary = json.loads((out / "summary.json").read_text())
    evaluated = run_cli(["eval", "--checkpoint", out / "best.pt", "--dataset", SYNTHETIC, "--device", "cpu"])
    assert evaluated.code == 0 and f"top-1 {summary['last_acc']:.2f}%" in evaluated.out, (evaluated, summary)


@pytest.mark.parametrize("option, value, expected", [
    ("--std", "0", "--std values must be > 0"),
    ("--mean", "1,2", "--mean takes one number or three"),
    ("--mean", "a", "cannot read --mean 'a'"),
    ("--std", "nan", "--std takes one number or three"),
])
def test_bad_mean_or_std_is_one_line_and_writes_nothing(tmp_path, run_cli, option, value, expected):
    assert expected in _refused(run_cli, tmp_path, TEACHER, "--random-init", option, value)
    out = tmp_path / "run"
    line = _one_line(run_cli([*TRAIN, "--method", "ce", "--student", "resnet8", option, value, "--out", out]))
    assert expected in line and not out.exists()
