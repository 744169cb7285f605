"""``logitcache eval`` says what it measured (model, dataset, split, images), checks the data
against the run's config.json, and leaves out top-5 where it means nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from logitcache.datasets import open_dataset
from logitcache.train import TrainConfig, train
from train_helpers import read_json, read_metrics

SYNTHETIC = "synthetic:n=64,size=8"


def _train(run_cli, out: Path, dataset: str = SYNTHETIC) -> Path:
    done = run_cli(["train", "--method", "ce", "--student", "resnet8", "--dataset", dataset, "--epochs", "1",
                    "--device", "cpu", "--quiet", "--out", out])
    assert done.code == 0, done.err
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One run for the module's evaluations (the fixture run_cli is per test)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    train(TrainConfig(method="ce", student="resnet8", dataset=SYNTHETIC, epochs=1, device="cpu", workers=0,
                      progress=False, out=str(out)))
    return out


def test_config_json_records_the_data_of_both_splits(run):
    data = read_json(run / "config.json")["data"]
    for split in ("train", "test"):
        assert data[split] == open_dataset(SYNTHETIC, split).describe()


def test_eval_names_model_dataset_split_and_images(run, run_cli):
    shown = run_cli(["eval", "--checkpoint", run / "best.pt", "--dataset", SYNTHETIC, "--split", "train",
                     "--device", "cpu"])
    assert shown.code == 0 and shown.err == "", shown.err
    assert shown.out.splitlines()[0] == f"resnet8 on {SYNTHETIC} train: 64 images, 10 classes"
    assert shown.out.splitlines()[1].startswith("top-1 ") and "top-5 " in shown.out


def test_eval_on_other_images_warns_naming_both(run, run_cli):
    """digits has the classes and image size of the run's data, so the model runs: the numbers
    are then about other data, which is said on stderr."""
    shown = run_cli(["eval", "--checkpoint", run / "best.pt", "--dataset", "digits", "--device", "cpu"])
    assert shown.code == 0, shown.err
    (warning,) = shown.err.strip().splitlines()
    test = open_dataset(SYNTHETIC, "test")
    assert warning.startswith("warning: digits test (359 images, fingerprint ")
    assert f"is not the {SYNTHETIC} test split the run in {run} recorded (64 images, fingerprint " \
           f"{test.fingerprint[:12]})" in warning
    assert shown.out.startswith("resnet8 on digits test: 359 images")


def test_eval_with_other_classes_is_refused_naming_the_runs_dataset(run, run_cli):
    refused = run_cli(["eval", "--checkpoint", run / "best.pt", "--dataset", f"{SYNTHETIC},classes=5",
                       "--device", "cpu"])
    assert refused.code == 2 and refused.out == ""
    (line,) = refused.err.strip().splitlines()
    assert line == (f"error: {SYNTHETIC},classes=5 has 5 classes but the run in {run} trained on {SYNTHETIC} "
                    f"with 10: evaluate on the run's dataset (--dataset {SYNTHETIC})")


def test_top5_is_left_out_below_six_classes(tmp_path, run_cli):
    five = f"{SYNTHETIC},classes=5"
    out = _train(run_cli, tmp_path / "five", dataset=five)
    assert all("test_top5" not in m for m in read_metrics(out))
    shown = run_cli(["eval", "--checkpoint", out / "best.pt", "--dataset", five, "--device", "cpu"])
    assert shown.code == 0, shown.err
    assert "top-5" not in shown.out and "top-1 " in shown.out.splitlines()[1]
