"""Property tests over random shapes, dtypes, k, chunk and shard sizes (deterministic: derandomized).

1. Every encoding, every dtype: the log-probabilities a method reads of the stored classes and
   of the true class are within the dtype's tolerance of the truth, the argmax is exact, and
   nothing is NaN (``tests/store/test_encodings.py`` checks each stored field in detail).
2. Encoding does not depend on the batch: a batch encoded in random pieces gives the same
   arrays, bit for bit (the dump encodes teacher batches, the reader decodes any gather).
3. Round trip through a real store: random (V, N, C, k, chunk samples, shard chunks, dtype,
   codec) written block by block with ``ZarrStore.create`` + ``write_block``, then read through
   ``CacheReader`` in random orders and memory budgets, equals decoding what was encoded.
4. Metadata edits (below): harmless or refused in one line.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitcache.errors import LogitcacheError
from logitcache.store.encodings import get_encoding
from logitcache.store.encodings.topk import GAP_STEP, LSE_STEP, TARGET_IN_TOPK, TARGET_STEP
from logitcache.store.format import (
    CacheSpec,
    CodecInfo,
    DatasetInfo,
    EncodingInfo,
    Layout,
    Provenance,
    TeacherInfo,
    ViewsInfo,
)
from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import DONE, ZarrStore
from logitcache.views import ViewSpec

FUZZ = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REL = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}  # half a unit in the last place
TINY = {"fp32": 2.0**-149, "fp16": 2.0**-24, "bf16": 2.0**-133}  # half the smallest subnormal


@st.composite
def encodings(draw, max_classes: int = 300):
    """An EncodingInfo and a class count it is valid for."""
    num_classes = draw(st.integers(2, max_classes))
    kind = draw(st.sampled_from(["full", "topk"]))
    if kind == "full":
        return EncodingInfo(kind="full", dtype=draw(st.sampled_from(["fp32", "fp16", "bf16"]))), num_classes
    k = draw(st.integers(1, num_classes - 1))
    return EncodingInfo(kind="topk", dtype=draw(st.sampled_from(["fp32", "fp16", "bf16", "q8"])), k=k), num_classes


def _logits(seed: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * scale
    if rng.random() < 0.3:  # ties, as a saturated or quantised teacher produces
        z = np.round(z)
    return torch.from_numpy(z.astype(np.float32))


@settings(FUZZ, max_examples=120)
@given(enc=encodings(), batch=st.integers(1, 9), scale=st.sampled_from([1e-3, 0.5, 3.0, 20.0, 300.0]),
       seed=st.integers(0, 2**32 - 1))
def test_decoded_log_probs_are_within_the_dtypes_tolerance(enc, batch, scale, seed):
    info, num_classes = enc
    encoding = get_encoding(info, num_classes)
    logits = _logits(seed, (batch, num_classes), scale)
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, num_classes, batch))
    view = encoding.decode(encoding.encode(logits, labels), labels)
    z = logits.double()
    true_lp = torch.log_softmax(z, dim=1)
    lp = view.log_probs().double()
    assert torch.isfinite(lp).all() and lp.shape == (batch, num_classes)
    assert torch.equal(view.target, labels)
    assert torch.equal(z.gather(1, view.argmax[:, None])[:, 0], z.max(dim=1).values)  # the argmax is exact
    big = float(z.abs().max()) + np.log(num_classes)
    float_noise = 64 * 2.0**-24 * big + 1e-6  # fp32 logsumexp and softmax of values this large
    if info.kind == "full":
        known = torch.ones_like(lp, dtype=torch.bool)
        tol = REL[info.dtype] * 2 * big + 2 * TINY[info.dtype] + float_noise  # each logit and the normaliser
    else:
        known = torch.zeros_like(lp, dtype=torch.bool)
        known.scatter_(1, view.topk_indices, True)
        known.scatter_(1, labels[:, None], True)
        if info.dtype == "q8":
            values = torch.topk(z, info.k, dim=1).values
            clipped = (values[:, :1] - values) > 255 * GAP_STEP
            far = (values[:, 0] - z.gather(1, labels[:, None])[:, 0]) > (TARGET_IN_TOPK - 1) * TARGET_STEP
            keep = ~clipped.any(dim=1) & ~far
            known &= keep[:, None]
            tol = GAP_STEP + LSE_STEP / 2 + TARGET_STEP / 2 + float_noise
        else:
            tol = REL[info.dtype] * big + TINY[info.dtype] + float_noise
    err = (lp - true_lp).abs()[known]
    assert err.numel() == 0 or float(err.max()) <= tol, (float(err.max()), tol)
    # The rest is one distribution: total mass one.
    assert float((view.probs().double().sum(dim=1) - 1).abs().max()) <= 1e-5


@settings(FUZZ, max_examples=60)
@given(enc=encodings(), batch=st.integers(1, 40), cuts=st.lists(st.integers(1, 39), max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_encoding_does_not_depend_on_the_batch(enc, batch, cuts, seed):
    info, num_classes = enc
    encoding = get_encoding(info, num_classes)
    logits = _logits(seed, (batch, num_classes), 4.0)
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, num_classes, batch))
    whole = encoding.encode(logits, labels)
    edges = sorted({0, batch, *(c for c in cuts if c < batch)})
    parts = [encoding.encode(logits[a:b], labels[a:b]) for a, b in zip(edges, edges[1:])]
    for name, arr in whole.items():
        assert np.array_equal(arr, np.concatenate([p[name] for p in parts])), name


@st.composite
def stores(draw):
    """A random but valid store spec."""
    info, num_classes = draw(encodings(max_classes=270))
    n = draw(st.integers(1, 70))
    chunk = draw(st.integers(1, n + 3))
    codec = draw(st.sampled_from([CodecInfo(), CodecInfo(compressor="none"), CodecInfo(compressor="none", checksum=False),
                                  CodecInfo(cname="lz4", clevel=1, shuffle="bitshuffle")]))
    return CacheSpec(
        teacher=TeacherInfo(name="resnet8", weights_sha256="0" * 64, num_classes=num_classes),
        dataset=DatasetInfo(name="synthetic", split="train", num_samples=n, num_classes=num_classes, fingerprint="x"),
        views=ViewsInfo(count=draw(st.integers(1, 3)), clean=draw(st.booleans()), seed=0,
                        augmentation=ViewSpec(kind="crop", size=8).to_json()),
        encoding=info, codec=codec,
        layout=Layout(chunk_samples=chunk, shard_chunks=draw(st.sampled_from([0, 0, 1, 2, 3]))),
        batch_size=7,
    )


@settings(FUZZ, max_examples=40)
@given(spec=stores(), seed=st.integers(0, 2**32 - 1), budget=st.sampled_from(["all", "one view", "none"]),
       reads=st.integers(1, 4))
def test_store_round_trip_through_the_reader(spec, seed, budget, reads):
    n, views, layout = spec.dataset.num_samples, spec.views.total, spec.layout
    encoding = get_encoding(spec.encoding, spec.dataset.num_classes)
    rng = np.random.default_rng(seed)
    logits = _logits(seed, (views, n, spec.dataset.num_classes), float(rng.choice([0.1, 2.0, 50.0])))
    labels = torch.from_numpy(rng.integers(0, spec.dataset.num_classes, n))
    seeds = rng.integers(0, 2**32, (views, n), dtype=np.uint64).astype(np.uint32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.zarr"
        store = ZarrStore.create(path, spec, Provenance(tool_version="test", created_at="now"), encoding.fields())
        store.write_labels(labels.numpy())
        order = [(v, b) for v in range(views) for b in range(layout.num_blocks(n))]
        for v, b in (order[j] for j in rng.permutation(len(order))):  # blocks in any order, as shard writers do
            rows = layout.block_range(b, n)
            arrays = encoding.encode(logits[v, rows.start : rows.stop], labels[rows.start : rows.stop])
            store.write_block(v, rows, {**arrays, "seeds": seeds[v, rows.start : rows.stop]})
            store.mark(v, b, DONE)
        store.set_provenance(Provenance(tool_version="test", created_at="now", complete=True))
        assert ZarrStore.open(path).check_chunks() == []

        view_bytes = encoding.raw_bytes_per_sample() * n
        memory = {"all": 1 << 30, "one view": view_bytes, "none": 0}[budget]
        reader = CacheReader(path, memory_budget=memory)
        try:
            assert np.array_equal(reader.labels, labels.numpy())
            for v in range(views):
                assert np.array_equal(reader.seeds(v), seeds[v])
            for _ in range(reads):
                size = int(rng.integers(0, 3 * n + 1))
                vs, ss = rng.integers(0, views, size), rng.integers(0, n, size)
                if rng.random() < 0.5:
                    reader.prefetch(int(rng.integers(0, views)))
                got = reader.read(vs, ss)
                want = encoding.decode(encoding.encode(logits[vs, ss], labels[ss]), labels[ss])
                for name in ("target", "full_logits", "topk_values", "topk_indices", "lse", "target_logit"):
                    a, b = getattr(got, name), getattr(want, name)
                    assert (a is None) == (b is None), name
                    assert a is None or (a.dtype == b.dtype and torch.equal(a, b)), name
        finally:
            reader.close()


# --------------------------------------------------------------------------- metadata edits
# 4. Any single edit of a store's metadata — a key of the group's or an array's zarr.json deleted,
#    set to another value or type, or a number bumped — is either harmless (every label, seed and
#    decoded teacher row read through CacheReader is what the unedited store gives) or refused
#    with one line (a LogitcacheError): never other data, never another exception.
_VALUES = [0, 1, -1, 3, 2**40, 1e9, 0.5, "", "x", "float16", "int16", "crc32c", None, True, False, [], {}, [0], {"a": 1}]


def _json_paths(node, prefix: tuple = ()):
    if prefix:
        yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _json_paths(child, (*prefix, key))


def _edited(meta, path: tuple, op: str, value):
    *parents, last = path
    node = meta
    for key in parents:
        node = node[key]
    if op == "delete":
        del node[last]
    elif op == "bump" and isinstance(node[last], (int, float)) and not isinstance(node[last], bool):
        node[last] = node[last] + 1
    else:
        node[last] = value


def _read_everything(path: Path) -> list[np.ndarray]:
    reader = CacheReader(path)
    try:
        views = np.repeat(np.arange(reader.num_views), reader.spec.dataset.num_samples)
        samples = np.tile(np.arange(reader.spec.dataset.num_samples), reader.num_views)
        got = reader.read(views, samples)
        out = [reader.labels, *(reader.seeds(v) for v in range(reader.num_views))]
        return out + [getattr(got, name).numpy() for name in ("target", "full_logits", "topk_values", "topk_indices",
                                                              "lse", "target_logit") if getattr(got, name) is not None]
    finally:
        reader.close()


_REFERENCE: dict[Path, tuple[list[str], list[np.ndarray]]] = {}


@settings(FUZZ, max_examples=80)  # ~0.35 s each on a loaded 2-core machine
@given(group=st.booleans(), which=st.integers(0, 10**6), where=st.integers(0, 10**6),
       op=st.sampled_from(["delete", "set", "bump"]), value=st.sampled_from(_VALUES))
def test_a_metadata_edit_is_harmless_or_refused_in_one_line(dump_reference, group, which, where, op, value):
    ref = dump_reference()
    if ref not in _REFERENCE:
        _REFERENCE[ref] = (sorted(p.relative_to(ref).as_posix() for p in ref.rglob("zarr.json")), _read_everything(ref))
    files, want = _REFERENCE[ref]
    file = "zarr.json" if group else files[which % len(files)]  # half of them edit the spec and provenance
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(shutil.copytree(ref, Path(tmp) / "c.zarr"))
        meta = json.loads((path / file).read_text())
        paths = list(_json_paths(meta))
        _edited(meta, paths[where % len(paths)], op, value)
        (path / file).write_text(json.dumps(meta))
        try:
            got = _read_everything(path)
        except LogitcacheError as e:
            assert str(e) and "\n" not in str(e), str(e)
            return
        assert len(got) == len(want) and all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, want))
