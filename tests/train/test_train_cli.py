"""``logitcache train``, ``eval`` and ``methods`` through the command line (in this process):
teacher-less runs, the cache home, TOML configs, hyper-parameters and presets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from logitcache.cache_home import store_name
from logitcache.datasets import open_dataset
from logitcache.dump import DumpConfig, dump
from logitcache.evaluate import evaluate_model
from logitcache.methods import get_method, list_methods, resolve_hparams
from logitcache.models import create_model, load_checkpoint
from logitcache.store.reader import CacheReader
from train_helpers import read_json, read_metrics

SYNTHETIC = "synthetic:n=64,size=8"
BASE = ["--student", "resnet8", "--dataset", SYNTHETIC, "--epochs", "1", "--device", "cpu", "--workers", "0",
        "--quiet"]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _config(out: Path) -> dict:
    return read_json(out / "config.json")


# --------------------------------------------------------------------------- teacher-less runs and eval
def test_ce_trains_without_a_teacher_and_eval_reads_its_checkpoint(tmp_path, run_cli):
    out = tmp_path / "ce"
    done = run_cli(["train", "--method", "ce", "--student", "resnet8", "--dataset", "digits", "--epochs", "2",
                    "--device", "cpu", "--quiet", "--out", out])
    assert done.code == 0, done.err
    assert f"run saved in {out}" in done.out and "teacher forwards saved 0" in done.out
    # The resolved settings, then one line per epoch, kept in logs even with --quiet.
    assert done.out.startswith("settings:\n") and "\nepoch 1/2  loss " in done.out
    for record in read_metrics(out):
        assert (f"epoch {record['epoch']}/2  loss {record['train_loss']:.3f} (ce {record['train_ce']:.3f})  "
                f"train {record['train_acc']:.2f}%  test {record['test_top1']:.2f}%") in done.out
    summary = read_json(out / "summary.json")
    assert summary["teacher_forwards_saved"] == summary["teacher_forwards_run"] == 0

    shown = run_cli(["eval", "--model", "resnet8", "--checkpoint", out / "best.pt", "--dataset", "digits",
                     "--device", "cpu"])
    assert shown.code == 0, shown.err
    m = re.fullmatch(r"resnet8 on digits test: 359 images, 10 classes\n"
                     r"top-1 ([\d.]+)%  top-5 ([\d.]+)%  NLL ([\d.]+)  ECE ([\d.]+)\n", shown.out)
    assert m, shown.out
    top1, top5, nll, ece = map(float, m.groups())
    # The checkpoint is the best epoch's model: the run measured the same accuracy on the same images.
    assert top1 == pytest.approx(summary["best_acc"], abs=0.005)
    model = create_model("resnet8", num_classes=10)
    load_checkpoint(model, out / "best.pt")
    expected = evaluate_model(model, open_dataset("digits", "test"), device=torch.device("cpu"))
    assert (top1, top5, nll, ece) == pytest.approx(
        (expected["top1"], expected["top5"], expected["nll"], expected["ece"]), abs=0.005)
    assert top1 <= top5 <= 100 and nll > 0 and 0 <= ece <= 1

    # Without --model, the run folder's config.json names it.
    again = run_cli(["eval", "--checkpoint", out / "best.pt", "--dataset", "digits", "--device", "cpu"])
    assert again.code == 0 and again.out == shown.out, again.err


def test_eval_without_model_outside_a_run_folder_names_the_fix(tmp_path, run_cli):
    out = tmp_path / "ce"
    assert run_cli(["train", "--method", "ce", *BASE, "--out", out]).code == 0
    loose = tmp_path / "loose.pt"
    loose.write_bytes((out / "best.pt").read_bytes())
    refused = run_cli(["eval", "--checkpoint", loose, "--dataset", SYNTHETIC, "--device", "cpu"])
    assert refused.code == 2
    assert "is not in a `logitcache train` run folder" in _one_error_line(refused.err)
    assert "pass --model NAME" in refused.err


def test_eval_of_a_checkpoint_for_another_model_is_refused(tmp_path, run_cli):
    out = tmp_path / "ce"
    assert run_cli(["train", "--method", "ce", *BASE, "--out", out]).code == 0
    refused = run_cli(["eval", "--model", "resnet20", "--checkpoint", out / "best.pt", "--dataset", SYNTHETIC,
                       "--device", "cpu"])
    assert refused.code == 2
    line = _one_error_line(refused.err)
    assert "does not fit" in line and "pass the model name the checkpoint was trained with" in line


def test_methods_lists_every_method_with_its_defaults(run_cli):
    shown = run_cli(["methods"])
    assert shown.code == 0, shown.err
    blocks = re.split(r"\n(?=\S)", shown.out.strip())
    assert [b.split()[0] for b in blocks] == list_methods()
    for block, name in zip(blocks, list_methods()):
        info = get_method(name)
        assert info.summary in block
        for key, value in info.defaults().items():
            assert f"{key}={value}" in block, (name, key)
        assert ("presets:" in block) == bool(info.presets)
        verdict = "refused" if info.refusal_on_tokens() else "yes"
        assert f"on tokens: {verdict} — {info.tokens.reason}" in block, name


@pytest.mark.parametrize("name", list_methods())
def test_methods_name_shows_every_preset_in_full(run_cli, name):
    shown = run_cli(["methods", name])
    assert shown.code == 0, shown.err
    info = get_method(name)
    for key, value in info.defaults().items():
        assert f"{key}={value}" in shown.out
    for preset, values in info.presets.items():
        line = next(line for line in shown.out.splitlines() if line.strip().startswith(f"preset {preset}:"))
        assert all(f"{k}={v}" in line for k, v in values.items()), line


def test_methods_with_an_unknown_name_suggests_close_ones(run_cli):
    refused = run_cli(["methods", "dkdd"])
    assert refused.code == 2 and "dkd" in _one_error_line(refused.err)


# --------------------------------------------------------------------------- the cache home
def test_teacher_method_without_cache_lists_near_misses(digits_cache, tmp_path, monkeypatch, run_cli, copy_store):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LOGITCACHE_HOME", str(home))
    out = tmp_path / "run"

    refused = run_cli(["train", "--method", "kd", *BASE, "--out", out])
    assert refused.code == 2
    assert "holds no caches" in _one_error_line(refused.err) and str(home) in refused.err

    digits = copy_store(digits_cache, home / store_name(CacheReader(digits_cache).spec))
    refused = run_cli(["train", "--method", "kd", *BASE, "--out", out])
    line = _one_error_line(refused.err)
    assert "Near misses" in line and digits.name in line and "1438 samples × 10 classes, not 64 × 10" in line
    assert "logitcache dump" in line and "--cache" in line
    assert not out.exists()


def test_teacher_method_without_cache_finds_the_matching_one(synthetic_cache, digits_cache, tmp_path, monkeypatch,
                                                               run_cli, copy_store):
    home = tmp_path / "home"
    monkeypatch.setenv("LOGITCACHE_HOME", str(home))
    dumped = dump(DumpConfig(teacher="resnet8", dataset=SYNTHETIC, random_init=True, views=2, topk=5,
                             chunk_samples=16, device="cpu", progress=False))  # no out: filed in the home
    assert Path(dumped.location).parent == home
    copy_store(digits_cache, home / store_name(CacheReader(digits_cache).spec))  # not a match

    out = tmp_path / "run"
    done = run_cli(["train", "--method", "kd", *BASE, "--out", out])
    assert done.code == 0, done.err
    assert f"using cache {dumped.location}" in done.out
    assert _config(out)["cache"]["location"] == dumped.location
    assert read_json(out / "summary.json")["teacher_forwards_saved"] == 64

    # --views cannot apply to a cache that is found rather than given either.
    refused = run_cli(["train", "--method", "kd", *BASE, "--views", "3", "--out", tmp_path / "views"])
    assert refused.code == 2 and "--views is taken from the cache" in _one_error_line(refused.err)
    assert not (tmp_path / "views").exists()

    # Asking for another teacher: the found cache becomes a near miss, and says why.
    refused = run_cli(["train", "--method", "kd", *BASE, "--teacher", "resnet20", "--out", tmp_path / "r20"])
    assert refused.code == 2
    assert f"{Path(dumped.location).name}: teacher resnet8, not resnet20" in _one_error_line(refused.err)


# --------------------------------------------------------------------------- TOML configs
def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_toml_config_sets_options_and_the_command_line_wins(synthetic_cache, tmp_path, run_cli):
    config = _toml(tmp_path / "run.toml", f"""
student = "resnet8"
dataset = "{SYNTHETIC}"
method = "kd"
cache = "{synthetic_cache}"
epochs = 3
lr = 0.2
batch-size = 32
view_policy = "random"
set = ["temperature=2", "ce_weight=0.5"]
device = "cpu"
quiet = true
""")
    out = tmp_path / "run"
    done = run_cli(["train", "--config", config, "--out", out, "--epochs", "1", "--set", "kd_weight=0.7"])
    assert done.code == 0, done.err
    saved = _config(out)
    c = saved["config"]
    assert c["epochs"] == 1  # the command line wins
    assert (c["lr"], c["batch_size"], c["view_policy"], c["method"], c["cache"]) == (
        0.2, 32, "random", "kd", str(synthetic_cache))
    assert saved["hparams"] == {**get_method("kd").defaults(), "temperature": 2.0, "ce_weight": 0.5,
                                "kd_weight": 0.7}, "--set merges with the TOML list key by key"
    assert [m["lr"] for m in read_metrics(out)] == [0.2]

    out2 = tmp_path / "run2"
    done = run_cli(["train", "--config", config, "--out", out2, "--epochs", "1"])
    assert done.code == 0, done.err
    assert _config(out2)["hparams"] == {**get_method("kd").defaults(), "temperature": 2.0, "ce_weight": 0.5}


def test_toml_config_with_unknown_keys_is_refused_naming_valid_ones(tmp_path, run_cli):
    config = _toml(tmp_path / "run.toml", 'student = "resnet8"\nepoch = 3\nset_ = ["beta=2"]\n')
    refused = run_cli(["train", "--config", config, "--dataset", SYNTHETIC, "--out", tmp_path / "run"])
    assert refused.code == 2
    err = " ".join(refused.err.split())
    assert "unknown key(s) epoch, set_" in err
    valid = err.split("valid keys:")[1]
    for key in ("epochs", "set", "batch_size", "student", "cache", "view_policy"):
        assert re.search(rf"\b{key}\b", valid), key
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- hyper-parameters
def test_set_reaches_the_method(synthetic_cache, tmp_path, run_cli):
    out = tmp_path / "run"
    done = run_cli(["train", "--method", "dkd", "--cache", synthetic_cache, *BASE, "--set", "beta=2",
                    "--set", "warmup=1", "--out", out])
    assert done.code == 0, done.err
    assert _config(out)["hparams"] == {**get_method("dkd").defaults(), "beta": 2.0, "warmup": 1}
    assert "beta=2.0" in done.out


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "dkd", "--set", "betta=2"], "unknown hyper-parameter 'betta' for dkd: valid are"),
    (["--method", "dkd", "--set", "beta=two"], "'beta' of dkd expects a finite float"),
    (["--method", "dkd", "--set", "beta"], "use KEY=VALUE"),
    (["--method", "lud", "--logit-stand"], "not defined for lud; drop --logit-stand"),
    (["--method", "dkd", "--preset", "resnet8-resnet8"], "unknown preset 'resnet8-resnet8' for dkd"),
    (["--method", "kd", "--view-policy", "shuffle"], "unknown --view-policy 'shuffle'"),
    (["--method", "kd", "--views", "3"], "--views is taken from the cache"),
    (["--method", "kd", "--teacher", "resnet20"], "the cache holds logits of resnet8"),
    (["--method", "kd", "--milestones", "1;2"], "cannot read --milestones"),
])
def test_bad_settings_are_refused_before_anything_is_written(synthetic_cache, tmp_path, run_cli, args, message):
    out = tmp_path / "run"
    refused = run_cli(["train", *args, "--cache", synthetic_cache, *BASE, "--out", out])
    assert refused.code == 2
    assert message in _one_error_line(refused.err)
    assert not out.exists()


@pytest.mark.parametrize(("teacher", "student", "preset", "expected"), [
    ("resnet32x4", "resnet8x4", "auto", get_method("dkd").presets["resnet32x4-resnet8x4"]),
    ("resnet56", "resnet20", "auto", {"beta": 2.0}),  # differs from the default β = 8
    ("resnet56", "resnet20", "none", {}),
])
def test_preset_auto_picks_the_pair_preset_of_the_caches_teacher(make_cache, tmp_path, run_cli, teacher, student,
                                                                 preset, expected):
    cache = make_cache(teacher=teacher, dataset=f"{SYNTHETIC},classes=10", chunk_samples=32)
    out = tmp_path / "run"
    done = run_cli(["train", "--method", "dkd", "--cache", cache, *BASE, "--student", student, "--preset", preset,
                    "--out", out])
    assert done.code == 0, done.err
    saved = _config(out)
    assert saved["teacher"]["name"] == teacher and saved["teacher"]["logits"] == "cache"
    # The default warm-up of 20 epochs is fitted to this 1-epoch run.
    assert saved["hparams"] == {**get_method("dkd").defaults(), **expected, "warmup": 1}
    if preset == "auto":
        assert saved["hparams"] == {**resolve_hparams("dkd", preset=f"{teacher}-{student}"), "warmup": 1}
    # Which preset was applied is said before the first epoch and recorded, with every value's origin.
    applied = f"{teacher}-{student}" if preset == "auto" else None
    assert saved["preset"] == applied
    method_line = next(line for line in done.out.splitlines() if line.startswith("  method "))
    assert method_line == f"  method     dkd, preset {applied or 'none'}" + (
        f" (auto: the published setting for {teacher} -> {student})" if applied else "")
    sources = {**dict.fromkeys(saved["hparams"], "default"), **dict.fromkeys(expected, f"preset {applied}"),
               "warmup": "default 20 of 240 epochs, scaled to the run"}
    assert saved["hparam_sources"] == sources
    hparams_line = next(line for line in done.out.splitlines() if line.startswith("  hparams "))
    for key, value in saved["hparams"].items():
        assert f"{key}={value}" + ("" if sources[key] == "default" else f" [{sources[key]}]") in hparams_line


def test_logit_stand_applies_the_published_pair_setting(make_cache, tmp_path, run_cli):
    cache = make_cache(teacher="resnet56", dataset=f"{SYNTHETIC},classes=10", chunk_samples=32)
    out = tmp_path / "run"
    done = run_cli(["train", "--method", "kd", "--cache", cache, *BASE, "--student", "resnet20", "--logit-stand",
                    "--set", "temperature=3", "--out", out])
    assert done.code == 0, done.err
    hparams = _config(out)["hparams"]
    published = get_method("kd").presets["ls:resnet56-resnet20"]
    assert hparams == {**get_method("kd").defaults(), **published, "temperature": 3.0}
    assert hparams["logit_stand"] is True


def test_online_teacher_needs_a_teacher_name(tmp_path, run_cli):
    refused = run_cli(["train", "--method", "kd", "--teacher-online", "--random-init-teacher", *BASE,
                       "--out", tmp_path / "run"])
    assert refused.code == 2 and "--teacher NAME" in _one_error_line(refused.err)


def test_online_teacher_without_a_cache_trains(tmp_path, run_cli):
    out = tmp_path / "run"
    done = run_cli(["train", "--method", "dkd", "--teacher-online", "--teacher", "resnet8", "--random-init-teacher",
                    *BASE, "--out", out])
    assert done.code == 0, done.err
    summary = read_json(out / "summary.json")
    assert (summary["teacher_forwards_saved"], summary["teacher_forwards_run"]) == (0, 64)
    assert _config(out)["cache"] is None
