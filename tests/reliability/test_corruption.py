"""Damaged stores: every flipped, truncated, emptied or deleted file is found, named, never used.

For each fault: ``logitcache verify`` exits non-zero naming the chunk; the reader (and so
``logitcache train``) refuses it naming the chunk, and never hands out its data;
``verify --repair`` followed by the same dump command restores a store equal to an undamaged one,
file for file. Also: damaged metadata, a damaged progress marker, and the two things checksums
cannot see (a valid chunk at the wrong key; a store dumped ``--no-checksum``), which only the
replay of ``verify`` catches.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from logitcache.errors import CacheCorrupt, CacheNotFound
from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import DONE, ZarrStore

SYNTHETIC = "synthetic:n=64,size=8"
BASE = ["--teacher", "resnet8", "--dataset", SYNTHETIC, "--random-init", "--views", "2", "--device", "cpu", "--quiet"]
LAYOUTS = {  # CLI options, and the same as make_cache fields (stores shared with tests/store)
    "topk-fp16": (["--topk", "3", "--chunk-samples", "16"], dict(dataset=SYNTHETIC, topk=3, chunk_samples=16)),
    "topk-q8-sharded": (["--topk", "3", "--dtype", "q8", "--chunk-samples", "8", "--shard-chunks", "2"],
                        dict(dataset=SYNTHETIC, topk=3, dtype="q8", chunk_samples=8, shard_chunks=2)),
}
# (layout, fault, array, storage key under the array): every fault on data arrays of both layouts.
CASES = [
    ("topk-fp16", "flip", "topk_gaps", "c/1/1/0"),
    ("topk-fp16", "truncate", "lse", "c/2/3"),
    ("topk-fp16", "empty", "topk_indices", "c/1/0/0"),
    ("topk-fp16", "delete", "target_logit", "c/2/2"),
    ("topk-fp16", "flip", "seeds", "c/1/2"),
    ("topk-q8-sharded", "flip", "topk_gaps", "c/1/1/0"),
    ("topk-q8-sharded", "truncate", "lse_gap", "c/2/0"),
    ("topk-q8-sharded", "empty", "target_gap", "c/1/3"),
    ("topk-q8-sharded", "delete", "topk_indices", "c/2/1/0"),
]


@pytest.fixture
def damaged(make_cache, copy_store, tmp_path):
    """``damaged(layout) -> (reference, private copy, dump argv for the copy)``."""

    def make(layout: str):
        args, fields = LAYOUTS[layout]
        ref = make_cache(**fields)
        path = copy_store(ref, tmp_path / "c.zarr")
        return ref, path, ["dump", *BASE, *args, "--out", path]

    return make


def _read_view(path, view: int):
    reader = CacheReader(path)
    try:
        return reader.read(view, np.arange(64))
    finally:
        reader.close()


@pytest.mark.parametrize(("layout", "fault", "array", "key"), CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_damage_is_found_named_refused_and_repaired(layout, fault, array, key, damaged, damage, run_cli,
                                                    assert_same_store):
    ref, path, dump_command = damaged(layout)
    full_key = f"{array}/{key}"
    view = int(key.split("/")[1])
    damage(path / array / key, fault)

    result = run_cli(["verify", path, "--samples", "0"])
    assert result.code == 1
    sharded = layout.endswith("sharded")  # zarr reads a zero-byte shard as zeros: the listing finds it, by size
    problem = "missing" if fault == "delete" else "empty (0 bytes)" if fault == "empty" and sharded else "does not decode"
    assert f"FAIL {array} chunk {full_key}: {problem}" in result.err

    # The reader never returns the damaged rows: a missing or empty object is refused on open, a corrupt one on read.
    with pytest.raises(CacheCorrupt, match=full_key.replace("/", "\\/")):
        if array == "seeds":
            CacheReader(path).seeds(view)
        else:
            _read_view(path, view)
    other = 3 - view  # the other augmented view is untouched, and still reads (unless a chunk is missing)
    if fault != "delete" and not (fault == "empty" and sharded) and array != "seeds":
        want = _read_view(ref, other)
        assert np.array_equal(_read_view(path, other).logits, want.logits)

    repaired = run_cli(["verify", path, "--samples", "0", "--repair"])
    assert repaired.code == 1 and "repair: marked the damaged blocks for rewriting" in repaired.err
    state = ZarrStore.open(path).progress()
    assert int((state != DONE).sum()) == 1 and not ZarrStore.open(path).provenance.complete
    again = run_cli(dump_command)
    assert again.code == 0, again.err
    assert "wrote 1 block (" in again.out
    assert run_cli(["verify", path, "--samples", "0"]).code == 0
    assert_same_store(ref, path)


@pytest.mark.parametrize("fault", ["flip", "truncate", "empty", "delete"])
def test_train_refuses_a_damaged_cache_naming_the_chunk(fault, damaged, damage, run_cli, tmp_path):
    """``logitcache train`` stops with the chunk named before any step uses its rows: the first
    epoch reads view 1, whose chunk is damaged, so no checkpoint is ever written."""
    _, path, _ = damaged("topk-fp16")
    damage(path / "topk_gaps" / "c" / "1" / "2" / "0", fault)
    out = tmp_path / "run"
    result = run_cli(["train", "--student", "resnet8", "--dataset", SYNTHETIC, "--cache", path, "--out", out,
                      "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"])
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    assert "topk_gaps/c/1/2/0" in result.err and "verify --repair" in result.err
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


@pytest.mark.parametrize(("layout", "fault"), [("topk-fp16", "flip"), ("topk-q8-sharded", "truncate")])
def test_damaged_labels_are_refused_on_open_and_rewritten(layout, fault, damaged, damage, run_cli, assert_same_store):
    ref, path, dump_command = damaged(layout)
    damage(path / "labels" / "c" / "2", fault)
    with pytest.raises(CacheCorrupt, match="labels chunk labels/c/2: does not decode"):
        CacheReader(path)
    assert "FAIL labels chunk labels/c/2: does not decode" in run_cli(["verify", path, "--samples", "0"]).err
    assert run_cli(["verify", path, "--samples", "0", "--repair"]).code == 1
    again = run_cli(dump_command)
    assert again.code == 0 and "wrote 0 blocks" in again.out  # labels are rewritten by every run
    assert_same_store(ref, path)


def test_a_damaged_progress_marker_counts_as_not_done(damaged, damage, run_cli, assert_same_store):
    ref, path, dump_command = damaged("topk-fp16")
    damage(path / "progress" / "c" / "1" / "2", "flip")
    result = run_cli(["verify", path, "--samples", "0"])
    assert result.code == 1 and "FAIL progress chunk progress/c/1/2: does not decode" in result.err
    assert "1 block never finished writing" in result.err
    assert ZarrStore.open(path).progress()[1, 2] == 0
    assert run_cli(["verify", path, "--samples", "0", "--repair"]).code == 1
    again = run_cli(dump_command)
    assert again.code == 0 and "wrote 1 block (" in again.out
    assert_same_store(ref, path)


@pytest.mark.parametrize("fault", ["truncate", "empty", "delete"])
def test_damaged_array_metadata_is_one_clear_line(fault, damaged, damage, run_cli, assert_same_store, tmp_path):
    ref, path, dump_command = damaged("topk-fp16")
    damage(path / "lse" / "zarr.json", fault)
    train = ["train", "--student", "resnet8", "--dataset", SYNTHETIC, "--cache", path, "--out", tmp_path / "run",
             "--epochs", "1", "--device", "cpu", "--quiet"]
    for command in (["verify", path, "--samples", "0"], ["info", path, "--quiet"], train,
                    *([] if fault == "delete" else [dump_command])):
        result = run_cli(command)
        assert result.code == 2, (command[0], result.err)
        assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
        which = "array 'lse' is missing" if fault == "delete" else "metadata of array 'lse' (lse/zarr.json)"
        assert which in result.err and "re-dump" in result.err, result.err
    assert not (tmp_path / "run").exists()
    # A deleted zarr.json is rewritten from the spec by the same dump command (its chunks still decode
    # and are re-checked); a damaged one needs what the message says: --overwrite.
    again = run_cli(dump_command if fault == "delete" else [*dump_command, "--overwrite"])
    assert again.code == 0, again.err
    assert_same_store(ref, path)


@pytest.mark.parametrize("fault", ["truncate", "empty", "delete"])
def test_damaged_group_metadata_is_refused(fault, damaged, damage, run_cli, snapshot, tmp_path):
    """Without a readable group zarr.json a folder is not taken for a store: not read, and not
    deleted by ``--overwrite`` either (it might hold anything)."""
    _, path, dump_command = damaged("topk-fp16")
    damage(path / "zarr.json", fault)
    with pytest.raises(CacheNotFound):
        CacheReader(path)
    before = snapshot(path)
    train = ["train", "--student", "resnet8", "--dataset", SYNTHETIC, "--cache", path, "--out", tmp_path / "run",
             "--epochs", "1", "--device", "cpu", "--quiet"]
    for command in (["verify", path, "--samples", "0"], ["info", path], train, [*dump_command, "--overwrite"]):
        result = run_cli(command)
        assert result.code == 2 and result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
        says = ("not a readable zarr v3 store", "is not a zarr store (no zarr.json)", "is not a logitcache store")
        assert str(path) in result.err and any(w in result.err for w in says), result.err
    after = {k: v for k, v in snapshot(path).items() if not k.startswith(".lock")}  # the dump's locks aside
    assert after == before and not (tmp_path / "run").exists()


def test_a_valid_chunk_at_the_wrong_key_is_found_by_replay_only(damaged, run_cli):
    """Checksums protect a chunk's bytes, not where it sits: a chunk copied over another one of
    the same array (say, by a botched manual copy) decodes fine. The reader cannot tell; the
    teacher replay of ``verify`` (every pair here) does."""
    ref, path, _ = damaged("topk-fp16")
    shutil.copyfile(path / "lse" / "c" / "1" / "0", path / "lse" / "c" / "2" / "0")
    assert run_cli(["verify", path, "--samples", "0"]).code == 0  # integrity alone: fine
    assert not np.array_equal(_read_view(path, 2).lse, _read_view(ref, 2).lse)  # wrong rows, silently
    result = run_cli(["verify", path, "--samples", "100000", "--random-init", "--device", "cpu"])
    assert result.code == 1 and "FAIL view 2 sample " in result.err


def test_without_checksums_a_flipped_byte_can_go_unseen(run_cli, damage, tmp_path):
    """``--no-checksum`` stores have no per-chunk protection: a flipped byte inside a compressed
    chunk may decode to plausible numbers. This is why checksums are on by default."""
    path = tmp_path / "c.zarr"
    assert run_cli(["dump", *BASE, *LAYOUTS["topk-fp16"][0], "--no-checksum", "--out", path]).code == 0
    before = _read_view(path, 1).topk_values.clone()
    damage(path / "topk_gaps" / "c" / "1" / "1" / "0", "flip")
    assert run_cli(["verify", path, "--samples", "0"]).code == 0  # integrity check has nothing to check
    assert not np.array_equal(_read_view(path, 1).topk_values.numpy(), before.numpy())  # and data changed
