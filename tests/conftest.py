"""Shared fixtures: tiny caches made once per session, and two ways to run the CLI.

``run_cli(argv)`` calls ``logitcache_cli.main.main`` in this process (fast; what most CLI
tests use) and ``run_console(argv)`` runs the installed ``logitcache`` console script in a
subprocess (what a user runs; used by the end-to-end and kill/resume tests). Both return
``CliResult(code, out, err)``.

Every cache here is tiny: the shipped digits (1,438 8×8 images) or ``synthetic:n=64,size=8``
through ``resnet8`` with ``--random-init``, a few views and small chunks, so that the whole
stage-one suite runs in well under three minutes on two CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import zarr

from logitcache.dump import DumpConfig, dump
from logitcache.store.encodings import get_encoding
from logitcache.store.zarr_store import DIGESTS, ZarrStore, block_digest

# Test machines have two cores and often run several test processes at once; OpenMP threads
# spin-waiting for a busy core then make a tiny teacher's forward pass ~30x slower. One thread
# per process keeps the suite's runtime independent of what else runs beside it.
torch.set_num_threads(1)

# The CLI form of the tiny digits dump; the session cache below is the same config.
DIGITS_ARGS = [
    "--teacher", "resnet8", "--dataset", "digits", "--random-init", "--views", "2", "--topk", "5",
    "--chunk-samples", "256", "--device", "cpu", "--quiet",
]
DIGITS_CONFIG = DumpConfig(
    teacher="resnet8", dataset="digits", out="", random_init=True, views=2, topk=5, chunk_samples=256,
    device="cpu", progress=False,
)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory):
    """A dump without --out files its store in LOGITCACHE_HOME: never the user's, in tests
    (subprocesses inherit it too)."""
    old = os.environ.get("LOGITCACHE_HOME")
    os.environ["LOGITCACHE_HOME"] = str(tmp_path_factory.mktemp("cache_home"))
    yield
    if old is None:
        os.environ.pop("LOGITCACHE_HOME", None)
    else:
        os.environ["LOGITCACHE_HOME"] = old


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


def _run_cli(argv: list[str]) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        from logitcache_cli.main import main

        try:
            main([str(a) for a in argv])
        except SystemExit as e:  # click's standalone mode always exits
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def console_command() -> list[str]:
    """The installed ``logitcache`` console script beside this interpreter."""
    script = Path(sys.executable).with_name("logitcache")
    if not script.exists():
        pytest.skip("the logitcache console script is not installed (pip install -e .)")
    return [str(script)]


def console_env() -> dict[str, str]:
    env = dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("FORCE_COLOR", None)
    return env


def _run_console(argv: list[str], timeout: float = 120) -> CliResult:
    proc = subprocess.run(
        [*console_command(), *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=console_env()
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(argv) -> CliResult``: the CLI in this process (session-scoped: shared fixtures
    may make their stores and runs with it)."""
    return _run_cli


@pytest.fixture
def run_console():
    """``run_console(argv) -> CliResult``: the ``logitcache`` console script in a subprocess."""
    return _run_console


@pytest.fixture(scope="session")
def make_cache(tmp_path_factory):
    """``make_cache(**DumpConfig fields) -> Path``: a complete store, made once per distinct config.

    Stores are shared by every test of the session: never modify one; copy it first
    (``copy_store``).
    """
    made: dict[tuple, Path] = {}

    def make(**fields) -> Path:
        key = tuple(sorted(fields.items()))
        if key not in made:
            out = tmp_path_factory.mktemp("cache") / "c.zarr"
            config = replace(DIGITS_CONFIG, out=str(out), **fields)
            result = dump(config)
            assert result.complete
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def digits_cache(make_cache) -> Path:
    """A complete top-5 fp16 digits store: 1,438 samples, clean view + 2 views, chunks of 256."""
    return make_cache()


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock*"))
    return dst


def snapshot(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``path`` (to prove nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def reseal(path: Path) -> Path:
    """Rewrite every digest of a store from its content, as a dump that had computed the (edited)
    values itself would have: for tests of what only the teacher replay or the dataset can find."""
    store = ZarrStore.open(path, read_only=False)
    n, layout = store.spec.dataset.num_samples, store.spec.layout
    store.write_labels(store.read("labels"))
    for v in range(store.spec.views.total):
        for b in range(layout.num_blocks(n)):
            store.array(DIGESTS)[v, b] = block_digest(v, b, store.read_block(v, b))
    return path


def _index_array(path: Path, name: str):
    spec = ZarrStore.open(path).spec
    encoding = get_encoding(spec.encoding, spec.dataset.num_classes)
    count = spec.encoding.k if name == "topk_indices" else encoding.slots
    field = encoding.index_field(name, count).name
    return zarr.open_group(str(path), mode="r+")[field], encoding, count


def read_indices(path: Path, name: str) -> np.ndarray:
    """(views, samples, count) int64 class indices of ``topk_indices`` or ``sample_indices``, read
    straight from zarr and unpacked as the store lays them out (tests that edit stores by hand)."""
    arr, encoding, count = _index_array(path, name)
    return encoding.load_indices({arr.basename: arr[:]}, name, count)


def write_indices(path: Path, name: str, view: int, sample: int, row: np.ndarray) -> None:
    """Write one pair's class indices straight through zarr (checksums stay valid; digests do not)."""
    arr, encoding, _ = _index_array(path, name)
    arr[view, sample] = encoding.store_indices(name, np.asarray(row)[None])[arr.basename][0]


@pytest.fixture(name="read_indices")
def _read_indices_fixture():
    return read_indices


@pytest.fixture(name="write_indices")
def _write_indices_fixture():
    return write_indices


@pytest.fixture(name="reseal")
def _reseal_fixture():
    """``reseal(store) -> store``: its digests rewritten to match its (edited) content."""
    return reseal


@pytest.fixture(name="copy_store")
def _copy_store_fixture():
    """``copy_store(src, dst) -> dst``: a private copy of a shared store (lock files left out)."""
    return copy_store


@pytest.fixture(name="snapshot")
def _snapshot_fixture():
    """``snapshot(path) -> {relative path: bytes}`` of every file under a folder."""
    return snapshot


@pytest.fixture
def digits_args() -> list[str]:
    """The CLI options of the tiny digits dump (everything but ``--out``)."""
    return list(DIGITS_ARGS)


# The lazy-import checks of several test files read what one fresh process imported, rather than
# starting a process (and importing torch) each.
_IMPORT_PROBE = """
import json, sys
import logitcache, logitcache.dump, logitcache.store.reader, logitcache.verify, logitcache.train
import logitcache.sweep, logitcache.demo
from logitcache.train import TrainConfig, train
train(TrainConfig(method="ce", student="resnet8", dataset="synthetic:n=64,size=8", epochs=1, device="cpu", workers=0,
                  progress=False, out=sys.argv[1]))
library = sorted(sys.modules)
import logitcache_cli.main
print(json.dumps({"library": library, "cli": sorted(sys.modules)}))
"""


@pytest.fixture(scope="session")
def fresh_imports(tmp_path_factory) -> dict[str, set[str]]:
    """Every module a fresh process had imported: ``library`` after importing logitcache (dump,
    store.reader, verify, train, sweep, demo) and training resnet8 one epoch with ``ce``; ``cli``
    after importing ``logitcache_cli.main`` too."""
    out = tmp_path_factory.mktemp("fresh") / "run"
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(out)], capture_output=True, text=True,
                          timeout=300, env=console_env())
    assert done.returncode == 0, done.stderr
    return {stage: set(modules) for stage, modules in json.loads(done.stdout.splitlines()[-1]).items()}


def loaded(modules: set[str], *packages: str) -> list[str]:
    """The modules of ``packages`` (top-level names or dotted prefixes) among ``modules``."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


@pytest.fixture(name="loaded")
def _loaded_fixture():
    """``loaded(modules, *packages) -> [module]``: which modules of those packages were imported."""
    return loaded


@pytest.fixture
def start_console():
    """``start_console(argv) -> subprocess.Popen``: the console script started, output discarded."""

    def start(argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen([*console_command(), *map(str, argv)], env=console_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return start



# --------------------------------------------------------------------------- language models
@pytest.fixture(scope="session")
def lm_files(tmp_path_factory) -> dict[str, Path]:
    """``text`` (a .txt of ~90 sequences of 16 tokens), ``student`` (a config-only folder) and
    ``teacher`` (the same tokenizer and config with seeded weights, saved as safetensors)."""
    from lm_helpers import lm_text, make_lm_folder

    from logitcache.models.hf import create_hf_model, open_folder

    root = tmp_path_factory.mktemp("lm")
    text = lm_text(900)
    (root / "text.txt").write_text(text)
    student = make_lm_folder(root / "student", text)
    torch.manual_seed(1)
    create_hf_model(f"hf:{student}", open_folder(f"hf:{student}").vocab_size).save(root / "teacher")
    return {"text": root / "text.txt", "student": student, "teacher": root / "teacher"}


@pytest.fixture(scope="session")
def lm_cache(lm_files, tmp_path_factory) -> Path:
    """A complete top-8 fp16 token cache of the tiny teacher (shared: copy it before changing it)."""
    from lm_helpers import lm_dump_args

    out = tmp_path_factory.mktemp("lm_cache") / "c.zarr"
    result = _run_cli(["dump", *lm_dump_args(lm_files), "--out", out])
    assert result.code == 0, result.err
    return out
