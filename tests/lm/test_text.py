"""``text:PATH``: documents read, tokenised with EOS between them, packed into shifted sequences;
the fingerprint covers the ids, the tokenizer and the sequence length."""

from __future__ import annotations

import json

import numpy as np
import pytest

from logitcache.datasets import open_dataset
from logitcache.models.hf import open_folder
from logitcache.text import TEST_FRACTION

L = 16


def _open(path, lm_files, split="train", seq_len=L, model=None):
    return open_dataset(f"text:{path}", split, model=model or f"hf:{lm_files['student']}", seq_len=seq_len)


def test_sequences_are_the_tokens_packed_and_shifted_by_one(lm_files):
    tok = open_folder(f"hf:{lm_files['student']}").tokenizer
    tokens = [*tok(lm_files["text"].read_text(), add_special_tokens=False)["input_ids"], tok.eos_token_id]
    train, test = (_open(lm_files["text"], lm_files, split) for split in ("train", "test"))
    count = (len(tokens) - 1) // L
    assert len(train) + len(test) == count and len(test) == max(1, round(TEST_FRACTION * count))
    inputs = np.concatenate([train.inputs(np.arange(len(train))), test.inputs(np.arange(len(test)))]).reshape(-1)
    assert inputs.tolist() == tokens[: count * L]
    assert np.concatenate([train.labels, test.labels]).tolist() == tokens[1 : count * L + 1]
    # Rows are positions: row r is (sequence r // L, position r % L).
    assert train.rows(np.array([2, 0])).tolist() == [*range(2 * L, 3 * L), *range(L)]
    assert len(train.labels) == train.describe()["num_samples"] == len(train) * L


def test_documents_of_jsonl_files_and_folders_are_joined_with_eos(lm_files, tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "docs"
    folder.mkdir()
    docs = ["The cat sat on a mat. " * 6, "Rain fell over every green hill. " * 6, "She kept her books. " * 6]
    (folder / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs[:2]) + "\n")
    pq.write_table(pa.table({"text": docs[2:]}), folder / "b.parquet")
    ds = _open(folder, lm_files, seq_len=4)
    tok = open_folder(f"hf:{lm_files['student']}").tokenizer
    want = [t for d in docs for t in (*tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id)]
    got = ds.inputs(np.arange(len(ds))).reshape(-1).tolist()
    assert got == want[: len(got)] and got.count(tok.eos_token_id) >= 1


def test_the_fingerprint_covers_text_tokenizer_and_sequence_length(lm_files, tmp_path):
    from lm_helpers import lm_text, make_lm_folder

    base = _open(lm_files["text"], lm_files).fingerprint
    assert _open(lm_files["text"], lm_files).fingerprint == base
    assert _open(lm_files["text"], lm_files, seq_len=8).fingerprint != base
    other_text = tmp_path / "t.txt"
    other_text.write_text(lm_files["text"].read_text().replace("cat", "dog"))
    assert _open(other_text, lm_files).fingerprint != base
    other_tok = make_lm_folder(tmp_path / "tok", lm_text(900, seed=9))
    assert _open(lm_files["text"], lm_files, model=f"hf:{other_tok}").fingerprint != base
