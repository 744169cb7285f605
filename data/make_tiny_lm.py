"""Build the shipped tiny language-model folders ``lm/tiny-teacher`` and ``lm/tiny-student``.

Run once by the maintainers; the result is committed so that nothing is downloaded at run time, and
``tests/test_shipped_lm.py`` re-runs it to prove the shipped tokenizer comes from ``botchan.txt``
byte for byte. Both folders share ONE byte-level BPE tokenizer (vocabulary 1,024, EOS
``<|endoftext|>``) trained with ``tokenizers`` on ``botchan.txt``; they hold no weights, only a
Llama-style ``config.json``, so loading one gives a seeded random init (how a user starts a model).

    python data/make_tiny_lm.py            # rewrites data/lm/ in place
"""

import json
import sys
from pathlib import Path

VOCAB_SIZE = 1024
EOS = "<|endoftext|>"
CONTEXT = 256
# Both models see the same tokens; they differ only in size (the teacher is ~8x the student).
SIZES = {
    "tiny-teacher": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4},
    "tiny-student": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
}


def train_tokenizer(text_path: Path) -> str:
    """The tokenizer's canonical JSON. BPE merges are chosen by counts with deterministic tie-breaks,
    so the same text and the same ``tokenizers`` release give the same bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(text_path)], trainer)
    return tok.to_str(pretty=True)


def _config(size: dict, eos_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **size,
        "num_key_value_heads": size["num_attention_heads"],
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": CONTEXT,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def _dump(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def build(out: Path, text_path: Path) -> None:
    """Write ``out/<name>/`` for each shipped model (config.json and the tokenizer files)."""
    tokenizer_json = train_tokenizer(text_path)
    eos_id = json.loads(tokenizer_json)["added_tokens"][0]["id"]
    # Written by hand rather than by save_pretrained, whose output changes with the transformers release.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "bos_token": EOS,
        "unk_token": EOS,
        "clean_up_tokenization_spaces": False,
    }
    special = {"eos_token": EOS, "bos_token": EOS, "unk_token": EOS}
    for name, size in SIZES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(_dump(tokenizer_config), encoding="utf-8")
        (folder / "special_tokens_map.json").write_text(_dump(special), encoding="utf-8")
        (folder / "config.json").write_text(_dump(_config(size, eos_id)), encoding="utf-8")


if __name__ == "__main__":
    here = Path(__file__).parent
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else here / "lm", here / "botchan.txt")
