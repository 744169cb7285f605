"""Bad inputs: one clear line, a non-zero exit, nothing written.

Paths that do not exist or are not what they should be, stores of a newer format, checkpoints
that are not state dicts or carry a pickle payload, teachers that output NaN/inf, impossible
options, empty or broken image folders, each through the CLI (``dump``, ``train``, ``eval``,
``info``, ``verify``). Extends ``tests/cli/test_stage_one_cli.py``, which covers the dump's
option errors (unknown names, k >= classes, zero views, codecs, shards...).
"""

from __future__ import annotations

import importlib
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from image_files import write_png

from logitcache.errors import CacheIncomplete
from logitcache.models import create_model
from logitcache.store.format import ATTR, FORMAT_VERSION
from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import DONE, ZarrStore

dump_module = importlib.import_module("logitcache.dump")  # the package re-exports the function
SYNTHETIC = "synthetic:n=64,size=8"
DUMP = ["dump", "--teacher", "resnet8", "--views", "1", "--topk", "1", "--chunk-samples", "4", "--device", "cpu",
        "--quiet", "--workers", "2"]
TRAIN = ["train", "--student", "resnet8", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]


class _Payload:
    """Unpickling this runs code: it would create the file named by ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths of the bad files the matrix uses, and of the good ones it needs beside them."""
    root = tmp_path_factory.mktemp("bad")
    good = create_model("resnet8", num_classes=10).state_dict()
    torch.save(good, root / "good.pt")
    torch.save([t for t in good.values()], root / "list.pt")  # tensors, but not a state dict
    torch.save({"epoch": 3, "note": "no tensors"}, root / "dict.pt")
    torch.save({"model": _Payload(str(root / "PWNED"))}, root / "payload.pt")
    (root / "text.pt").write_text("not a checkpoint")
    for bad in ("nan", "inf"):
        state = dict(good)
        state["fc.bias"] = torch.full_like(good["fc.bias"], float(bad))
        torch.save(state, root / f"{bad}.pt")
    # Logits of about 1e5: finite in fp32 and bf16, beyond fp16's 65504.
    torch.save({**good, "fc.weight": good["fc.weight"] * 1e6}, root / "huge.pt")
    (root / "plain").mkdir()
    (root / "plain" / "notes.txt").write_text("not a store")
    (root / "empty").mkdir()
    zarr.create_group(store=str(root / "other.zarr"))
    # Image folders: none, empty classes, a stray text file, broken image bytes.
    for name in ("imgs_empty", "imgs_text", "imgs_first", "imgs_later"):
        for c in ("a", "b"):
            (root / name / c).mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for name in ("imgs_text", "imgs_first", "imgs_later"):
        for c in ("a", "b"):
            for j in range(4):
                write_png(torch.randint(0, 256, (3, 10, 10), generator=gen, dtype=torch.uint8),
                          str(root / name / c / f"{j}.png"))
    (root / "imgs_text" / "b" / "README.txt").write_text("labels are folder names")
    (root / "imgs_first" / "a" / "0.png").write_bytes(b"this is not a png")
    (root / "imgs_later" / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # truncated
    return root


@pytest.fixture(scope="module")
def newer_store(make_cache, tmp_path_factory):
    import shutil

    path = tmp_path_factory.mktemp("newer") / "c.zarr"
    shutil.copytree(make_cache(dataset=SYNTHETIC, topk=3, chunk_samples=16), path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"][ATTR]["spec"]["format_version"] = FORMAT_VERSION + 1
    (path / "zarr.json").write_text(json.dumps(meta))
    return path


# --------------------------------------------------------------------------- caches that are not
CACHES = {  # --cache value -> words the message must hold
    "nonexistent": ("missing.zarr", ["no cache at", "missing.zarr"]),
    "empty folder": ("empty", ["is not a zarr store (no zarr.json)"]),
    "folder of other files": ("plain", ["is not a zarr store (no zarr.json)"]),
    "zarr group, not a cache": ("other.zarr", ["is a zarr group but not a logitcache store"]),
    "newer format": ("NEWER", [f"store format version {FORMAT_VERSION + 1} is newer than this logitcache reads "
                               f"({FORMAT_VERSION})", "upgrade logitcache"]),
}


@pytest.mark.parametrize("command", ["train", "info", "verify"])
@pytest.mark.parametrize("case", list(CACHES))
def test_a_cache_that_is_not_one(case, command, files, newer_store, run_cli, snapshot, tmp_path, one_line):
    name, words = CACHES[case]
    cache = newer_store if name == "NEWER" else files / name
    before = snapshot(cache) if cache.exists() else None
    out = tmp_path / "run"
    argv = {"train": [*TRAIN, "--dataset", SYNTHETIC, "--cache", cache, "--out", out],
            "info": ["info", cache, "--quiet"], "verify": ["verify", cache, "--random-init", "--device", "cpu"]}[command]
    line = one_line(run_cli(argv))
    for word in words:
        assert word in line, line
    assert not out.exists()
    assert (snapshot(cache) if cache.exists() else None) == before


# --------------------------------------------------------------------------- checkpoints that are not
CHECKPOINTS = {
    "nonexistent": ("missing.pt", ["checkpoint", "missing.pt not found"]),
    "a folder": ("plain", ["is a directory"]),
    "a list of tensors": ("list.pt", ["holds a list, not a state dict", "torch.save(model.state_dict(), path)"]),
    "a dict without tensors": ("dict.pt", ["holds no state dict", "'epoch'"]),
    "a pickle payload": ("payload.pt", ["holds pickled Python objects", "could run code"]),
    "text": ("text.pt", ["is not a readable PyTorch file"]),
}


@pytest.mark.parametrize("command", ["dump", "train --teacher-online", "eval"])
@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_checkpoint_that_is_not_one(case, command, files, run_cli, tmp_path, one_line):
    name, words = CHECKPOINTS[case]
    ckpt, out = files / name, tmp_path / "out"
    argv = {
        "dump": [*DUMP, "--dataset", SYNTHETIC, "--checkpoint", ckpt, "--out", out],
        "train --teacher-online": [*TRAIN, "--dataset", SYNTHETIC, "--teacher-online", "--teacher", "resnet8",
                                   "--checkpoint", ckpt, "--out", out],
        "eval": ["eval", "--model", "resnet8", "--dataset", SYNTHETIC, "--checkpoint", ckpt],
    }[command]
    line = one_line(run_cli(argv))
    for word in words:
        assert word in line, line
    assert not out.exists()
    assert not (files / "PWNED").exists()  # the payload never ran


def test_a_pickle_payload_as_last_checkpoint_never_runs(make_cache, files, run_cli, tmp_path, one_line):
    cache = make_cache(dataset=SYNTHETIC, topk=3, chunk_samples=16)
    out = tmp_path / "run"
    command = [*TRAIN, "--dataset", SYNTHETIC, "--cache", cache, "--out", out]
    assert run_cli(command).code == 0
    (out / "last.pt").write_bytes((files / "payload.pt").read_bytes())
    line = one_line(run_cli([*command, "--epochs", "1", "--resume"]))
    assert f"cannot resume from {out / 'last.pt'}: it is unreadable" in line
    assert not (files / "PWNED").exists()


def test_nothing_in_a_store_is_pickled(digits_cache):
    """Every metadata file is JSON with numeric dtypes and known codecs; every data file is a
    blosc frame; no file is a pickle. Reading a cache never unpickles anything."""
    for meta in digits_cache.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc["node_type"] == "array":
            assert doc["data_type"] in ("int32", "uint32", "uint8", "uint16", "uint64", "float16", "float32"), meta
            assert {c["name"] for c in doc["codecs"]} <= {"bytes", "blosc", "crc32c"}, meta
    for f in digits_cache.rglob("*"):
        if not f.is_file() or f.name == "zarr.json" or f.name.startswith(".lock"):
            continue
        raw = f.read_bytes()
        assert not (raw[:1] == b"\x80" and raw[1:2] in b"\x02\x03\x04\x05"), f"{f} looks like a pickle"
        if not {"progress", "digests", "label_digests"} & set(f.parts):  # markers and digests: uncompressed
            assert raw[0] == 2, f"{f} is not a blosc frame"  # blosc format version 2
        with pytest.raises(Exception):  # noqa: B017 - anything but success
            pickle.loads(raw)


# --------------------------------------------------------------------------- teachers that output NaN/inf
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_a_teacher_that_outputs_non_finite_logits(bad, files, run_cli, tmp_path, one_line):
    out = tmp_path / "c.zarr"
    line = one_line(run_cli([*DUMP, "--dataset", SYNTHETIC, "--checkpoint", files / f"{bad}.pt", "--out", out]))
    assert "teacher produced NaN/inf logits for sample 0" in line and "nothing was written" in line
    assert not out.exists()


def test_fp16_overflow_is_refused_naming_the_sample_and_the_precision_to_use(files, run_cli, tmp_path, one_line):
    """Under --precision fp16 a teacher whose logits exceed 65504 gives inf: refused before anything
    is written, saying so; the suggested --precision bf16 dumps the same teacher."""
    out = tmp_path / "c.zarr"
    args = [*DUMP, "--dataset", SYNTHETIC, "--checkpoint", files / "huge.pt", "--dtype", "fp32", "--out", out]
    line = one_line(run_cli([*args, "--precision", "fp16"]))
    assert "NaN/inf logits for sample 0 (unaugmented); nothing was written" in line
    assert "overflows fp16" in line and "--precision bf16" in line
    assert not out.exists()
    assert run_cli([*args, "--precision", "bf16"]).code == 0
    assert ZarrStore.open(out).provenance.complete


@pytest.mark.parametrize("bad", ["nan", "fp16-overflow"])
def test_non_finite_logits_mid_dump_are_never_marked_done(bad, tmp_path, monkeypatch):
    """A teacher that goes NaN (or beyond fp16's range, under --precision fp16) on one sample only:
    the dump stops naming it (and the precision to use instead of the overflowing one), no block
    holding it is done, and nothing is written after ``dump`` has returned (the writer finished first)."""
    real, write_block = dump_module.build_teacher, ZarrStore.write_block

    class NaNOnSample(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            hit = (x.flatten(1) == self.poison).all(dim=1)[:, None]
            return torch.where(hit, torch.nan, out) if bad == "nan" else torch.where(hit, out * 1e6, out)

    def build(*args, **kwargs):
        model = NaNOnSample(real(*args, **kwargs))
        model.poison = torch.inf  # set after the probe of sample 0
        return model

    def slow(self, view, rows, arrays):
        time.sleep(0.05)
        return write_block(self, view, rows, arrays)

    monkeypatch.setattr(dump_module, "build_teacher", build)
    monkeypatch.setattr(ZarrStore, "write_block", slow)
    real_run = dump_module._run

    def run(config, store, dataset, teacher, device):
        # Poison sample 37's clean view: its normalised pixels, exactly.
        teacher.poison = dataset.normalize(dataset.images(np.array([37])).float())[0].flatten()
        return real_run(config, store, dataset, teacher, device)

    monkeypatch.setattr(dump_module, "_run", run)
    out = tmp_path / "c.zarr"
    config = dump_module.DumpConfig(teacher="resnet8", dataset=SYNTHETIC, out=str(out), random_init=True, views=1,
                                    topk=3, chunk_samples=8, batch_size=8, device="cpu", progress=False,
                                    precision="fp32" if bad == "nan" else "fp16")
    why = "check the checkpoint" if bad == "nan" else "overflows fp16.*--precision bf16"
    with pytest.raises(dump_module.DataError, match=rf"NaN/inf logits for sample 37 \(view 0\).*{why}"):
        dump_module.dump(config)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    time.sleep(0.3)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files  # no write after the return
    state = ZarrStore.open(out).progress()
    assert state[0, 37 // 8] != DONE and state[0, :37 // 8].tolist() == [DONE] * (37 // 8)
    with pytest.raises(CacheIncomplete):
        CacheReader(out)


# --------------------------------------------------------------------------- options and data
OPTIONS = {  # train options that cannot work, and words of the refusal
    "zero views": (["--method", "ce", "--views", "0"], ["--views must be >= 1, got 0"]),
    "batch of one": (["--method", "ce", "--batch-size", "1"], ["--batch-size >= 2"]),
    "zero epochs": (["--method", "ce", "--epochs", "0"], ["--epochs must be >= 1"]),
    "views with a cache": (["--cache", "CACHE", "--views", "3"], ["--views is taken from the cache"]),
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_train_options_that_cannot_work(case, make_cache, run_cli, tmp_path, one_line):
    extra, words = OPTIONS[case]
    cache = make_cache(dataset=SYNTHETIC, topk=3, chunk_samples=16)
    out = tmp_path / "run"
    line = one_line(run_cli([*TRAIN, "--dataset", SYNTHETIC, "--out", out,
                              *[str(cache) if e == "CACHE" else e for e in extra]]))
    for word in words:
        assert word in line, line
    assert not out.exists()


def test_k_not_below_the_class_count(run_cli, tmp_path, one_line):
    out = tmp_path / "c.zarr"
    line = one_line(run_cli([*DUMP, "--dataset", "synthetic:n=64,size=8,classes=4", "--random-init", "--topk", "4",
                              "--out", out]))
    assert "top-k needs k < number of classes (4), got k=4" in line
    assert not out.exists()


DATA = {  # --dataset -> words of the refusal
    "no such image folder": ("imagefolder:MISSING", ["image folder", "does not exist"]),
    "empty image folder": ("imagefolder:imgs_empty", ["has no images"]),
    "no class folders": ("imagefolder:empty", ["has no class folders"]),
    "a text file among the images": ("imagefolder:imgs_text", ["README.txt is not an image", "move it out"]),
    "broken first image": ("imagefolder:imgs_first", ["cannot decode image", "a/0.png", "remove or replace"]),
    "cifar10 without its files": ("cifar10", ["cifar10 not found", "does not exist"]),
}


# train decodes no image before it writes its run folder's config.json: a broken image stops it in
# its first epoch (and --resume starts that epoch again once it is fixed). The dump decodes the first.
DATA_CASES = [(case, command) for case in DATA for command in ("dump", "train")
              if (case, command) != ("broken first image", "train")]


@pytest.mark.parametrize(("case", "command"), DATA_CASES, ids=[f"{c}-{m}" for c, m in DATA_CASES])
def test_data_that_cannot_be_read(case, command, files, run_cli, tmp_path, one_line):
    dataset, words = DATA[case]
    kind, _, folder = dataset.partition(":")
    if kind == "imagefolder":
        dataset = f"imagefolder:{files / 'missing' if folder == 'MISSING' else files / folder}"
    out = tmp_path / "out"
    root = ["--data-root", str(tmp_path / "data")]
    argv = ([*DUMP, "--random-init", "--augment", "resized_crop:8"] if command == "dump" else [*TRAIN, "--method", "ce"])
    line = one_line(run_cli([*argv, "--dataset", dataset, *root, "--out", out]))
    for word in words:
        assert word in line, line
    assert not out.exists() and not (tmp_path / "data").exists()


def test_a_broken_image_found_mid_dump(files, run_cli, tmp_path, one_line):
    """Only the first image is decoded before writing (checking them all would read the data
    twice), so a broken one further on stops the dump with the file named, in one line even from
    a loader process; no block holding it is done, readers refuse the store, and after the file is
    replaced ``--overwrite`` (its fingerprint changed) makes a complete store."""
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(files / "imgs_later", folder)
    out = tmp_path / "c.zarr"
    command = [*DUMP, "--dataset", f"imagefolder:{folder}", "--random-init", "--augment", "resized_crop:8", "--out", out]
    line = one_line(run_cli(command))
    assert f"cannot decode image {folder / 'b' / '2.png'}" in line and "remove or replace the file" in line
    state = ZarrStore.open(out).progress()
    assert state[0, 6 // 4] != DONE  # sample 6 (b/2.png) is in block 1 of the clean view
    with pytest.raises(CacheIncomplete):
        CacheReader(out)
    shutil.copyfile(folder / "b" / "1.png", folder / "b" / "2.png")
    refused = one_line(run_cli(command))
    assert "holds a cache made with other settings (dataset.fingerprint" in refused and "--overwrite" in refused
    assert run_cli([*command, "--overwrite"]).code == 0
    assert ZarrStore.open(out).provenance.complete


# --------------------------------------------------------------------------- outputs that cannot be written
# Tests run as root, whom permission bits do not stop: the unwritable places are a path under a
# regular file, /proc (no new entries at all) and /sys (EACCES even for root).
UNWRITABLE = {
    "under a file": (lambda tmp: tmp / "a-file" / "x", "a-file is a file, not a folder"),
    "/proc": (lambda tmp: Path("/proc/logitcache-test"), "creating a file in /proc fails (No such file or directory)"),
    "/sys": (lambda tmp: Path("/sys/logitcache-test"), "creating a file in /sys fails (Permission denied)"),
}
WRITERS = {  # command -> its argv writing to ``bad``
    "dump": lambda bad, src: [*DUMP, "--dataset", SYNTHETIC, "--random-init", "--out", bad / "c.zarr"],
    "dump into LOGITCACHE_HOME": lambda bad, src: [*DUMP, "--dataset", SYNTHETIC, "--random-init"],
    "train": lambda bad, src: [*TRAIN, "--dataset", SYNTHETIC, "--method", "ce", "--out", bad / "run"],
    "pack": lambda bad, src: ["pack", src["store"], bad / "c.zip"],
    "unpack": lambda bad, src: ["unpack", src["zip"], bad / "c.zarr"],
    "demo": lambda bad, src: ["demo", "--device", "cpu", "--quiet", "--out", bad / "demo"],
}


@pytest.fixture(scope="module")
def packed(make_cache, tmp_path_factory):
    from logitcache.store.pack import pack

    store = make_cache(dataset=SYNTHETIC, topk=3, chunk_samples=16)
    return {"store": store, "zip": pack(store, tmp_path_factory.mktemp("packed") / "c.zip")}


@pytest.mark.parametrize("where", list(UNWRITABLE))
@pytest.mark.parametrize("command", list(WRITERS))
def test_an_output_that_cannot_be_written(command, where, packed, run_cli, tmp_path, monkeypatch, one_line):
    make, words = UNWRITABLE[where]
    bad = make(tmp_path)
    if not bad.parents[-2].exists():  # /proc or /sys: Linux only
        pytest.skip(f"no {bad.parents[-2]} here")
    (tmp_path / "a-file").write_text("a regular file")
    monkeypatch.setenv("LOGITCACHE_HOME", str(bad / "home"))
    line = one_line(run_cli(WRITERS[command](bad, packed)))
    assert line.startswith("error: cannot write ") and words in line and str(bad) in line, line
    option = {"dump into LOGITCACHE_HOME": "LOGITCACHE_HOME", "pack": "archive", "unpack": "destination"}
    assert line.endswith(f"choose another {option.get(command, '--out')}"), line
    assert not bad.exists()
    assert (tmp_path / "a-file").read_text() == "a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_packed_store_is_not_repaired(packed, run_cli, snapshot, one_line):
    before = snapshot(packed["zip"].parent)
    line = one_line(run_cli(["verify", packed["zip"], "--repair", "--random-init", "--device", "cpu"]))
    assert "is a packed store and read-only: `logitcache unpack` it into a folder" in line
    assert snapshot(packed["zip"].parent) == before


def test_an_os_error_later_on_is_one_line_naming_the_path(make_cache, run_cli, tmp_path, monkeypatch, one_line):
    """What no up-front check can foresee (a disk that fills up during a run, a loader creating
    a folder) still ends in one line naming the path and the reason, not a traceback."""
    import errno

    from logitcache import _utils

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(_utils, "atomic_write_bytes", full)
    out = tmp_path / "run"
    line = one_line(run_cli([*TRAIN, "--dataset", SYNTHETIC, "--method", "ce", "--out", out]))
    assert line == f"error: {out / 'config.json'}: No space left on device (check the path and its permissions)"
    monkeypatch.undo()
    line = one_line(run_cli([*DUMP, "--dataset", "cifar10", "--download", "--random-init", "--data-root",
                              "/proc/logitcache-test", "--out", tmp_path / "c.zarr"]))
    assert line.startswith("error: /proc/logitcache-test: No such file or directory")
