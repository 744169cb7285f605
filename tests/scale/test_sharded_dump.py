"""Sharded dump: N processes write disjoint blocks of ONE store; the result equals one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from logitcache.store.zarr_store import DONE, ZarrStore

ARGS = ["dump", "--teacher", "resnet8", "--random-init", "--dataset", "digits", "--views", "3", "--full",
        "--dtype", "fp32", "--chunk-samples", "128", "--device", "cpu", "--quiet"]


def _assert_same_arrays(a: Path, b: Path) -> None:
    left, right = ZarrStore.open(a), ZarrStore.open(b)
    assert left.spec == right.spec
    for name in left.array_names():
        np.testing.assert_array_equal(left.read(name), right.read(name), err_msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_cli) -> Path:
    """The one-process store, dumped in this process (the shards are what runs as processes)."""
    out = tmp_path_factory.mktemp("sharded") / "reference.zarr"
    done = run_cli([*ARGS, "--out", out])
    assert done.code == 0, done.err
    return out


def test_two_shard_processes_equal_one(reference, tmp_path, start_script):
    out = tmp_path / "sharded.zarr"
    procs = [start_script("logitcache", [*ARGS, "--out", out, "--shard", f"{i}/2"]) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outputs]
    # Exactly one of them found every block done and completed the store.
    assert sum("complete: " in o for o, _ in outputs) >= 1
    assert ZarrStore.open(out).provenance.complete
    _assert_same_arrays(reference, out)


def test_overwrite_started_by_every_shard_at_once(reference, tmp_path, run_cli, start_script):
    """One `--overwrite --shard I/2` command line started by both shards together over a store of
    other settings: exactly one replaces it (under the metadata lock), the other joins."""
    out = tmp_path / "sharded.zarr"
    assert run_cli([*ARGS, "--out", out, "--views", "1"]).code == 0
    procs = [start_script("logitcache", [*ARGS, "--out", out, "--overwrite", "--shard", f"{i}/2"]) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outputs]
    assert sum("which was made with other settings" in o for o, _ in outputs) == 1
    assert ZarrStore.open(out).provenance.complete
    _assert_same_arrays(reference, out)


def test_shards_one_after_another_then_finalize(reference, tmp_path, run_cli):
    out = tmp_path / "s.zarr"
    first = run_cli([*ARGS, "--out", out, "--shard", "1/3"])
    assert first.code == 0 and "not complete yet" in first.out
    early = run_cli([*ARGS, "--out", out, "--finalize"])
    assert early.code == 2 and "blocks are not written yet" in early.err
    for i in (0, 2):
        assert run_cli([*ARGS, "--out", out, "--shard", f"{i}/3"]).code == 0
    state = ZarrStore.open(out).progress()
    assert (state == DONE).all()
    done = run_cli([*ARGS, "--out", out, "--finalize"])
    assert done.code == 0 and "complete: " in done.out
    _assert_same_arrays(reference, out)


def test_shard_blocks_are_disjoint(tmp_path, run_cli):
    """Each shard writes only its own blocks (round-robin over (view, block))."""
    out = tmp_path / "d.zarr"
    assert run_cli([*ARGS, "--out", out, "--shard", "0/2"]).code == 0
    state = ZarrStore.open(out).progress()
    views, blocks = state.shape
    for v in range(views):
        for b in range(blocks):
            assert (state[v, b] == DONE) == ((v * blocks + b) % 2 == 0)


def test_bad_shard_refused(tmp_path, run_cli):
    out = tmp_path / "x.zarr"
    for bad in ("2/2", "a/b", "0/0"):
        result = run_cli([*ARGS, "--out", out, "--shard", bad])
        assert result.code == 2 and "--shard" in result.err
    assert not out.exists()


def test_torchrun_dump_equals_one_process(reference, tmp_path, run_script):
    out = tmp_path / "tr.zarr"
    proc = run_script("torchrun", ["--standalone", "--nproc-per-node", "2", "-m", "logitcache", *ARGS, "--out", out])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ZarrStore.open(out).provenance.complete
    _assert_same_arrays(reference, out)


def test_token_dump_shards_one_after_another_equal_one_process(lm_files, lm_cache, tmp_path, run_cli):
    """Text rows go through the same blocks: shards of a token dump, finalised, equal the one-process cache."""
    from lm_helpers import lm_dump_args

    out = tmp_path / "t.zarr"
    for i in range(3):
        shard = run_cli(["dump", *lm_dump_args(lm_files), "--out", out, "--shard", f"{i}/3"])
        assert shard.code == 0 and " tokens) in " in shard.out and " tokens/s" in shard.out, shard.out + shard.err
    done = run_cli(["dump", *lm_dump_args(lm_files), "--out", out, "--finalize"])
    assert done.code == 0 and "complete: " in done.out and "(teacher test next-token accuracy " in done.out, done.err
    _assert_same_arrays(lm_cache, out)
