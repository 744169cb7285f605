"""``hf:DIR``: causal language models from local Hugging Face folders.

A folder holds a ``config.json``, tokenizer files and, for a trained model, ``*.safetensors``
weights; a config-only folder builds a seeded random init (how a student starts). Nothing is
downloaded (``local_files_only``). ``transformers`` is imported only here, inside the functions
that need it, so that ``import logitcache`` and the image path never load it.

The module returns logits (B, L, V) for input ids (B, L); the loops flatten them to token rows.
The tokenizer's identity is a sha256 over its canonical backend JSON (vocabulary, merges,
normaliser, pre-tokeniser, added tokens) and its special tokens: caches, datasets and runs
record it, so that logits are never paired with another tokenizer's ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._data import resolve_model_dir
from ..errors import BadInput, CheckpointError
from ._registry import ModelSource, register_source

HF_PREFIX = "hf:"
LLM_EXTRA = "pip install 'logitcache[llm]'"


def is_hf(name: str | None) -> bool:
    return bool(name) and name.startswith(HF_PREFIX)


def transformers_module() -> Any:
    """``transformers``, or one line naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise BadInput(f"hf: models need transformers, which is not installed: {LLM_EXTRA}") from None
    # Its warnings (unused weights...) and progress bars are not the user's concern: errors are raised.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def resolve_dir(name: str) -> Path:
    """The folder of ``hf:DIR``: an existing path always wins, else a shipped name."""
    return resolve_model_dir(name[len(HF_PREFIX):] if is_hf(name) else name)


class HFFolder:
    """What a folder declares: config, tokenizer and whether it holds weights; checked on opening."""

    def __init__(self, path: Path) -> None:
        self.path = path
        tf = transformers_module()
        if not (path / "config.json").is_file():
            raise BadInput(f"{path} is not a Hugging Face model folder (no config.json): pass a folder saved with "
                           "save_pretrained, or a config-only folder (config.json + tokenizer files)")
        try:
            self.config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise BadInput(f"{path}/config.json cannot be read by transformers ({_first_line(e)}): fix or replace it") from None
        causal = tf.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if self.config.model_type not in causal:
            raise BadInput(f"{path} holds a {self.config.model_type!r} model, which is not a causal language model "
                           "(AutoModelForCausalLM): pass a causal LM folder (e.g. llama, gpt2, qwen2)")
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BadInput(f"{path} has no tokenizer transformers can load ({_first_line(e)}): save the tokenizer "
                           "into the folder (tokenizer.json)") from None
        if not hasattr(self.tokenizer, "backend_tokenizer"):
            raise BadInput(f"{path} has a slow (Python) tokenizer: save a fast one (tokenizer.json) into the folder")
        if self.tokenizer.eos_token_id is None:
            raise BadInput(f"the tokenizer in {path} has no EOS token, which separates documents: set eos_token in "
                           "its tokenizer_config.json (or special_tokens_map.json)")
        self.vocab_size = int(self.config.vocab_size)
        if len(self.tokenizer) > self.vocab_size:
            raise BadInput(f"the tokenizer in {path} has {len(self.tokenizer)} tokens but the model's vocab_size is "
                           f"{self.vocab_size}: give the model a vocabulary at least as large")
        self.max_positions = getattr(self.config, "max_position_embeddings", None)
        self.has_weights = any(path.glob("*.safetensors"))
        self._tokenizer_sha256: str | None = None

    def tokenizer_sha256(self) -> str:
        if self._tokenizer_sha256 is None:  # hashing the tokenizer's JSON is worth doing once
            self._tokenizer_sha256 = tokenizer_sha256(self.tokenizer)
        return self._tokenizer_sha256


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@lru_cache(maxsize=8)
def _open_folder(path: str, mtime: float) -> HFFolder:
    return HFFolder(Path(path))


def open_folder(name: str) -> HFFolder:
    """The checked folder of ``hf:DIR`` (cached while its config.json is unchanged)."""
    path = resolve_dir(name)
    config = path / "config.json"
    return _open_folder(str(path.resolve()), config.stat().st_mtime if config.exists() else 0.0)


def tokenizer_sha256(tokenizer: Any) -> str:
    """sha256 over the canonical backend JSON and the special tokens: equal for equal tokenisation."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    canonical = {key: backend.get(key) for key in ("model", "normalizer", "pre_tokenizer", "added_tokens")}
    canonical["special_tokens"] = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    canonical["eos_token_id"] = tokenizer.eos_token_id
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


class CausalLM(nn.Module):
    """A causal LM as a logitcache model: input ids (B, L) -> logits (B, L, V)."""

    def __init__(self, lm: nn.Module, folder: HFFolder) -> None:
        super().__init__()
        self.lm, self.folder = lm, folder

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits

    def save(self, out: str | os.PathLike) -> None:
        """Write an hf folder (safetensors + config + tokenizer) that ``hf:OUT`` loads; atomically,
        so that a run killed while saving leaves the previous folder or none."""
        out = Path(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            self.lm.save_pretrained(str(tmp), safe_serialization=True)
            self.folder.tokenizer.save_pretrained(str(tmp))
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def create_hf_model(name: str, num_classes: int) -> CausalLM:
    """The model of ``hf:DIR`` (or ``DIR``): its weights, or a random init from its config (seeded
    by the caller's torch seed). ``num_classes`` must be its vocabulary size."""
    name = name if is_hf(name) else HF_PREFIX + name
    folder = open_folder(name)
    if folder.vocab_size != num_classes:
        raise BadInput(f"{name} has a vocabulary of {folder.vocab_size} tokens but the data has {num_classes} "
                       "(another tokenizer): cross-tokenizer distillation is not supported; use models that share "
                       "the tokenizer")
    tf = transformers_module()
    if folder.has_weights:
        try:
            lm = tf.AutoModelForCausalLM.from_pretrained(str(folder.path), local_files_only=True, use_safetensors=True,
                                                         dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot load the weights in {folder.path} ({_first_line(e)}): re-save them with "
                                  "save_pretrained(safe_serialization=True)") from None
    else:
        lm = tf.AutoModelForCausalLM.from_config(folder.config, dtype=torch.float32)
    return CausalLM(lm, folder)


# The module itself imports only torch: transformers is loaded when a model or folder is opened.
register_source(ModelSource(HF_PREFIX, create_hf_model))
