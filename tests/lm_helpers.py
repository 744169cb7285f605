"""Tiny causal language models for the tests, built from configs with transformers (no download).

A byte-level BPE tokenizer of ~300 tokens trained on a generated text, a 2-layer hidden-32
Llama, sequences of 16 tokens: the session fixtures ``lm_files`` and ``lm_cache`` in
``conftest.py`` are made of these.
"""

from __future__ import annotations

from pathlib import Path

LM_SEQ_LEN = 16
_LM_WORDS = ("the cat sat on a mat and then it ran to the old house where she kept her books while "
             "rain fell over every green hill as we walked home slowly talking about little things").split()


def lm_text(words: int, seed: int = 0) -> str:
    """Seeded sentences of common words: a text the tiny tokenizer and models learn something of."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        sentence = " ".join(rng.choice(_LM_WORDS, size=int(rng.integers(4, 12))))
        sentences.append(sentence.capitalize() + ".")
    return " ".join(sentences) + "\n"


def make_lm_folder(out: Path, text: str, *, vocab: int = 300, eos: str | None = "<eos>", max_positions: int = 64,
                   model_type: str = "llama") -> Path:
    """A config-only hf folder: a tokenizer trained on ``text`` and a tiny model config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab, special_tokens=[eos or "<pad>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos) if eos else \
        PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")
    fast.save_pretrained(str(out))
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if model_type == "llama":
        sizes.update(num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=False)
    AutoConfig.for_model(model_type, vocab_size=len(fast), **sizes).save_pretrained(str(out))
    return out



def lm_dump_args(lm_files: dict[str, Path], *extra: str) -> list[str]:
    """The CLI options of the tiny token dump (everything but ``--out``): top-8, chunks of 4 sequences."""
    return ["--teacher", f"hf:{lm_files['teacher']}", "--dataset", f"text:{lm_files['text']}", "--seq-len",
            str(LM_SEQ_LEN), "--topk", "8", "--chunk-samples", str(4 * LM_SEQ_LEN), "--batch-size", "8",
            "--device", "cpu", "--quiet", *extra]
