"""Stage one through the command line: dump, info, verify, errors, kill and resume.

The end-to-end and kill/resume tests run the installed ``logitcache`` console script in a
subprocess, as a user would; the rest call the CLI's ``main`` in this process (same parsing,
same error handler, faster).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from logitcache._utils import plural
from logitcache.models import create_model
from logitcache.store.zarr_store import DONE, ZarrStore

SYNTHETIC = ["--teacher", "resnet8", "--dataset", "synthetic:n=64,size=8", "--random-init", "--views", "2",
             "--topk", "3", "--chunk-samples", "16", "--device", "cpu", "--quiet"]


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    store = ZarrStore.open(path)
    return {name: store.read(name) for name in store.array_names()}


def _assert_same_store(a: Path, b: Path) -> None:
    x, y = _store_arrays(a), _store_arrays(b)
    assert list(x) == list(y) == ZarrStore.open(a).array_names()
    for name in x:
        assert x[name].dtype == y[name].dtype and x[name].shape == y[name].shape, name
        assert np.array_equal(x[name], y[name]), f"array {name} differs"


def _says_complete(out: str) -> bool:
    """The dump's last line reports a complete store (and not "not complete yet")."""
    last = out.strip().splitlines()[-1]
    return last.startswith("complete")


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- end to end
def test_dump_info_verify_end_to_end(run_console, run_cli, digits_args, tmp_path):
    out = tmp_path / "digits.zarr"
    dumped = run_console(["dump", *digits_args, "--out", out])
    assert dumped.code == 0, dumped.err
    assert "wrote 18 blocks (4,314 sample-views)" in dumped.out
    assert str(out) in dumped.out and _says_complete(dumped.out) and "(teacher test accuracy" in dumped.out
    assert "Traceback" not in dumped.err

    info = run_cli(["info", out, "--quiet"])  # the console script is proven by the dump above
    assert info.code == 0, info.err
    text = info.out
    for expected in (
        "format v3", "status       complete", "teacher      resnet8", "test accuracy",
        "dataset      digits [train]  1,438 samples, 10 classes",
        "views        2 augmented + clean view 0, seed 0, crop(8, pad=1)",
        "encoding     top-5 fp16; chunks of 256 samples",
        "stored as    the top 5 logits as gaps from the top-1 logit in fp16 with their classes; top-1, lse and",
        "on disk", "ratio", "B per sample-view",
        "clean view   teacher top-1", "augmented    teacher top-1", "mis-instruction", "ECE", "[1,438 pairs]",
        "[2,876 pairs]", "rebuilt distribution",
    ):
        assert expected in text, expected

    as_json = run_cli(["info", out, "--json"])
    assert as_json.code == 0, as_json.err
    d = json.loads(as_json.out)
    assert d["compression_ratio"] == pytest.approx(d["raw_bytes"] / d["bytes_on_disk"])
    assert d["bytes_per_pair"] == pytest.approx(d["bytes_on_disk"] / d["pairs"])
    assert d["pairs"] == 3 * 1438 and d["compression_ratio"] > 0
    assert d["spec"]["encoding"] == {"kind": "topk", "dtype": "fp16", "k": 5, "indices": "packed"}
    assert d["spec"]["dataset"]["num_samples"] == 1438 and d["spec"]["format_version"] == 3
    assert d["provenance"]["complete"] is True and d["provenance"]["teacher_test_samples"] == 359
    assert d["clean"]["samples"] == 1438 and d["augmented"]["views"] == [1, 2]
    assert 0 <= d["augmented"]["misinstruction_rate"] <= 1 and d["augmented"]["ece"] >= 0

    verified = run_cli(["verify", out, "--random-init", "--device", "cpu"])
    assert verified.code == 0, verified.err
    assert "replayed 256 (view, sample) pairs" in verified.out and verified.out.strip().endswith("OK")
    chunks = sum(len(ZarrStore.open(out).storage_keys(n)) for n in ZarrStore.open(out).array_names())
    assert f"checked {chunks} chunks" in verified.out


@pytest.mark.parametrize(("dataset", "chosen", "stored"), [
    ("digits", "full fp16", "every logit as its gap from the top logit in fp16, the top logit in fp32"),
    ("synthetic:n=40,size=8,classes=40", "top-10 fp16", "the top 10 logits as gaps"),
])
def test_the_plainest_dump_works_and_says_what_it_chose(dataset, chosen, stored, run_cli, tmp_path):
    # No --topk/--full: every logit up to 32 classes (a top-10 of 10 classes is no top-k), top-10 above.
    out = tmp_path / "home" / "c.zarr"
    dumped = run_cli(["dump", "--teacher", "resnet8", "--dataset", dataset, "--random-init", "--views", "1",
                      "--device", "cpu", "--quiet", "--out", out])
    assert dumped.code == 0, dumped.err
    assert f"encoding: {chosen} (auto for " in dumped.out and "--full or --topk K to choose" in dumped.out
    info = run_cli(["info", out, "--quiet"])
    assert info.code == 0 and f"encoding     {chosen};" in info.out and f"stored as    {stored}" in info.out
    assert "views        1 augmented + clean view 0" in info.out
    listed = run_cli(["ls", "--home", tmp_path / "home"])
    assert listed.code == 0 and f"1 view, {chosen}" in listed.out  # not "1 views"
    verified = run_cli(["verify", out, "--random-init", "--device", "cpu", "--samples", "0"])
    assert verified.code == 0 and "replay skipped (--samples 0)" in verified.out
    assert "max |stored - replayed|" not in verified.out  # no replay error of 0 for a replay that did not run


# --------------------------------------------------------------------------- kill and resume
def test_killed_dump_resumes_to_the_uninterrupted_store(run_cli, start_console, tmp_path):
    args = ["--teacher", "resnet8", "--dataset", "digits", "--random-init", "--views", "6", "--topk", "5",
            "--chunk-samples", "32", "--batch-size", "32", "--device", "cpu", "--quiet"]
    ref = tmp_path / "ref.zarr"
    assert run_cli(["dump", *args, "--out", ref]).code == 0

    out = tmp_path / "killed.zarr"
    command = ["dump", *args, "--out", out]
    proc = start_console(command)
    markers = out / "progress" / "c"
    deadline = time.monotonic() + 120
    try:
        while sum(len(files) for _, _, files in os.walk(markers)) < 30:
            assert proc.poll() is None, "the dump ended before it could be killed"
            assert time.monotonic() < deadline, "no progress markers appeared"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    killed = ZarrStore.open(out)
    state = killed.progress()
    done = int((state == DONE).sum())
    assert not killed.provenance.complete and 0 < done < state.size  # really killed mid-way

    resumed = run_cli(command)
    assert resumed.code == 0, resumed.err
    assert f"resuming: {done} of {state.size} blocks already done" in resumed.out
    assert f"wrote {plural(state.size - done, 'block')} (" in resumed.out and _says_complete(resumed.out)
    _assert_same_store(ref, out)
    assert ZarrStore.open(out).provenance.complete


# --------------------------------------------------------------------------- bad inputs
def _argv(base: list[str], **changes: str | None) -> list[str]:
    """``base`` with options replaced (value), removed (None) or added; flags take ''."""
    argv, i = [], 0
    while i < len(base):
        key = base[i]
        takes_value = i + 1 < len(base) and not base[i + 1].startswith("--")
        name = key[2:].replace("-", "_")
        if name not in changes:
            argv += base[i : i + 1 + takes_value]
        i += 1 + takes_value
    for name, value in changes.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}"] + ([value] if value != "" else [])
    return argv


@pytest.fixture(scope="module")
def wrong_class_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "resnet8_100.pt"
    torch.save(create_model("resnet8", num_classes=100).state_dict(), path)
    return str(path)


BAD_INPUTS = {
    "unknown teacher": (dict(teacher="resnet9"), ["unknown model 'resnet9'", "did you mean", "resnet8"]),
    "unknown dataset": (dict(dataset="digitz"), ["unknown dataset 'digitz'", "did you mean digits"]),
    "k >= classes": (dict(topk="10"), ["top-k needs k < number of classes (10)", "got k=10", "--topk"]),
    "wrong class count": (dict(random_init=None, checkpoint="CKPT"), ["has 100 classes", "built for 10"]),
    "cifar100 without data root": (dict(dataset="cifar100"), ["cifar100 needs --data-root", "cifar-100-python"]),
    "cifar100 data root missing": (dict(dataset="cifar100", data_root="MISSING"), ["cifar100 not found", "does not exist"]),
    "no checkpoint": (dict(random_init=None), ["needs weights", "--checkpoint"]),
    "checkpoint and random init": (dict(checkpoint="CKPT"), ["--checkpoint and --random-init exclude each other"]),
    "zero views": (dict(views="0"), ["at least one augmented view", "--views >= 1", "got 0"]),
    "unknown dtype": (dict(dtype="q4"), ["encoding topk stores fp32, fp16, bf16, q8", "'q4'"]),
    "q8 full": (dict(full="", topk=None, dtype="q8"), ["encoding full stores fp32, fp16, bf16", "'q8'"]),
    "q8 without k": (dict(topk=None, dtype="q8"), ["top-k needs k < number of classes (10)", "got k=10", "--topk"]),
    "full and topk": (dict(full="", topk="3"), ["--full stores every logit and --topk 3 the top 3", "one of them"]),
    "unknown codec": (dict(codec="blosc-foo-5"), ["unknown blosc compressor 'foo'", "zstd"]),
    "bad shard": (dict(shard="3"), ["cannot read --shard '3'", "I/N"]),
    "zero batch size": (dict(batch_size="0"), ["--batch-size and --chunk-samples must be >= 1"]),
    "bad augmentation": (dict(augment="rotate:30"), ["cannot read augmentation 'rotate:30'"]),
    "sample and topk": (dict(sample="8"), ["--sample and --topk exclude each other"]),
    "sample and full": (dict(topk=None, sample="8", full=""), ["--sample and --full exclude each other"]),
    "zero draws": (dict(topk=None, sample="0"), ["--sample needs 1 <= N <= 65535", "got 0"]),
    "too many draws": (dict(topk=None, sample="70000"), ["--sample needs 1 <= N <= 65535", "got 70000"]),
    "zero sample temperature": (dict(topk=None, sample="8", sample_temperature="0"), ["--sample-temperature must be a finite number > 0"]),
    "nan sample temperature": (dict(topk=None, sample="8", sample_temperature="nan"), ["--sample-temperature must be a finite number > 0", "nan"]),
    "temperature without sample": (dict(sample_temperature="2"), ["--sample-temperature only applies to --sample N"]),
    "sample with a dtype": (dict(topk=None, sample="8", dtype="fp16"), ["there is no --dtype fp16", "drop --dtype"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_writes_nothing(run_cli, digits_args, wrong_class_checkpoint, tmp_path, case):
    changes, keywords = BAD_INPUTS[case]
    changes = {k: (wrong_class_checkpoint if v == "CKPT" else str(tmp_path / "none") if v == "MISSING" else v)
               for k, v in changes.items()}
    out = tmp_path / "out.zarr"
    result = run_cli(["dump", *_argv(digits_args, **changes), "--out", out])
    assert result.code == 2, (result.out, result.err)
    line = _one_error_line(result.err)
    for word in keywords:
        assert word in line, f"{word!r} not in {line!r}"
    assert not out.exists()
    assert not (tmp_path / "none").exists()


def test_bad_input_through_the_console_script(run_console, digits_args, tmp_path):
    result = run_console(["dump", *_argv(digits_args, teacher="wrn_40_3"), "--out", tmp_path / "out.zarr"])
    assert result.code == 2
    assert "did you mean wrn_40_2" in _one_error_line(result.err)
    assert not (tmp_path / "out.zarr").exists()


def test_store_with_other_settings_is_refused_then_replaced(run_cli, digits_cache, copy_store, digits_args, snapshot,
                                                            tmp_path):
    out = copy_store(digits_cache, tmp_path / "c.zarr")
    assert run_cli(["dump", *digits_args, "--out", out]).code == 0  # same settings: nothing to do
    before = snapshot(out)
    refused = run_cli(["dump", *_argv(digits_args, views="3", chunk_samples="128"), "--out", out])
    assert refused.code == 2
    line = _one_error_line(refused.err)
    for word in ("holds a cache made with other settings", "views.count: 2 vs 3", "layout.chunk_samples: 256 vs 128",
                 "--overwrite"):
        assert word in line
    assert snapshot(out) == before  # byte for byte
    replaced = run_cli(["dump", *_argv(digits_args, views="3", chunk_samples="128"), "--out", out, "--overwrite"])
    assert replaced.code == 0, replaced.err
    store = ZarrStore.open(out)
    assert store.spec.views.count == 3 and store.spec.layout.chunk_samples == 128 and store.provenance.complete
    assert store.array("seeds").shape == (4, 1438)


def test_out_path_that_is_a_file_is_refused(run_cli, digits_args, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = run_cli(["dump", *digits_args, "--out", target])
    assert result.code == 2 and "is not a logitcache store" in _one_error_line(result.err)
    assert target.read_text() == "keep me"


def test_missing_cache_for_info_and_verify(run_cli, tmp_path):
    for command in (["info", tmp_path / "nope.zarr"], ["verify", tmp_path / "nope.zarr"]):
        result = run_cli(command)
        assert result.code == 2 and "no cache at" in _one_error_line(result.err)


# --------------------------------------------------------------------------- verify
def test_verify_names_a_tampered_logit(run_cli, digits_cache, copy_store, reseal, read_indices, tmp_path):
    path = copy_store(digits_cache, tmp_path / "c.zarr")
    group = zarr.open_group(str(path), mode="r+")
    labels, indices = group["labels"][:], read_indices(path, "topk_indices")[1]
    # A sample whose second-ranked class is not its label (the label's fp32 logit would win).
    sample = int(np.flatnonzero(indices[:, 1] != labels)[100])
    gaps = group["topk_gaps"]  # from the top-1 logit: gaps[..., 0] is the second-ranked class's
    gaps[1, sample, 0] = gaps[1, sample, 0] + np.float16(2.0)  # through zarr: checksums stay valid
    reseal(path)  # and the digests: as a dump that computed that logit would have written it
    result = run_cli(["verify", path, "--random-init", "--samples", "100000", "--device", "cpu"])
    assert result.code == 1
    assert "replayed 4,314 (view, sample) pairs" in result.out
    fails = [line for line in result.err.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1
    assert fails[0].startswith(f"FAIL view 1 sample {sample}: stored logits differ from the replayed teacher")


def test_verify_reports_a_flipped_byte_and_repair_restores(run_cli, digits_cache, copy_store, digits_args, tmp_path):
    path = copy_store(digits_cache, tmp_path / "c.zarr")
    chunk = path / "topk_indices_packed" / "c" / "2" / "4" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 3] ^= 0x08
    chunk.write_bytes(bytes(raw))
    result = run_cli(["verify", path, "--samples", "0"])
    assert result.code == 1
    assert "FAIL topk_indices_packed chunk topk_indices_packed/c/2/4/0: does not decode" in result.err
    repaired = run_cli(["verify", path, "--repair", "--samples", "0"])
    assert repaired.code == 1 and "FAIL repair: marked the damaged blocks for rewriting" in repaired.err
    again = run_cli(["dump", *digits_args, "--out", path])
    assert again.code == 0 and "resuming: 17 of 18 blocks already done" in again.out
    assert "wrote 1 block (" in again.out
    assert run_cli(["verify", path, "--random-init", "--device", "cpu"]).code == 0
    _assert_same_store(digits_cache, path)


# --------------------------------------------------------------------------- shards, entry points
def test_shard_writers_through_the_cli(run_cli, tmp_path):
    out = tmp_path / "c.zarr"
    first = run_cli(["dump", *SYNTHETIC, "--out", out, "--shard", "0/2"])
    assert first.code == 0 and str(out) in first.out and not _says_complete(first.out)
    assert "not complete yet" in first.out and "re-run this command" in first.out
    info = run_cli(["info", out])
    assert info.code == 0 and "status       INCOMPLETE" in info.out and "re-run the same dump command" in info.out
    second = run_cli(["dump", *SYNTHETIC, "--out", out, "--shard", "1/2"])
    assert second.code == 0 and str(out) in second.out and _says_complete(second.out)


def test_unknown_name_messages_point_at_commands_that_exist(run_cli):
    # Each registry's "unknown name" message ends with a command that lists the valid names.
    from logitcache._registry import Registry
    from logitcache.datasets import _DATASETS
    from logitcache.models._registry import MODELS
    from logitcache.store.encodings._base import _ENCODINGS

    registries: list[Registry] = [_DATASETS, MODELS, _ENCODINGS]
    for registry in registries:
        message = registry.unknown_message("nonsense")
        command = message.split("`")[1].split()
        assert command[0] == "logitcache", message
        result = run_cli(command[1:] + ([] if "--help" in command else ["--help"]))
        assert result.code == 0, f"{message}: `{' '.join(command)}` does not run"


def test_python_dash_m_and_a_library_import_without_typer(fresh_imports, loaded):
    assert loaded(fresh_imports["library"], "typer") == [], "the library imported typer"
    help_text = subprocess.run([sys.executable, "-m", "logitcache", "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0
    for command in ("dump", "info", "verify", "models"):
        assert command in help_text.stdout
