"""Operations around a store, attacked: --overwrite under sharding and beside foreign files,
planted symlinks at pack/unpack's temporary names, junk archives and homes, files a killed
shard leaves, file modes, the re-run an overflow error suggests, what dump says it did.

Each test builds the fault for real (a file, a symlink, a damaged archive, a killed writer's
temporary file) on tiny synthetic or digits stores, through the CLI where a user would meet it.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from logitcache import _utils
from logitcache.models import create_model
from logitcache.store.zarr_store import DONE, ZarrStore

SHARDS = 3


def _dump(run_cli, dump_args, out, *extra):
    return run_cli(["dump", *dump_args, "--out", out, *extra])


# --------------------------------------------------------------------------- 17.6 --overwrite --shard
def test_every_shard_running_overwrite_fills_one_store(run_cli, dump_args, dump_reference, assert_same_store,
                                                       snapshot, tmp_path):
    """The Slurm-array case: one `dump --overwrite --shard $I/N` command line run by every shard, one
    after another, over a store of other settings. The first replaces it; the others join it."""
    out = tmp_path / "s.zarr"
    assert _dump(run_cli, dump_args, out, "--views", "1").code == 0  # an old store of other settings
    outputs = [_dump(run_cli, dump_args, out, "--overwrite", "--shard", f"{i}/{SHARDS}") for i in range(SHARDS)]
    assert [r.code for r in outputs] == [0] * SHARDS, [r.err for r in outputs]
    assert "replaced" in outputs[0].out and "which was made with other settings" in outputs[0].out
    assert all("already holds a store of these settings (joined)" in r.out for r in outputs[1:])
    assert "complete: " in outputs[-1].out
    assert_same_store(dump_reference(), out)
    # Days later, the same command on the complete store: kept as it is (its blocks are a function
    # of the settings, which are the same), nothing rewritten.
    before = snapshot(out)
    again = _dump(run_cli, dump_args, out, "--overwrite", "--shard", f"0/{SHARDS}")
    assert again.code == 0 and "(complete: kept)" in again.out and "wrote 0 blocks" in again.out
    assert snapshot(out) == before


# --------------------------------------------------------------------------- 17.7 foreign files
def test_overwrite_never_deletes_files_it_does_not_own(run_cli, dump_args, dump_reference, snapshot, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(dump_reference(), out)
    (out / "MY_NOTES.txt").write_text("precious")
    (out / "my_results").mkdir()
    (out / "my_results" / "table.csv").write_text("1,2")
    before = snapshot(out)
    result = _dump(run_cli, dump_args, out, "--views", "1", "--overwrite")
    assert result.code == 2 and result.err.count("error:") == 1
    assert "MY_NOTES.txt, my_results" in result.err and "nothing was deleted" in result.err
    assert snapshot(out) == before


def test_a_new_store_is_not_made_among_foreign_files(run_cli, dump_args, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = _dump(run_cli, dump_args, out)
    assert result.code == 2 and "is not a logitcache store (it holds notes.txt)" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------- 17.9 planted symlinks
def test_pack_does_not_write_through_a_planted_symlink(run_cli, digits_cache, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    (tmp_path / ".p.zip.tmp").symlink_to(victim)
    result = run_cli(["pack", digits_cache, tmp_path / "p.zip"])
    assert result.code == 0, result.err
    assert victim.read_text() == "do not touch"
    packed = tmp_path / "p.zip"
    assert not packed.is_symlink() and zipfile.is_zipfile(packed)
    assert stat.S_IMODE(packed.stat().st_mode) == _utils.umask_mode(0o666)  # as a plain open() makes it


def test_pack_takes_only_the_stores_own_files(run_cli, digits_cache, copy_store, tmp_path):
    src = copy_store(digits_cache, tmp_path / "c.zarr")
    (src / "MY_NOTES.txt").write_text("mine")
    (src / "lse" / f"zarr.json.{'cd' * 16}.partial").write_text("{")  # a killed writer's
    assert run_cli(["pack", src, tmp_path / "p.zip"]).code == 0
    with zipfile.ZipFile(tmp_path / "p.zip") as z:
        names = z.namelist()
    assert "zarr.json" in names and not [n for n in names if "NOTES" in n or n.endswith(".partial")]


@pytest.fixture(scope="module")
def packed(digits_cache, tmp_path_factory) -> Path:
    from logitcache.store.pack import pack

    return pack(digits_cache, tmp_path_factory.mktemp("packed") / "p.zip")


def test_unpack_does_not_extract_through_a_planted_symlink(run_cli, packed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".u.zarr.tmp").symlink_to(elsewhere)
    result = run_cli(["unpack", packed, tmp_path / "u.zarr"])
    assert result.code == 0, result.err
    assert list(elsewhere.iterdir()) == []
    assert (tmp_path / "u.zarr").is_dir() and not (tmp_path / "u.zarr").is_symlink()
    assert run_cli(["info", tmp_path / "u.zarr"]).code == 0


def test_unpack_of_a_file_that_is_also_a_folder(run_cli, tmp_path, packed):
    """Entries ``sl`` then ``sl/x``: refused in one line before extraction, nothing left behind."""
    bad = tmp_path / "bad.zip"
    shutil.copy(packed, bad)
    with zipfile.ZipFile(bad, "a") as z:
        z.writestr("sl", b"file")
        z.writestr("sl/x", b"inside")
    result = run_cli(["unpack", bad, tmp_path / "u.zarr"])
    assert result.code == 2 and "holds both a file 'sl' and 'sl/x'" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


# --------------------------------------------------------------------------- 17.10 junk archives and homes
def _junk_zips(root: Path, packed: Path) -> list[Path]:
    (root / "notzip.zip").write_text("this is not a zip")
    truncated = root / "truncated.zip"
    truncated.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    return [root / "notzip.zip", truncated]


@pytest.mark.parametrize("command", ["info", "verify", "train"])
def test_a_damaged_zip_is_one_line_everywhere(command, run_cli, packed, tmp_path):
    for junk in _junk_zips(tmp_path, packed):
        argv = {"info": ["info", junk], "verify": ["verify", junk, "--random-init", "--samples", "0"],
                "train": ["train", "--cache", junk, "--dataset", "digits", "--student", "resnet8", "--method", "kd",
                          "--epochs", "1", "--device", "cpu", "--out", tmp_path / "run"]}[command]
        result = run_cli(argv)
        assert result.code == 2, result
        assert result.err.count("error:") == 1 and "is not a readable .zip archive" in result.err
        assert "Traceback" not in result.err and not (tmp_path / "run").exists()


def test_junk_in_a_shared_home_is_skipped_with_a_warning(run_cli, packed, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(packed, home / "good.zip")
    junk = _junk_zips(home, packed)
    (home / "empty.zarr").mkdir()
    result = run_cli(["ls", "--home", home])
    assert result.code == 0, result.err
    assert str(home / "good.zip") in result.out
    for bad in [*junk, home / "empty.zarr"]:
        assert f"warning: skipped {bad}: " in result.err
    # Discovery for everyone else still works: train without --cache finds the good one.
    monkeypatch.setenv("LOGITCACHE_HOME", str(home))
    from logitcache.cache_home import find_cache
    from logitcache.datasets import open_dataset

    data = open_dataset("digits")
    found, _ = find_cache(dataset_name="digits", split="train", num_samples=len(data), num_classes=10,
                          fingerprint=data.fingerprint)
    assert found.location == str(home / "good.zip")


def test_a_home_that_is_a_file(run_cli, dump_args, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("oops")
    monkeypatch.setenv("LOGITCACHE_HOME", str(home))
    listed = run_cli(["ls"])
    assert listed.code == 2 and f"the cache home {home} is a file" in listed.err
    dumped = run_cli(["dump", *dump_args])  # no --out: filed in the home
    assert dumped.code == 2 and "is a file, not a folder" in dumped.err and "Traceback" not in dumped.err
    assert home.read_text() == "oops"


# --------------------------------------------------------------------------- 17.11 leftovers, modes, re-runs
def test_a_killed_shards_temporary_file_is_gone_from_the_finished_store(run_cli, dump_args, tmp_path):
    out = tmp_path / "s.zarr"
    assert _dump(run_cli, dump_args, out, "--shard", "0/2").code == 0
    # What zarr's LocalStore leaves when its writer is SIGKILLed between writing and renaming.
    left = out / "lse" / "c" / "1" / f"0.{'ab' * 16}.partial"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"half")
    finished = _dump(run_cli, dump_args, out, "--shard", "1/2")
    assert finished.code == 0 and "complete: " in finished.out
    assert not [p for p in out.rglob("*.partial")]
    assert run_cli(["verify", out, "--samples", "0"]).code == 0


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_honour_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        _utils.atomic_write_bytes(tmp_path / "config.json", b"{}")
        _utils.atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "last.pt")
    finally:
        os.umask(old)
    for name in ("config.json", "last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_the_rerun_an_overflow_suggests_is_not_refused(run_cli, tmp_path):
    """fp16 overflows on the first block: the suggested `--dtype bf16` on the same --out replaces
    the store that holds nothing, saying so, instead of asking for --overwrite."""
    state = create_model("resnet8", num_classes=10).state_dict()
    state["fc.bias"][3] = 1e5  # logits 1e5 apart: beyond what fp16 stores (65504)
    torch.save(state, tmp_path / "big.pt")
    args = ["--teacher", "resnet8", "--dataset", "digits", "--checkpoint", tmp_path / "big.pt", "--views", "1", "--full",
            "--chunk-samples", "256", "--device", "cpu", "--quiet"]
    out = tmp_path / "c.zarr"
    first = run_cli(["dump", *args, "--out", out])
    assert first.code == 2 and "bf16" in first.err
    second = run_cli(["dump", *args, "--out", out, "--dtype", "bf16"])
    assert second.code == 0, second.err
    assert "an unfinished store of other settings (encoding.dtype: " in second.out and "with no block written" in second.out
    assert ZarrStore.open(out).spec.encoding.dtype == "bf16"


def test_a_store_with_blocks_written_still_needs_overwrite(run_cli, dump_args, tmp_path):
    out = tmp_path / "s.zarr"
    assert _dump(run_cli, dump_args, out, "--shard", "0/2").code == 0
    assert (ZarrStore.open(out).progress() == DONE).any()
    refused = _dump(run_cli, dump_args, out, "--views", "1")
    assert refused.code == 2 and "pass --overwrite" in refused.err


# --------------------------------------------------------------------------- 16.13 what dump says
def test_resuming_is_said_only_for_blocks_done_before(run_cli, dump_args, tmp_path):
    out = tmp_path / "s.zarr"
    first = _dump(run_cli, dump_args, out, "--shard", "0/2")
    fresh = _dump(run_cli, dump_args, out, "--shard", "1/2")  # shard 0's blocks are not this one's resume
    assert first.code == fresh.code == 0
    assert "resuming:" not in first.out and "resuming:" not in fresh.out
    again = _dump(run_cli, dump_args, out, "--shard", "1/2")
    assert "resuming: 12 of 12 blocks of shard 1/2 already done" in again.out


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_only_rank_0_says_it(rank, run_cli, dump_args, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    first = _dump(run_cli, dump_args, out)  # shard RANK/2
    again = _dump(run_cli, dump_args, out)
    assert first.code == again.code == 0
    assert ("augmentation: crop(8, pad=1)+flip" in first.out) == (rank == 0)
    assert ("resuming: 12 of 12 blocks of shard" in again.out) == (rank == 0)


def test_dump_spells_out_the_augmentation_it_read(run_cli, digits_args, tmp_path):
    result = run_cli(["dump", *digits_args, "--augment", "crop:8", "--out", tmp_path / "c.zarr"])
    assert result.code == 0 and "augmentation: crop(8, pad=0)+flip" in result.out


def test_a_url_nobody_can_open_is_one_line(run_cli, dump_args):
    for argv in (["dump", *dump_args, "--out", "nosuch://x/c.zarr"], ["info", "nosuch://x/c.zarr"]):
        result = run_cli(argv)
        assert result.code == 2 and "cannot open nosuch://x/c.zarr (Protocol not known: nosuch)" in result.err
