"""Kill anywhere during dump: re-running the command resumes to the store an uninterrupted run makes.

Each test SIGKILLs a real ``logitcache dump`` process, at an exact point (``_kill_at.py``: after
k progress markers for several k, inside a block, half-way through a chunk file or a metadata
write, before finalising, while creating or overwriting a store) or at seeded random moments
from outside. After the kill: every zarr.json parses, every file at a chunk key decodes, every
block marked done equals the reference. Then the same command runs again, and the store must
equal the uninterrupted one file for file (only the group metadata's timestamps differ).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from logitcache._utils import plural
from logitcache.errors import CacheError
from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import DONE, WRITING, ZarrStore

TOTAL = 24  # blocks of the DUMP_ARGS store
SHARDED = ("--chunk-samples", "8", "--shard-chunks", "2")  # the same 24 blocks, each a shard of 2 chunks
# Strong per-sample augmentation and mixed views: resumed blocks replay them from the seed.
STRONG = ("--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0")

# (kill point, layout). Each block writes: marker WRITING, 5 chunk files, marker DONE; before the
# first block come the group's zarr.json, 7 arrays' zarr.json and 6 chunks of labels.
POINTS = [
    ("mark:0", ()),  # store and labels written, no marker yet
    ("mark:1", ()),  # first block marked WRITING, nothing done
    ("mark:13", ()),  # mid-way
    ("mark:47", ()),  # every block but the last done
    ("block:0", ()),  # first block: one array written, the rest not
    ("block:9", SHARDED),  # a shard half written
    ("chunk:0", ()),  # half-way through the very first file: the group's zarr.json
    ("chunk:3", ()),  # half-way through an array's zarr.json
    ("chunk:40", ()),  # half-way through a data chunk
    ("chunk:60", SHARDED),  # half-way through a shard
    ("create:4", ()),  # half the arrays created
    ("finalize", ()),  # every block done, store not yet complete
    ("meta", ()),  # half-way through the zarr.json that marks it complete
    ("mark:13", STRONG),  # mid-way through an augmented, mixed dump
]


@pytest.mark.parametrize(("point", "layout"), POINTS, ids=[f"{p}{'-sharded' if l == SHARDED else '-strong' if l else ''}" for p, l in POINTS])
def test_kill_at_a_point_then_resume(point, layout, run_cli, dump_reference, dump_args, kill_at, check_killed_store,
                                     assert_same_store, tmp_path):
    ref = dump_reference(layout)
    out = tmp_path / "c.zarr"
    command = ["dump", *dump_args, *layout, "--out", out]
    kill_at(point, command)

    state = check_killed_store(out, ref)
    done = 0 if state is None else int((state == DONE).sum())
    if point.startswith("block"):
        assert int((state == WRITING).sum()) == 1  # the block being written is not marked done
    if point in ("finalize", "meta"):
        assert done == TOTAL
    elif state is not None:
        assert done < TOTAL
    if state is not None:  # an unfinished store is never read
        with pytest.raises(CacheError):
            CacheReader(out)

    resumed = run_cli(command)
    assert resumed.code == 0, resumed.err
    if done:
        assert f"resuming: {done} of {TOTAL} blocks already done" in resumed.out
    assert f"wrote {plural(TOTAL - done, 'block')} (" in resumed.out
    assert_same_store(ref, out)


@pytest.mark.parametrize("point", ["mark:13", "block:0", "chunk:40", "finalize"])
def test_kill_a_sampled_dump_then_resume(point, run_cli, dump_reference, sampled_dump_args, kill_at, check_killed_store,
                                         assert_same_store, tmp_path):
    """The draws depend only on the logits and the stored view seeds, so a resumed sampled dump
    ends byte-identical too."""
    ref = dump_reference(base=tuple(sampled_dump_args))
    out = tmp_path / "c.zarr"
    command = ["dump", *sampled_dump_args, "--out", out]
    kill_at(point, command)
    state = check_killed_store(out, ref)
    assert state is not None and int((state == DONE).sum()) < TOTAL or point == "finalize"
    resumed = run_cli(command)
    assert resumed.code == 0, resumed.err
    assert_same_store(ref, out)
    assert ZarrStore.open(out).spec.encoding.kind == "sampled"


@pytest.mark.parametrize("point", ["block:5", "finalize"])
def test_kill_a_token_dump_then_resume(point, run_cli, lm_files, lm_cache, kill_at, check_killed_store,
                                       assert_same_store, tmp_path):
    """A language model's token dump (rows = positions, blocks of whole sequences) resumes to the
    store an uninterrupted dump writes, array for array."""
    from lm_helpers import lm_dump_args

    out = tmp_path / "c.zarr"
    command = ["dump", *lm_dump_args(lm_files), "--out", out]
    kill_at(point, command, timeout=240)
    state = check_killed_store(out, lm_cache)
    assert state is not None and (int((state == DONE).sum()) < state.size or point == "finalize")
    resumed = run_cli(command)
    assert resumed.code == 0, resumed.err
    assert_same_store(lm_cache, out)


def test_killed_twice_in_a_row(run_cli, dump_reference, dump_args, kill_at, check_killed_store, assert_same_store,
                               tmp_path):
    ref = dump_reference()
    out = tmp_path / "c.zarr"
    command = ["dump", *dump_args, "--out", out]
    kill_at("mark:9", command)
    kill_at("chunk:12", command)  # the resumed run is killed too, mid-chunk
    state = check_killed_store(out, ref)
    assert 0 < int((state == DONE).sum()) < TOTAL
    assert run_cli(command).code == 0
    assert_same_store(ref, out)


@pytest.mark.parametrize(("layout", "faults"),
                         [((), ("flip", "truncate", "delete")), (SHARDED, ("flip", "empty", "truncate"))],
                         ids=["chunks", "shards"])
def test_resume_rechecks_blocks_marked_done(layout, faults, run_cli, dump_reference, dump_args, kill_at,
                                            check_killed_store, damage, assert_same_store, tmp_path):
    """Storage objects of blocks a killed run marked done are re-read against their checksums; a
    flipped, truncated, emptied or missing one is rewritten, not trusted."""
    ref = dump_reference(layout)
    out = tmp_path / "c.zarr"
    command = ["dump", *dump_args, *layout, "--out", out]
    kill_at("mark:27", command)  # 13 blocks done
    state = check_killed_store(out, ref)
    done = int((state == DONE).sum())
    assert done == 13 and state[0].tolist() == [DONE] * 6
    for key, fault in zip(("topk_gaps/c/0/1/0", "lse/c/0/3", "seeds/c/0/5"), faults):  # shard or chunk: same keys
        damage(out / key, fault)
    resumed = run_cli(command)
    assert resumed.code == 0, resumed.err
    assert f"resuming: {done} of {TOTAL} blocks already done" in resumed.out
    assert f"wrote {plural(TOTAL - done + 3, 'block')} (" in resumed.out
    assert_same_store(ref, out)


def test_kill_while_overwriting_another_store(run_cli, dump_reference, dump_args, kill_at, assert_same_store, copy_store,
                                              tmp_path):
    """``--overwrite`` killed half-way through deleting the old store: the old store is never taken
    for a complete one, and the same command finishes the job."""
    ref = dump_reference()
    out = copy_store(dump_reference(SHARDED), tmp_path / "c.zarr")  # a store with other settings
    command = ["dump", *dump_args, "--out", out, "--overwrite"]
    for entries in (3, 0):  # killed after some entries are gone, then again at once
        kill_at(f"delete:{entries}", command)
        assert (out / "zarr.json").exists()  # deleted last: the folder still says what it is
        with pytest.raises(CacheError):
            CacheReader(out)
    resumed = run_cli(command)
    assert resumed.code == 0, resumed.err
    assert_same_store(ref, out)


def _markers(out) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(out / "progress" / "c") for f in files if ".partial" not in f]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_at_random_moments(seed, run_cli, run_console, start_console, make_cache, check_killed_store,
                                assert_same_store, tmp_path):
    """SIGKILL from outside at seeded random moments: after a random number of markers plus a
    random delay, or after a random time from the start. The same command resumes."""
    args = ["--teacher", "resnet8", "--dataset", "digits", "--random-init", "--views", "4", "--topk", "5",
            "--chunk-samples", "64", "--batch-size", "64", "--device", "cpu", "--quiet"]
    ref = make_cache(views=4, chunk_samples=64, batch_size=64)
    total = 5 * 23
    rng = np.random.default_rng(seed)
    out = tmp_path / "c.zarr"
    command = ["dump", *args, "--out", out]
    proc = start_console(command)
    deadline = time.monotonic() + 120
    try:
        if seed < 2:
            k = int(rng.integers(0, total - 20))
            while len(_markers(out)) < k:
                assert proc.poll() is None, "the dump ended before it could be killed"
                assert time.monotonic() < deadline
                time.sleep(0.001)
            time.sleep(float(rng.uniform(0, 0.01)))
        else:
            time.sleep(float(rng.uniform(1.0, 3.0)))  # anywhere from start-up to mid-dump
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    if proc.returncode != -signal.SIGKILL:  # only the delay-based kill may miss a short dump
        assert seed == 2 and proc.returncode == 0
    elif out.exists():
        check_killed_store(out, ref)
    resumed = (run_console if seed == 2 else run_cli)(command)  # the console script once is enough
    assert resumed.code == 0, resumed.err
    assert_same_store(ref, out)
