"""Numbers a store must never get wrong: NaN/inf, and teachers whose logits share a large offset.

A NaN written into a ``--no-checksum`` store (no checksum can see it) is refused by ``verify``
(every pair is scanned, with or without a replay), by the reader (so ``train`` and ``info``
stop in one line naming the cache and the (view, sample)), and ``verify --repair`` plus the dump
command rewrites it. A teacher whose final bias is +60,000 (fp16) or +3,000 (bf16) — softmax
unchanged — dumps to a store whose argmax and entropy are the teacher's, pair for pair, and
which ``verify`` accepts; a tampered gap in such a store is found, because ``verify`` compares
with the fresh fp32 logits rather than with re-encoded ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from logitcache.info import cache_info
from logitcache.models import create_model
from logitcache.store.reader import CacheReader

SYNTHETIC = "synthetic:n=64,size=8"
DUMP = ["dump", "--teacher", "resnet8", "--dataset", SYNTHETIC, "--random-init", "--views", "2", "--chunk-samples",
        "16", "--device", "cpu", "--quiet", "--no-checksum"]
# Where to write the NaN: an fp16/bf16 gap, and the fp32 lse of a top-k store. The same stores as
# make_cache fields (DUMP's settings), shared by the NaN and the inf case: each edits a copy.
NAN_CASES = {
    "full-fp16 gap": (["--full", "--dtype", "fp16"], dict(encoding="full", dtype="fp16"), "logit_gaps", (1, 41, 3)),
    "topk-bf16 lse": (["--topk", "3", "--dtype", "bf16"], dict(topk=3, dtype="bf16"), "lse", (1, 41)),
    "topk-fp16 gap": (["--topk", "3", "--dtype", "fp16"], dict(topk=3, dtype="fp16"), "topk_gaps", (1, 41, 0)),
}


def _read(path, view: int, n: int):
    reader = CacheReader(path)
    try:
        return reader.read(view, np.arange(n))
    finally:
        reader.close()


def _one_error_line(result) -> str:
    assert result.code == 2 and "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("case", list(NAN_CASES))
def test_a_stored_nan_is_refused_everywhere(case, bad, make_cache, copy_store, run_cli, reseal, tmp_path):
    args, fields, field, where = NAN_CASES[case]
    path = copy_store(make_cache(dataset=SYNTHETIC, chunk_samples=16, checksum=False, **fields), tmp_path / "c.zarr")
    dump = [*DUMP, *args, "--out", path]
    arr = zarr.open_group(str(path), mode="r+")[field]
    if arr.dtype == np.uint16:  # bf16 bits
        arr[where] = torch.tensor(bad, dtype=torch.bfloat16).view(torch.uint16).item()
    else:
        arr[where] = bad
    reseal(path)  # block digests would refuse the edit itself: this tests the NaN checks behind them

    for samples in ("0", "100000"):  # with and without a replay
        result = run_cli(["verify", path, "--samples", samples, "--random-init", "--device", "cpu"])
        assert result.code == 1
        assert "FAIL view 1: 1 sample with NaN/inf logits, e.g. sample 41" in result.err.splitlines()
        assert "replay skipped" in result.out
    line = _one_error_line(run_cli(["info", path, "--quiet"]))
    assert f"corrupt data in {path}: view 1 sample 41 holds NaN/inf" in line and "verify --repair" in line
    out = tmp_path / "run"
    line = _one_error_line(run_cli(["train", "--student", "resnet8", "--dataset", SYNTHETIC, "--cache", path,
                                    "--out", out, "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]))
    assert f"{path}: view 1 sample 41 holds NaN/inf" in line  # not "loss became nan ... lower --lr"
    assert not (out / "last.pt").exists()

    # The fix the message names works: repair marks the block, the dump command rewrites it.
    assert run_cli(["verify", path, "--samples", "0", "--repair"]).code == 1
    assert run_cli(dump).code == 0
    assert run_cli(["verify", path, "--samples", "100000", "--random-init", "--device", "cpu"]).code == 0
    assert torch.isfinite(_read(path, 1, 64).logits).all()


# --------------------------------------------------------------------------- teachers with an offset
@pytest.fixture(scope="module")
def offset_checkpoints(tmp_path_factory):
    """``{bias: path}``: one random resnet8 with ``bias`` added to every class's final bias."""
    root = tmp_path_factory.mktemp("offset")
    torch.manual_seed(0)
    state = create_model("resnet8", num_classes=10).state_dict()
    paths = {}
    for bias in (0.0, 3e3, 6e4):
        paths[bias] = root / f"bias{bias:g}.pt"
        torch.save({**state, "fc.bias": state["fc.bias"] + bias}, paths[bias])
    return paths


OFFSET_CASES = {  # (bias, encoding fields) - each compared with the same encoding in fp32
    "full fp16 +60000": (6e4, dict(encoding="full", dtype="fp16")),
    "top-3 fp16 +60000": (6e4, dict(topk=3, dtype="fp16")),
    "full bf16 +3000": (3e3, dict(encoding="full", dtype="bf16")),
    "top-3 bf16 +3000": (3e3, dict(topk=3, dtype="bf16")),
}


def _dump_offset(make_cache, checkpoint, **fields):
    return make_cache(checkpoint=str(checkpoint), random_init=False, views=1, **fields)


@pytest.mark.parametrize("case", list(OFFSET_CASES))
def test_a_teacher_with_a_large_offset_is_stored_faithfully(case, offset_checkpoints, make_cache, run_cli):
    bias, fields = OFFSET_CASES[case]
    path = _dump_offset(make_cache, offset_checkpoints[bias], **fields)
    ref = _dump_offset(make_cache, offset_checkpoints[bias], **{**fields, "dtype": "fp32"})
    for v in range(2):
        got, want = _read(path, v, 1438), _read(ref, v, 1438)
        assert torch.equal(got.argmax, want.argmax)  # pair for pair, not only on average
        # log-probabilities within the dtype's step of the gaps (a few nats here)
        assert (got.log_probs() - want.log_probs()).abs().max() <= 0.05
    info, ref_info = cache_info(path, progress=False), cache_info(ref, progress=False)
    for stats, ref_stats in ((info.clean, ref_info.clean), (info.augmented, ref_info.augmented)):
        assert stats.misinstruction_rate == ref_stats.misinstruction_rate
        assert stats.mean_entropy == pytest.approx(ref_stats.mean_entropy, abs=1e-3)
    result = run_cli(["verify", path, "--checkpoint", offset_checkpoints[bias], "--samples", "100000",
                      "--device", "cpu"])
    assert result.code == 0, result.err
    assert "replayed 2,876 (view, sample) pairs" in result.out


def test_verify_finds_a_tampered_gap_of_an_offset_teacher(offset_checkpoints, run_cli, reseal, tmp_path):
    # Without checksums or digests only the replay can notice; it compares with the fresh fp32 logits, so
    # it sees a gap off by one nat even where every logit is 60,000 (fp16's step there is 32).
    path = tmp_path / "c.zarr"
    ckpt = offset_checkpoints[6e4]
    assert run_cli(["dump", "--teacher", "resnet8", "--dataset", "digits", "--checkpoint", ckpt, "--views", "1",
                    "--full", "--dtype", "fp16", "--no-checksum", "--device", "cpu", "--quiet", "--out", path]).code == 0
    gaps = zarr.open_group(str(path), mode="r+")["logit_gaps"]
    row = gaps[1, 700]
    c = int(np.flatnonzero(row > 0)[0])
    gaps[1, 700, c] = row[c] + np.float16(1.0)
    reseal(path)  # as a dump that computed that gap would have written it: only the replay can tell
    result = run_cli(["verify", path, "--checkpoint", ckpt, "--samples", "100000", "--device", "cpu"])
    assert result.code == 1
    fails = [line for line in result.err.splitlines() if line.startswith("FAIL")]
    assert fails == [fails[0]] and fails[0].startswith("FAIL view 1 sample 700: stored logits differ from the replayed")


def test_an_fp16_gap_overflow_names_a_dtype_that_works(offset_checkpoints, run_cli, tmp_path):
    # A spread beyond fp16's 65504 between two logits of one sample cannot be stored in fp16;
    # the refusal names the dtypes that store it, and the command it suggests succeeds.
    state = torch.load(offset_checkpoints[0.0], weights_only=True)
    state["fc.bias"] = state["fc.bias"].clone()
    state["fc.bias"][3] += 7e4
    ckpt = tmp_path / "spread.pt"
    torch.save(state, ckpt)
    base = ["dump", "--teacher", "resnet8", "--dataset", SYNTHETIC, "--checkpoint", ckpt, "--views", "1", "--full",
            "--device", "cpu", "--quiet"]
    out = tmp_path / "c.zarr"
    line = _one_error_line(run_cli([*base, "--dtype", "fp16", "--out", out]))
    assert "beyond what fp16 stores (65504): dump again with --dtype bf16 or --dtype fp32" in line
    assert "adding --overwrite to replace the unfinished fp16 store" in line
    assert run_cli([*base, "--dtype", "bf16", "--out", out, "--overwrite"]).code == 0  # what it says, on that --out
    view = _read(out, 1, 64)
    assert (view.argmax == 3).all() and torch.isfinite(view.log_probs()).all()


# --------------------------------------------------------------------------- what an encoding checks
# A teacher row poisoned in some classes (10 classes, logits 0..9): the encoding checks what it
# stores plus the logsumexp, never all (rows, C) logits, and refuses exactly these.
C = 10
POISON = {  # name: (encoding, k, poisoned classes, value, refused); row 1's true class is 0
    "topk -inf in a stored slot": ("topk", 9, [1, 2], -np.inf, True),  # 9 of 10 stored: one -inf among them
    "topk -inf target, unstored slot": ("topk", 3, [0], -np.inf, True),  # the target logit is stored
    "topk nan in the unstored tail": ("topk", 3, [4], np.nan, True),
    "topk +inf in the unstored tail": ("topk", 3, [4], np.inf, True),
    "topk -inf in the unstored tail": ("topk", 3, [4, 5], -np.inf, False),  # probability 0, stored as such
    "full -inf": ("full", None, [4], -np.inf, True),  # every logit is stored
    "sampled nan": ("sampled", None, [4], np.nan, True),
    "sampled -inf": ("sampled", None, [4], -np.inf, False),  # never drawn
}


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "q8"])
@pytest.mark.parametrize("case", list(POISON))
def test_an_encoding_refuses_non_finite_logits_where_they_count(case, dtype):
    from logitcache.errors import NonFiniteLogits
    from logitcache.store.encodings import get_encoding
    from logitcache.store.format import EncodingInfo

    kind, k, classes, value, refused = POISON[case]
    if dtype != "fp32" and kind == "sampled" or dtype == "q8" and kind == "full":
        pytest.skip(f"{kind} stores no {dtype}")
    extra = {"topk": dict(k=k), "sampled": dict(samples=16, temperature=1.0)}.get(kind, {})
    encoding = get_encoding(EncodingInfo(kind=kind, dtype=dtype, **extra), C)
    logits, labels = torch.arange(C, dtype=torch.float32).repeat(3, 1), torch.tensor([C - 1, 0, C - 1])
    logits[1, classes] = value
    seeds = np.arange(3, dtype=np.uint32)
    if refused:
        with pytest.raises(NonFiniteLogits) as caught:
            encoding.encode_pairs(logits, labels, seeds)
        assert caught.value.row == 1
        return
    view = encoding.decode(encoding.encode_pairs(logits, labels, seeds), labels)
    assert view.finite.all()
    if kind == "sampled":  # a sampled view has no log-probabilities, only its draws
        drawn = view.sample_indices[1][view.sample_counts[1] > 0]
        assert not np.isin(drawn.numpy(), classes).any()
    else:
        assert torch.isfinite(view.log_probs()).all()
