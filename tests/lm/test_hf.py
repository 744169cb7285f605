"""``hf:`` folders: loading, random init from a config, saving, and the tokenizer's identity."""

from __future__ import annotations

import torch

from logitcache.models import create_model, weights_sha256
from logitcache.models.hf import open_folder


def test_a_saved_folder_loads_the_same_weights_and_tokenizer(lm_files, tmp_path):
    folder = open_folder(f"hf:{lm_files['teacher']}")
    assert folder.has_weights and folder.tokenizer.eos_token == "<eos>"
    model = create_model(f"hf:{lm_files['teacher']}", num_classes=folder.vocab_size)
    model.save(tmp_path / "copy")
    again = create_model(f"hf:{tmp_path / 'copy'}", num_classes=folder.vocab_size)
    assert weights_sha256(again) == weights_sha256(model)
    assert open_folder(f"hf:{tmp_path / 'copy'}").tokenizer_sha256() == folder.tokenizer_sha256()
    ids = torch.randint(0, folder.vocab_size, (2, 16))
    assert again(ids).shape == (2, 16, folder.vocab_size)
    assert torch.equal(again(ids), model(ids))


def test_a_config_only_folder_is_a_seeded_random_init(lm_files):
    name, v = f"hf:{lm_files['student']}", open_folder(f"hf:{lm_files['student']}").vocab_size
    assert not open_folder(name).has_weights
    torch.manual_seed(3)
    a = weights_sha256(create_model(name, num_classes=v))
    torch.manual_seed(3)
    assert weights_sha256(create_model(name, num_classes=v)) == a
    torch.manual_seed(4)
    assert weights_sha256(create_model(name, num_classes=v)) != a


def test_the_tokenizer_identity_is_that_of_the_tokenisation(lm_files, tmp_path):
    from lm_helpers import lm_text, make_lm_folder

    same = open_folder(f"hf:{lm_files['student']}").tokenizer_sha256()
    assert open_folder(f"hf:{lm_files['teacher']}").tokenizer_sha256() == same
    other = make_lm_folder(tmp_path / "other", lm_text(900, seed=5))
    assert open_folder(f"hf:{other}").tokenizer_sha256() != same

