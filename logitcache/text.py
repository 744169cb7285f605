"""``text:PATH``: a text dataset of packed token sequences, whose rows are token positions.

PATH is a ``.txt`` file (one document), a ``.jsonl`` file (a document per line, its ``text``
field), a ``.parquet`` file (a document per row of its ``text`` column) or a folder of them,
read in sorted order; ``text:botchan`` is the shipped book when no such path exists. The
documents are tokenised with a model's tokenizer (the teacher's in dump, the student's in
train), each followed by EOS, and packed into sequences of ``seq_len`` tokens: sequence i reads
tokens[i*L : i*L+L] and its targets are the same span shifted by one. The last
``TEST_FRACTION`` of the sequences is the ``test`` split, the rest ``train``.

An item is a sequence and a row (a store "sample") a position: row r is (sequence r // L,
position r % L), and its label is the next token. The fingerprint covers the token ids, the
tokenizer identity and L, so a cache made for other text, another tokenizer or another
``--seq-len`` is refused.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._data import resolve_text
from .errors import BadInput, DataError
from .views import NO_AUGMENTATION

TEXT_EXTENSIONS = (".txt", ".jsonl", ".parquet")
TEST_FRACTION = 0.1


class TextDataset:
    """One split of packed token sequences; the store's rows are its token positions.

    Attributes:
        name, split: as the user typed them, ``train`` or ``test``.
        num_classes: the model's vocabulary size (the logits' width).
        seq_len: tokens per sequence (L).
        tokenizer: the tokenizer identity (``models.hf.tokenizer_sha256``).
        labels: (S*L,) int64 next tokens, one per row.
    """

    train_view = NO_AUGMENTATION  # one clean view: tokens are not augmented
    normalize = None  # token ids are model inputs as they are
    in_memory = True

    def __init__(self, *, name: str, split: str, num_classes: int, tokenizer: str, inputs: np.ndarray,
                 targets: np.ndarray) -> None:
        self.name, self.split, self.num_classes, self.tokenizer = name, split, num_classes, tokenizer
        self._inputs = np.ascontiguousarray(inputs, dtype=np.int64)
        self.seq_len = int(self._inputs.shape[1])
        self.labels = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self._inputs)

    @property
    def rows_per_item(self) -> int:
        return self.seq_len

    def rows(self, items: np.ndarray) -> np.ndarray:
        """The store rows of these sequences, in order: seq*L + arange(L) each."""
        items = np.asarray(items, dtype=np.int64)
        return (items[:, None] * self.seq_len + np.arange(self.seq_len)).reshape(-1)

    def inputs(self, items: np.ndarray) -> Tensor:
        """(B, L) int64 input ids of these sequences."""
        return torch.from_numpy(self._inputs[np.asarray(items, dtype=np.int64)])

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"text\0{self.tokenizer}\0{self.seq_len}\0{self._inputs.shape}\n".encode())
        h.update(self._inputs.astype("<i8").tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    def subset(self, index: np.ndarray) -> TextDataset:
        """The sequences ``index``, in that order (a validation hold-out)."""
        index = np.asarray(index, dtype=np.int64)
        return TextDataset(name=self.name, split=self.split, num_classes=self.num_classes, tokenizer=self.tokenizer,
                           inputs=self._inputs[index], targets=self.labels.reshape(-1, self.seq_len)[index])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "split": self.split,
            "num_samples": len(self.labels),
            "num_classes": self.num_classes,
            "fingerprint": self.fingerprint,
            "tokenizer": self.tokenizer,
            "seq_len": self.seq_len,
        }


def _files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in TEXT_EXTENSIONS:
            raise BadInput(f"{path} is not a text file logitcache reads ({', '.join(TEXT_EXTENSIONS)})")
        return [path]
    found = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if f.suffix.lower() not in TEXT_EXTENSIONS:
            raise DataError(f"{f} is not a text file ({', '.join(TEXT_EXTENSIONS)}): move it out of the folder")
        found.append(f)
    return found


def _documents(f: Path) -> list[str]:
    suffix = f.suffix.lower()
    try:
        if suffix == ".txt":
            return [f.read_text(encoding="utf-8")]
        if suffix == ".jsonl":
            docs = []
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataError(f"{f} line {n} has no string field \"text\": give each line a text field")
                docs.append(record["text"])
            return docs
        return _parquet_documents(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{f} is not UTF-8 text ({e.reason} at byte {e.start}): re-encode it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{f} line {e.lineno} is not JSON ({e.msg}): one JSON object per line") from None


def _parquet_documents(f: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadInput("reading .parquet needs pyarrow, which is not installed: pip install 'logitcache[llm]'") from None
    try:
        table = pq.read_table(f)
    except Exception as e:  # pyarrow raises its own ArrowInvalid and OSError on junk
        raise DataError(f"{f} is not a readable parquet file ({type(e).__name__}): check the file") from None
    if "text" not in table.column_names:
        raise DataError(f"{f} has no \"text\" column (columns: {', '.join(table.column_names)}): name it text")
    return [t for t in table.column("text").to_pylist() if t is not None]


def tokenize(path: Path, tokenizer, where: str) -> np.ndarray:
    """Every document's token ids, each followed by EOS, as one int64 array."""
    docs = [d for f in _files(path) for d in _documents(f) if d]
    if not docs:
        raise DataError(f"{where} holds no text: give it some")
    eos = tokenizer.eos_token_id
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    return np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int64)


def open_text(*, name: str, arg: str, split: str, model: str | None, seq_len: int | None) -> TextDataset:
    """One split of ``text:PATH`` tokenised with ``model``'s tokenizer into sequences of ``seq_len``."""
    from .models.hf import is_hf, open_folder

    if not is_hf(model):
        raise BadInput(f"{name} is tokenised with a language model's tokenizer: use an hf:DIR model "
                       f"(got {model or 'none'})")
    if seq_len is None:
        raise BadInput(f"{name} needs --seq-len L: the tokens per packed sequence")
    folder = open_folder(model)
    if seq_len < 1:
        raise BadInput(f"--seq-len must be >= 1, got {seq_len}")
    if folder.max_positions is not None and seq_len > folder.max_positions:
        raise BadInput(f"--seq-len {seq_len} is longer than {model}'s context (max_position_embeddings "
                       f"{folder.max_positions}): use --seq-len {folder.max_positions} or less")
    tokens = _tokens(resolve_text(arg), folder, name)
    count = (len(tokens) - 1) // seq_len
    if count < 2:
        raise DataError(f"{name} has {len(tokens)} tokens: fewer than two sequences of --seq-len {seq_len} (one to "
                        "train on, one to test on); lower --seq-len or give more text")
    test = max(1, round(TEST_FRACTION * count))
    first, stop = (0, count - test) if split == "train" else (count - test, count)
    span = tokens[first * seq_len : stop * seq_len + 1]
    inputs = span[:-1].reshape(-1, seq_len)
    targets = span[1:].reshape(-1, seq_len)
    return TextDataset(name=name, split=split, num_classes=folder.vocab_size, tokenizer=folder.tokenizer_sha256(),
                       inputs=inputs, targets=targets)


_TOKENS: dict[tuple, np.ndarray] = {}


def _tokens(path: Path, folder, name: str) -> np.ndarray:
    """Token ids of a path, kept for the process while the files are unchanged (train opens both
    splits, and dump its test split, of the same text)."""
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in _files(path))
    key = (stamp, folder.tokenizer_sha256())
    if key not in _TOKENS:
        _TOKENS.clear()
        _TOKENS[key] = tokenize(path, folder.tokenizer, name)
    return _TOKENS[key]
