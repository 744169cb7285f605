"""Bad language-model inputs: one ``error:`` line naming the fix, exit 2, nothing written."""

from __future__ import annotations

import shutil
import sys

import pytest

from lm_helpers import LM_SEQ_LEN, lm_dump_args, lm_text, make_lm_folder

TRAIN = ["train", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet", "--seq-len", str(LM_SEQ_LEN)]


def _refused(result, *words: str) -> str:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.err, result.err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _dump_with(lm_files, teacher, text=None, *extra):
    args = lm_dump_args(lm_files, *extra)
    args[args.index("--teacher") + 1] = teacher
    if text is not None:
        args[args.index("--dataset") + 1] = f"text:{text}"
    return args


@pytest.mark.parametrize("case", ["not-causal", "no-eos", "no-config", "missing"])
def test_a_folder_that_is_not_a_usable_causal_lm_is_refused(case, lm_files, run_cli, tmp_path):
    folder = tmp_path / case
    if case == "not-causal":
        make_lm_folder(folder, lm_text(300), model_type="vit")
    elif case == "no-eos":
        make_lm_folder(folder, lm_text(300), eos=None)
    elif case == "no-config":
        shutil.copytree(lm_files["student"], folder)
        (folder / "config.json").unlink()
    out = tmp_path / "c.zarr"
    result = run_cli(["dump", *_dump_with(lm_files, f"hf:{folder}", None, "--random-init"), "--out", out])
    words = {"not-causal": ("not a causal language model",), "no-eos": ("no EOS token", "eos_token"),
             "no-config": ("no config.json",), "missing": ("no such model folder", "hf:tiny-teacher")}[case]
    _refused(result, *words)
    assert not out.exists()


def test_seq_len_beyond_the_context_empty_text_and_a_config_only_teacher(lm_files, run_cli, tmp_path):
    out = tmp_path / "c.zarr"
    args = lm_dump_args(lm_files)
    args[args.index("--seq-len") + 1] = "65"
    _refused(run_cli(["dump", *args, "--out", out]), "--seq-len 65", "max_position_embeddings 64")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _refused(run_cli(["dump", *_dump_with(lm_files, f"hf:{lm_files['teacher']}", empty), "--out", out]), "holds no text")
    _refused(run_cli(["dump", *_dump_with(lm_files, f"hf:{lm_files['student']}"), "--out", out]),
             "config-only", "--random-init")
    _refused(run_cli(["dump", *lm_dump_args(lm_files, "--views", "2"), "--out", out]), "drop --views")
    assert not out.exists()


def test_a_full_dump_that_would_not_fit_says_how_big_it_would_be(lm_files, run_cli, tmp_path, monkeypatch):
    import importlib

    dump_module = importlib.import_module("logitcache.dump")  # the package re-exports the function
    monkeypatch.setattr(dump_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    out = tmp_path / "c.zarr"
    args = lm_dump_args(lm_files)
    args[args.index("--topk"): args.index("--topk") + 2] = ["--full"]
    line = _refused(run_cli(["dump", *args, "--out", out]), "--full would store", "--topk K")
    assert "x 300 logits x 2 B" in line
    assert not out.exists()


def test_without_transformers_the_error_names_the_extra(lm_files, run_cli, tmp_path, monkeypatch):
    folder = shutil.copytree(lm_files["teacher"], tmp_path / "teacher")  # not in the folder cache yet
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` meets when not installed
    out = tmp_path / "c.zarr"
    _refused(run_cli(["dump", *_dump_with(lm_files, f"hf:{folder}"), "--out", out]), "logitcache[llm]")
    assert not out.exists()


def test_a_student_of_another_tokenizer_or_seq_len_or_text_is_refused(lm_files, lm_cache, run_cli, tmp_path):
    other = make_lm_folder(tmp_path / "other", lm_text(900, seed=7), vocab=280)
    base = [*TRAIN, "--method", "kd", "--cache", lm_cache, "--dataset", f"text:{lm_files['text']}"]
    out = tmp_path / "run"
    _refused(run_cli([*base, "--student", f"hf:{other}", "--out", out]), "tokenizer", "cross-tokenizer")
    seq = [*base, "--student", f"hf:{lm_files['student']}", "--out", out]
    seq[seq.index("--seq-len") + 1] = "8"
    _refused(run_cli(seq), "sequence length (--seq-len): cache has 16, training data has 8")
    text = tmp_path / "t.txt"
    text.write_text(lm_files["text"].read_text().replace("cat", "dog"))
    other_text = [*TRAIN, "--method", "kd", "--cache", lm_cache, "--dataset", f"text:{text}", "--student",
                  f"hf:{lm_files['student']}", "--out", out]
    _refused(run_cli(other_text), "dataset fingerprint")
    online = [*TRAIN, "--method", "kd", "--teacher-online", "--teacher", f"hf:{lm_files['teacher']}", "--dataset",
              f"text:{lm_files['text']}", "--student", f"hf:{other}", "--out", out]
    _refused(run_cli(online), "another tokenizer", "cross-tokenizer")
    _refused(run_cli([*base, "--student", f"hf:{lm_files['student']}", "--label-fraction", "0.5", "--out", out]),
             "drop --label-fraction")
    assert not out.exists()


def test_an_image_cache_for_text_and_a_text_cache_for_images_are_refused_as_such(lm_files, lm_cache, digits_cache,
                                                                                  run_cli, tmp_path):
    out = tmp_path / "run"
    text = [*TRAIN, "--method", "kd", "--cache", digits_cache, "--dataset", f"text:{lm_files['text']}",
            "--student", f"hf:{lm_files['student']}", "--out", out]
    _refused(run_cli(text), "is an image cache but the training data", "is text data")
    image = ["train", "--method", "kd", "--cache", lm_cache, "--dataset", "digits", "--student", "resnet8",
             "--epochs", "1", "--device", "cpu", "--quiet", "--out", out]
    _refused(run_cli(image), "is a text cache but the training data (digits) is image data")
    assert not out.exists()
