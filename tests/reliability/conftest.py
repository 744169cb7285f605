"""Shared helpers of the reliability tests: real faults, injected into real stores and processes.

``kill_at(point, argv)`` runs the installed CLI in a subprocess that SIGKILLs itself at an exact
point (``_kill_at.py`` lists them); ``store_files`` / ``assert_same_store`` compare stores byte
for byte; ``damage`` flips, truncates or deletes a file; ``check_killed_store`` asserts what a
kill may leave behind. Every store here is tiny (synthetic 8x8 images or the shipped digits,
``resnet8 --random-init``), so that the whole family runs in well under three minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from logitcache.store.format import ATTR
from logitcache.store.zarr_store import DIGESTS, DONE, PROGRESS, ZarrStore

KILL_AT = Path(__file__).with_name("_kill_at.py")
SYNTHETIC = "synthetic:n=96,size=8"
# 96 samples in blocks of 16 over clean + 3 views: 24 blocks of 6 arrays each.
DUMP_ARGS = ["--teacher", "resnet8", "--dataset", SYNTHETIC, "--random-init", "--views", "3", "--topk", "3",
             "--chunk-samples", "16", "--batch-size", "16", "--device", "cpu", "--quiet"]
# The same 24 blocks (of 5 data arrays, as top-k's) of 5 classes drawn at T = 2 per pair.
SAMPLED_DUMP_ARGS = [*DUMP_ARGS[: DUMP_ARGS.index("--topk")], "--sample", "5", "--sample-temperature", "2",
                     *DUMP_ARGS[DUMP_ARGS.index("--topk") + 2 :]]


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("FORCE_COLOR", None)
    return env


def kill_at(point: str, argv: list, *, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``logitcache argv`` until ``point`` and assert it died there by SIGKILL."""
    proc = subprocess.run([sys.executable, str(KILL_AT), point, "--", *map(str, argv)], env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point} (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def start_at(point: str, argv: list) -> subprocess.Popen:
    """``logitcache argv`` with a kill point (e.g. ``pause:N:FILE``), started, not waited for."""
    return subprocess.Popen([sys.executable, str(KILL_AT), point, "--", *map(str, argv)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def store_files(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of a store's files, lock files left out."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def assert_same_store(ref: Path, path: Path) -> None:
    """Array for array equal, and file for file: every chunk byte-identical, no stray file; the group
    metadata differs from the reference only in its timestamps."""
    a, b = ZarrStore.open(ref), ZarrStore.open(path)
    assert a.spec == b.spec and b.provenance.complete
    for name in a.array_names():
        x, y = a.read(name), b.read(name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f"array {name} differs"
    x, y = store_files(ref), store_files(path)
    assert sorted(x) == sorted(y), f"files differ: {sorted(set(x) ^ set(y))}"
    for key in x:
        if key != "zarr.json":
            assert x[key] == y[key], f"{key} differs"
    prov = [json.loads(s["zarr.json"])["attributes"][ATTR]["provenance"] for s in (x, y)]
    for p in prov:
        for stamp in ("created_at", "finished_at"):
            p.pop(stamp)
    assert prov[0] == prov[1]


def check_killed_store(path: Path, ref: Path) -> np.ndarray | None:
    """What a killed dump may leave: metadata that parses, no file at a chunk key that does not
    decode, and every block marked done equal to the reference. Returns the markers (None: no
    store yet)."""
    for meta in path.rglob("zarr.json"):
        json.loads(meta.read_text())  # never torn
    if not (path / "zarr.json").exists():
        assert not [p for p in path.rglob("*") if p.is_file() and "/c/" in p.as_posix() and ".partial" not in p.name]
        return None
    store, reference = ZarrStore.open(path), ZarrStore.open(ref)
    names = [n for n in store.array_names() if (path / n / "zarr.json").exists()]
    bad = [p for p in store.check_chunks(names, decode=True) if p.problem != "missing"]
    assert bad == [], f"a file at a chunk key does not decode: {bad}"
    if PROGRESS not in names:
        assert not store.provenance.complete
        return np.zeros((store.spec.views.total, store.spec.layout.num_blocks(store.spec.dataset.num_samples)))
    state = store.progress()
    assert not store.provenance.complete or (state == DONE).all()  # complete only once all is done
    for v, b in np.argwhere(state == DONE):
        want = reference.read_block(int(v), int(b))
        got = store.read_block(int(v), int(b))  # raises if a chunk is missing
        for name in store.block_names():
            assert np.array_equal(got[name], want[name]), f"block ({v}, {b}) is marked done but {name} differs"
        assert store.read_grid(DIGESTS)[v, b] == reference.read_grid(DIGESTS)[v, b], f"digest of block ({v}, {b})"
    return state


def damage(path: Path, how: str) -> None:
    """Flip a byte in the middle, truncate to half, empty, or delete a file."""
    if how == "delete":
        path.unlink()
        return
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x20
    elif how == "truncate":
        raw = raw[: len(raw) // 2]
    elif how == "empty":
        raw = bytearray()
    else:
        raise ValueError(how)
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="session")
def dump_reference(tmp_path_factory):
    """``dump_reference(extra_args, base=DUMP_ARGS) -> Path``: an uninterrupted dump of
    ``base + extra_args`` through the CLI, made once per argument list. Never modify one."""
    from logitcache_cli.main import main

    made: dict[tuple, Path] = {}

    def make(extra: tuple = (), base: tuple = tuple(DUMP_ARGS)) -> Path:
        key = (*base, *extra)
        if key not in made:
            out = tmp_path_factory.mktemp("ref") / "ref.zarr"
            try:
                main(["dump", *key, "--out", str(out)])
            except SystemExit as e:
                assert e.code in (0, None), e
            made[key] = out
        return made[key]

    return make


@pytest.fixture
def dump_args() -> list[str]:
    """The CLI options of the reliability dump (everything but ``--out``): 24 blocks."""
    return list(DUMP_ARGS)


@pytest.fixture
def sampled_dump_args() -> list[str]:
    """The reliability dump with ``--sample 5 --sample-temperature 2`` instead of ``--topk 3``."""
    return list(SAMPLED_DUMP_ARGS)


@pytest.fixture(name="kill_at")
def _kill_at_fixture():
    """``kill_at(point, argv)``: the CLI killed by SIGKILL at ``point`` (see ``_kill_at.py``)."""
    return kill_at


@pytest.fixture(name="start_at")
def _start_at_fixture():
    """``start_at(point, argv) -> Popen``: the CLI with a kill/pause point, not waited for."""
    return start_at


@pytest.fixture(name="assert_same_store")
def _assert_same_store_fixture():
    """``assert_same_store(ref, path)``: equal array for array and file for file."""
    return assert_same_store


@pytest.fixture(name="check_killed_store")
def _check_killed_store_fixture():
    """``check_killed_store(path, ref) -> markers | None``: what a killed dump may leave."""
    return check_killed_store


@pytest.fixture(name="damage")
def _damage_fixture():
    """``damage(file, how)``: ``flip`` a byte, ``truncate`` to half, ``empty`` or ``delete`` it."""
    return damage


def one_line(result) -> str:
    """The refusal of a CLI result: a non-zero exit, no traceback, exactly one ``error:`` line."""
    assert result.code not in (0, None), result.out
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]


@pytest.fixture(name="one_line")
def _one_line_fixture():
    """``one_line(result) -> str``: the single ``error:`` line a refused CLI call printed."""
    return one_line
