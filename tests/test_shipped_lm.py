"""The shipped text and tiny language-model folders: reproducible from their script, loadable
offline by transformers, installed as package data, and found by name only when no path is."""

from __future__ import annotations

import fnmatch
import importlib.util
import tomllib
from pathlib import Path

import pytest

from logitcache._data import SHIPPED_MODELS, resolve_model_dir, resolve_text, shipped
from logitcache.errors import BadInput, UnknownName

REPO = Path(__file__).resolve().parents[1]


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_script_reproduces_the_shipped_folders_byte_for_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tiny_lm", REPO / "data" / "make_tiny_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path, shipped("botchan.txt"))
    assert _folder_bytes(tmp_path) == _folder_bytes(shipped("lm"))


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_folders_load_offline_as_causal_lms_with_one_tokenizer(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_dir(name)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == config.eos_token_id
    assert len(tok) == config.vocab_size == 1024
    text = resolve_text("botchan").read_text(encoding="utf-8")
    ids = tok(text[:20_000])["input_ids"]
    # A BPE trained on this text compresses it: ~2.7 bytes a token (93,832 tokens for the whole book).
    assert 2.0 < 20_000 / len(ids) < 4.0
    assert tok.decode(ids) == text[:20_000]
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        logits = model(torch.tensor([ids[:16]])).logits
    assert logits.shape == (1, 16, config.vocab_size)


def test_both_models_share_the_tokenizer_and_the_teacher_is_bigger():
    teacher, student = (_folder_bytes(resolve_model_dir(n)) for n in ("tiny-teacher", "tiny-student"))
    assert {k: v for k, v in teacher.items() if k != "config.json"} == {
        k: v for k, v in student.items() if k != "config.json"
    }
    assert teacher["config.json"] != student["config.json"]


def test_the_shipped_text_names_its_source():
    text = resolve_text("botchan").read_text(encoding="utf-8")
    # The book alone: the test split (the last sequences) must be the novel, not the eBook's licence.
    assert text.startswith("BOTCHAN (MASTER DARLING)\n") and text.endswith("--(THE END)--\n")
    assert "\r" not in text and "gutenberg" not in text.lower()
    readme = (REPO / "data" / "README.md").read_text(encoding="utf-8")
    assert "#8868" in readme and "public domain" in readme.lower()


def test_every_shipped_file_is_package_data():
    """A non-editable install holds only what package-data names: a file missing from it would
    work in the repo and be absent from a wheel."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["logitcache_data"]
    data = REPO / "data"
    for path in data.rglob("*"):
        rel = path.relative_to(data).as_posix()
        if path.is_file() and path.suffix != ".py" and rel != "README.md" and "__pycache__" not in rel:
            assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in package-data"


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("tiny-teacher") == shipped("lm/tiny-teacher")
    (tmp_path / "tiny-teacher").mkdir()
    assert resolve_model_dir("tiny-teacher") == Path("tiny-teacher")
    (tmp_path / "botchan").write_text("mine")
    assert resolve_text("botchan") == Path("botchan")


def test_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownName, match="hf:nope: no such model folder.*hf:tiny-teacher, hf:tiny-student"):
        resolve_model_dir("nope")
    with pytest.raises(UnknownName, match="text:nope: .*text:botchan"):
        resolve_text("nope")


def test_an_empty_name_is_refused_by_the_one_lookup(tmp_path, monkeypatch):
    """``text:`` and ``hf:`` with nothing after them: refused naming the form and the shipped names,
    never the working directory (``Path("")`` exists)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput, match=r"^hf: needs a folder: hf:DIR, or one of the shipped tiny-teacher, tiny-student$"):
        resolve_model_dir("")
    with pytest.raises(BadInput, match=r"^text: needs a path: text:PATH \(a .txt, .jsonl or .parquet file or a folder "
                                       r"of them\), or one of the shipped botchan$"):
        resolve_text("")
