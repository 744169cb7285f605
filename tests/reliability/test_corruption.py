"""Damaged stores: every flipped, truncated, emptied or deleted file is found, named, never used.

For each fault: ``logitcache verify`` exits non-zero naming the chunk; the reader (and so
``logitcache train``) refuses it naming the chunk, and never hands out its data;
``verify --repair`` followed by the same dump command restores a store equal to an undamaged one,
file for file. Also: damaged metadata, a damaged progress marker, and the two things checksums
cannot see (a valid chunk at the wrong key; a store dumped ``--no-checksum``), which the block
digests catch; metadata edited by hand (array zarr.json, spec, provenance) and labels or class
indices that cannot be right, each refused in one line.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import zarr
from lm_helpers import lm_dump_args

from logitcache.errors import CacheCorrupt, CacheNotFound, LogitcacheError
from logitcache.store.format import ATTR, OLDEST_READABLE, spec_digest
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
    ("topk-fp16", "empty", "topk_indices_packed", "c/1/0/0"),
    ("topk-fp16", "delete", "target_logit", "c/2/2"),
    ("topk-fp16", "flip", "seeds", "c/1/2"),
    ("topk-q8-sharded", "flip", "topk_gaps", "c/1/1/0"),
    ("topk-q8-sharded", "truncate", "lse_gap", "c/2/0"),
    ("topk-q8-sharded", "empty", "target_gap", "c/1/3"),
    ("topk-q8-sharded", "delete", "topk_indices_packed", "c/2/1/0"),
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


# (layout, array, from key, to key, swap or copy): valid chunks at the wrong key, within a view,
# across views, of the labels (the trial's repro: labels/c/0 and labels/c/1 swapped) and of shards;
# always into view 1, which the first epoch of train reads.
MOVES = [
    ("topk-fp16", "labels", "c/0", "c/1", "swap"),
    ("topk-fp16", "lse", "c/2/0", "c/1/0", "copy"),
    ("topk-fp16", "topk_gaps", "c/1/0/0", "c/1/1/0", "copy"),
    ("topk-fp16", "seeds", "c/1/1", "c/1/3", "copy"),
    ("topk-q8-sharded", "topk_gaps", "c/2/0/0", "c/1/0/0", "copy"),
    ("topk-q8-sharded", "labels", "c/0", "c/2", "swap"),
]


def _train(path, out) -> list:
    return ["train", "--student", "resnet8", "--dataset", SYNTHETIC, "--cache", path, "--out", out,
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]


def _one_error_line(result, *words: str) -> None:
    assert result.code == 2 and "Traceback" not in result.err, result.err
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    for word in words:
        assert word in result.err, result.err


@pytest.mark.parametrize(("layout", "array", "src", "dst", "how"), MOVES, ids=[f"{m[0]}-{m[1]}-{m[4]}" for m in MOVES])
def test_a_valid_chunk_at_the_wrong_key_is_found_without_replay(layout, array, src, dst, how, damaged, run_cli,
                                                                assert_same_store, tmp_path):
    """Checksums protect a chunk's bytes, not where it sits: each block's digest covers its
    coordinates and content, so the integrity check, the reader and train refuse it, and repair
    plus the dump command restore the store."""
    ref, path, dump_command = damaged(layout)
    a, b = path / array / src, path / array / dst
    if how == "swap":
        raw = a.read_bytes()
        shutil.copyfile(b, a)
        b.write_bytes(raw)
    else:
        shutil.copyfile(a, b)
    result = run_cli(["verify", path, "--samples", "0"])
    assert result.code == 1 and "does not match its digest" in result.err, result.err
    named = f"labels chunk labels/{dst}" if array == "labels" else "digests chunk digests/c/{}/{}".format(
        *ZarrStore.open(path).block_of(f"{array}/{dst}"))
    assert named in result.err
    with pytest.raises(CacheCorrupt, match="does not match its digest"):
        if array == "seeds":
            CacheReader(path).seeds(1)
        else:
            _read_view(path, 1)
    fix = "re-run the dump command" if array == "labels" else "verify --repair"
    _one_error_line(run_cli(_train(path, tmp_path / "run")), "does not match its digest", fix)
    assert not (tmp_path / "run" / "last.pt").exists()

    assert run_cli(["verify", path, "--samples", "0", "--repair"]).code == 1
    again = run_cli(dump_command)
    assert again.code == 0, again.err
    assert ("wrote 0 blocks" if array == "labels" else "wrote 1 block (") in again.out
    assert_same_store(ref, path)


@pytest.mark.parametrize("shard_chunks", [0, 2])
def test_a_text_stores_seed_chunk_at_the_wrong_key_is_found_in_its_block(shard_chunks, lm_files, run_cli, copy_store,
                                                                        assert_same_store, tmp_path):
    """A text store holds one seed per sequence, so its seeds chunks (and shards) span as many rows
    as the other arrays' in fewer elements: a valid one at the wrong key is found in the block it
    stands in, and repair plus the dump command restore the store file for file."""
    dump = ["dump", *lm_dump_args(lm_files, "--shard-chunks", str(shard_chunks))]
    ref = tmp_path / "ref.zarr"
    assert run_cli([*dump, "--out", ref]).code == 0
    path = copy_store(ref, tmp_path / "c.zarr")
    shutil.copyfile(path / "seeds" / "c" / "0" / "1", path / "seeds" / "c" / "0" / "3")
    result = run_cli(["verify", path, "--samples", "0"])
    assert result.code == 1 and "digests chunk digests/c/0/3: view 0 block 3: content does not match" in result.err, \
        result.err
    with pytest.raises(CacheCorrupt, match="view 0 block 3: content does not match its digest"):
        CacheReader(path).seeds(0)
    assert run_cli(["verify", path, "--samples", "0", "--repair"]).code == 1
    again = run_cli([*dump, "--out", path])
    assert again.code == 0 and "wrote 1 block (" in again.out, again.err
    assert_same_store(ref, path)


def test_labels_that_are_not_the_datasets_are_refused(damaged, run_cli, reseal, tmp_path):
    """Labels consistent with their digests (as a dump of other labels would write them) but not
    the training data's: train refuses before any step, and the replay of verify names them."""
    _, path, _ = damaged("topk-fp16")
    labels = zarr.open_group(str(path), mode="r+")["labels"]
    labels[:16], labels[16:32] = labels[16:32], labels[:16]
    reseal(path)
    assert run_cli(["verify", path, "--samples", "0"]).code == 0  # consistent in itself
    _one_error_line(run_cli(_train(path, tmp_path / "run")), "labels stored in", "differ from synthetic")
    assert not (tmp_path / "run").exists()
    result = run_cli(["verify", path, "--samples", "10", "--random-init", "--device", "cpu"])
    assert result.code == 1 and "stored labels differ from the dataset's" in result.err, result.err


@pytest.mark.parametrize("array", ["labels", "topk_indices"])
def test_class_indices_out_of_range_are_refused_naming_the_pair(array, damaged, run_cli, reseal, read_indices,
                                                               write_indices, tmp_path):
    """A label or stored class beyond the class count, with valid checksums and digests: refused
    by the reader, naming the sample (and view), and by verify; never an IndexError. A packed
    index of 10 classes has 4 bits, so 10..15 are storable and must be refused all the same."""
    _, path, _ = damaged("topk-fp16")
    if array == "labels":
        zarr.open_group(str(path), mode="r+")[array][37] = 10
    else:
        row = read_indices(path, array)[1, 37]
        row[2] = 15
        write_indices(path, array, 1, 37, row)
    reseal(path)
    where = "sample 37 has label 10, outside 0..9" if array == "labels" else "view 1 sample 37: topk_indices outside 0..9"
    with pytest.raises(CacheCorrupt, match=where):
        _read_view(path, 1)
    assert where in run_cli(["verify", path, "--samples", "0"]).err
    _one_error_line(run_cli(_train(path, tmp_path / "run")), where)


def _edit_json(file, edit) -> None:
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))


def _spec_edit(change, *, reseal_digest: bool = False):
    def edit(meta):
        attrs = meta["attributes"][ATTR]
        change(attrs["spec"])
        if reseal_digest:  # a forger who also recomputed the digest
            attrs["spec_sha256"] = spec_digest(attrs["spec"])
    return "zarr.json", edit


def _set(path: str, value):
    *parents, last = path.split(".")

    def change(d):
        for key in parents:
            d = d[key]
        d[last] = value(d[last]) if callable(value) else value
    return change


def _array_edit(array, change):
    return f"{array}/zarr.json", change


# What the trial and the brief name: each edit is refused in one line by verify, info and train,
# quickly (no allocation of what a forged size declares), naming what to do.
METADATA_EDITS = {
    "no-crc32c": _array_edit("topk_gaps", lambda m: m["codecs"].pop()),
    "float16-as-int16": _array_edit("topk_gaps", lambda m: m.update(data_type="int16")),
    "chunk-shape-0": _array_edit("lse", _set("chunk_grid.configuration.chunk_shape", [1, 0])),
    "fill-value": _array_edit("seeds", _set("fill_value", 7)),
    "augmentation-padding": _spec_edit(_set("views.augmentation.padding", lambda p: p + 1)),
    "encoding-k": _spec_edit(_set("encoding.k", 2)),
    "num-samples": _spec_edit(_set("dataset.num_samples", 63)),
    "views-count": _spec_edit(_set("views.count", 3)),
    "views-count-1e9": _spec_edit(_set("views.count", 1e9)),
    "forged-views-count-1e9": _spec_edit(_set("views.count", 10**9), reseal_digest=True),
    "forged-num-samples-1e12": _spec_edit(_set("dataset.num_samples", 10**12), reseal_digest=True),
    "forged-chunk-samples": _spec_edit(_set("layout.chunk_samples", 8), reseal_digest=True),
    "spec-a-string": ("zarr.json", lambda m: m["attributes"][ATTR].update(spec="topk")),
    "provenance-a-list": ("zarr.json", lambda m: m["attributes"][ATTR].update(provenance=[1])),
    "provenance-field-type": ("zarr.json", lambda m: m["attributes"][ATTR]["provenance"].update(complete="yes")),
}


@pytest.mark.parametrize("edit", list(METADATA_EDITS))
def test_edited_metadata_is_refused_in_one_line(edit, damaged, run_cli, tmp_path):
    _, path, _ = damaged("topk-fp16")
    file, change = METADATA_EDITS[edit]
    if edit == "no-crc32c":
        damage_file = path / "topk_gaps" / "c" / "1" / "1" / "0"
        raw = bytearray(damage_file.read_bytes())
        raw[len(raw) // 2] ^= 0x20
        damage_file.write_bytes(bytes(raw))
    _edit_json(path / file, change)
    start = time.perf_counter()
    with pytest.raises(LogitcacheError):
        _read_view(path, 1)
    for command in (["verify", path, "--samples", "0"], ["info", path], _train(path, tmp_path / "run")):
        _one_error_line(run_cli(command), "re-dump")
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "run").exists()


def test_a_store_of_the_previous_format_is_refused_and_replaced_by_overwrite(damaged, run_cli, assert_same_store,
                                                                          tmp_path):
    ref, path, dump_command = damaged("topk-fp16")
    _edit_json(path / "zarr.json", lambda m: m["attributes"][ATTR]["spec"].update(format_version=OLDEST_READABLE - 1))
    for command in (["verify", path, "--samples", "0"], _train(path, tmp_path / "run"), dump_command):
        _one_error_line(run_cli(command), "made by an older logitcache", "re-dump it")
    again = run_cli([*dump_command, "--overwrite"])
    assert again.code == 0, again.err
    assert_same_store(ref, path)


def test_without_checksums_a_flipped_byte_is_found_by_the_digest(run_cli, damage, tmp_path):
    """``--no-checksum`` stores have no per-chunk checksum: a flipped byte inside a compressed
    chunk may decode to plausible numbers, which the block's digest then refuses."""
    path = tmp_path / "c.zarr"
    assert run_cli(["dump", *BASE, *LAYOUTS["topk-fp16"][0], "--no-checksum", "--out", path]).code == 0
    damage(path / "topk_gaps" / "c" / "1" / "1" / "0", "flip")
    result = run_cli(["verify", path, "--samples", "0"])
    assert result.code == 1 and "FAIL digests chunk digests/c/1/1: view 1 block 1: content does not match" in result.err
    with pytest.raises(CacheCorrupt, match="view 1 block 1: content does not match its digest"):
        _read_view(path, 1)
