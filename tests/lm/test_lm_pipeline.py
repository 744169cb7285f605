"""Tokens through the whole pipeline: a dump stores each position's next-token distribution
exactly as the encoding promises, info and verify read it, every method trains on token rows,
a cached run equals an online one, and a trained student is an hf folder the next dump loads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lm_helpers import LM_SEQ_LEN, lm_dump_args
from logitcache.datasets import open_dataset
from logitcache.info import cache_info
from logitcache.methods import get_method, list_methods
from logitcache.models import create_model, weights_sha256
from logitcache.store.reader import CacheReader
from logitcache.store.zarr_store import ZarrStore
from logitcache.views import view_seeds

TRAIN = ["train", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet", "--seq-len", str(LM_SEQ_LEN),
         "--workers", "0"]


@pytest.fixture(scope="module")
def teacher_logits(lm_files):
    """(rows, V) logits of the tiny teacher on every train position, and the dataset."""
    name = f"hf:{lm_files['teacher']}"
    data = open_dataset(f"text:{lm_files['text']}", model=name, seq_len=LM_SEQ_LEN)
    teacher = create_model(name, num_classes=data.num_classes).eval()
    with torch.no_grad():
        logits = teacher(data.inputs(np.arange(len(data)))).flatten(0, -2)
    return logits, data


def test_stored_top_k_and_next_token_logits_are_the_teachers(lm_cache, teacher_logits):
    logits, data = teacher_logits
    store = ZarrStore.open(lm_cache)
    spec = store.spec
    assert (spec.dataset.num_samples, spec.dataset.seq_len, spec.views.total) == (len(data.labels), LM_SEQ_LEN, 1)
    assert spec.layout.chunk_samples % LM_SEQ_LEN == 0 and spec.teacher.tokenizer == data.tokenizer
    values, indices = logits.topk(8, dim=1)
    view = CacheReader(lm_cache).read(np.zeros(len(data.labels), dtype=np.int64), np.arange(len(data.labels)))
    assert torch.equal(view.topk_indices, indices)  # packed in ceil(log2 V) bits, decoded exactly
    assert np.array_equal(store.read("labels"), data.labels)
    # lse and the next token's logit are fp32: exact to float rounding; so is p(next token).
    assert np.allclose(store.read("lse", 0), logits.logsumexp(1).numpy(), rtol=0, atol=1e-5)
    target = logits.gather(1, torch.from_numpy(data.labels)[:, None])[:, 0]
    assert np.array_equal(store.read("target_logit", 0), target.numpy())
    log_p = logits.log_softmax(1)
    assert torch.allclose(view.target_log_prob, log_p.gather(1, view.target[:, None])[:, 0], atol=1e-5)
    # The top-k probabilities: fp16 gaps from the fp32 top-1 logit (relative error 2^-11 of a gap).
    stored = view.log_probs().gather(1, indices)
    gaps = values[:, :1] - values
    assert ((stored - log_p.gather(1, indices)).abs() <= 1e-5 + gaps * 2**-10).all()


def test_the_store_holds_one_seed_per_sequence_not_per_token(lm_cache):
    """An augmentation transforms items, so a sequence's positions share its seed: S seeds per view,
    about 4 B / L per token on disk (a seed per token was 4 B/token of incompressible hash output)."""
    store = ZarrStore.open(lm_cache)
    spec = store.spec
    sequences, tokens = spec.dataset.num_samples // LM_SEQ_LEN, spec.dataset.num_samples
    seeds = store.array("seeds")
    assert seeds.shape == (1, sequences) and seeds.chunks == (1, min(spec.layout.chunk_samples, tokens) // LM_SEQ_LEN)
    assert np.array_equal(CacheReader(lm_cache).seeds(0), view_seeds(spec.views.seed, 0, np.arange(sequences)))
    # Hash output does not compress: a chunk is 4 B per sequence (the last one padded to a whole
    # chunk) plus blosc's 16-byte header and the crc32c's 4 bytes, so 4 / L B per token and framing.
    chunks = [f for f in (lm_cache / "seeds" / "c").rglob("*") if f.is_file()]
    assert len(chunks) == -(-sequences // seeds.chunks[1])
    assert sum(f.stat().st_size for f in chunks) <= len(chunks) * (4 * seeds.chunks[1] + 16 + 4)


def test_info_reports_tokens_perplexity_accuracy_and_ece(lm_cache, teacher_logits, run_cli):
    logits, data = teacher_logits
    labels = torch.from_numpy(data.labels)
    info = cache_info(lm_cache, progress=False)
    nll = float(torch.nn.functional.cross_entropy(logits, labels))
    assert info.clean.perplexity == pytest.approx(math.exp(nll), rel=1e-5)
    assert info.augmented is None and info.pairs == len(labels)
    assert info.clean.misinstruction_rate == pytest.approx(float((logits.argmax(1) != labels).double().mean()))
    out = run_cli(["info", lm_cache, "--quiet"])
    assert out.code == 0, out.err
    assert f"{len(labels):,} tokens in {len(data):,} sequences of {LM_SEQ_LEN}" in out.out
    assert "B per token" in out.out and f"teacher perplexity {math.exp(nll):.2f}, next-token accuracy" in out.out


def test_verify_reruns_the_teacher_on_random_sequences(lm_cache, run_cli):
    result = run_cli(["verify", lm_cache, "--samples", "5"])
    assert result.code == 0, result.err
    assert f"replayed {5 * LM_SEQ_LEN} (view, sample) pairs" in result.out


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_on_token_rows_or_is_refused_with_its_reason(name, lm_cache, lm_files, run_cli, tmp_path):
    method = get_method(name)
    if method.refusal_on_tokens() is not None:
        out = tmp_path / "run"
        result = run_cli([*TRAIN, "--method", name, "--cache", lm_cache, "--student", f"hf:{lm_files['student']}",
                          "--dataset", f"text:{lm_files['text']}", "--out", out])
        assert result.code == 2 and method.refusal_on_tokens() in result.err and not out.exists(), result.err
        return
    reader = CacheReader(lm_cache)
    rows = np.arange(2 * LM_SEQ_LEN)
    view = reader.read(np.zeros(len(rows), dtype=np.int64), rows)
    student = torch.randn(len(rows), reader.spec.dataset.num_classes, requires_grad=True)
    terms = method.fn(student, view if method.needs_teacher else None, view.target, epoch=1, **method.defaults())
    loss = sum(terms.values())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def cached_and_online(lm_files, tmp_path_factory, run_cli):
    """One epoch of KD from a full fp32 token cache, with the same teacher online, with another
    student seed, and under bf16 autocast."""
    root = tmp_path_factory.mktemp("lm_cached_online")
    args = lm_dump_args(lm_files)
    args[args.index("--topk"): args.index("--topk") + 2] = ["--full", "--dtype", "fp32"]
    dumped = run_cli(["dump", *args, "--out", root / "full.zarr"])
    assert dumped.code == 0, dumped.err
    common = [*TRAIN, "--method", "kd", "--student", f"hf:{lm_files['student']}", "--dataset", f"text:{lm_files['text']}",
              "--val-fraction", "0.1"]
    runs = {"cache": ["--cache", root / "full.zarr"],
            "online": ["--teacher-online", "--teacher", f"hf:{lm_files['teacher']}"],
            "cache_seed1": ["--cache", root / "full.zarr", "--seed", "1"],
            "bf16": ["--cache", root / "full.zarr", "--precision", "bf16"]}
    for name, extra in runs.items():
        result = run_cli([*common, *extra, "--out", root / name])
        assert result.code == 0, result.err
    return root


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _max_diff(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_a_cached_run_equals_an_online_run(cached_and_online):
    cached = _weights(cached_and_online / "cache" / "last.pt")
    assert _max_diff(cached, _weights(cached_and_online / "online" / "last.pt")) < 1e-4
    # The comparison can fail: another student seed is another student.
    assert _max_diff(cached, _weights(cached_and_online / "cache_seed1" / "last.pt")) > 1e-2


def test_each_epoch_reports_validation_loss_and_perplexity(cached_and_online):
    run = cached_and_online / "cache"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for split in ("val", "test"):
        assert record[f"{split}_ppl"] == pytest.approx(math.exp(record[f"{split}_nll"]))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selection"] == "val" and summary["teacher_forwards_saved"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["seq_len"] == LM_SEQ_LEN
    assert config["data"]["train"]["tokenizer"] == config["cache"]["spec"]["dataset"]["tokenizer"]


def test_the_trained_student_is_an_hf_folder_the_next_dump_loads(cached_and_online, lm_files, run_cli):
    run = cached_and_online / "cache"
    best = _weights(run / "best.pt")
    student = create_model(f"hf:{run / 'hf'}", num_classes=next(iter(best.values())).shape[0])
    assert _max_diff(student.state_dict(), best) == 0
    args = lm_dump_args(lm_files)
    args[args.index("--teacher") + 1] = f"hf:{run / 'hf'}"
    out = run / "next.zarr"
    assert run_cli(["dump", *args, "--out", out]).code == 0
    assert ZarrStore.open(out).spec.teacher.weights_sha256 == weights_sha256(student)


def test_bf16_autocast_trains_a_language_model_and_is_recorded(cached_and_online):
    run = cached_and_online / "bf16"
    assert json.loads((run / "config.json").read_text())["config"]["precision"] == "bf16"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_ppl"])
    # The same student as in fp32, up to bf16 rounding of the forward pass.
    diff = _max_diff(_weights(run / "last.pt"), _weights(cached_and_online / "cache" / "last.pt"))
    assert 0 < diff < 1e-2
