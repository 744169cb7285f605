"""``logitcache demo --text`` end to end on a slice of the shipped book (a teacher, one top-k dump,
students from the cache and online, the perplexity table), and its refusals before anything runs."""

from __future__ import annotations

import json
import re

import pytest

from logitcache._data import resolve_text

ROW = re.compile(r"^(\S+)\s+(labels|cache|online)\s+(hf:\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d,]+)\s+([\d,]+)$")


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    """The book's first 3,000 characters: ~60 sequences of 16 tokens, seconds per run."""
    path = tmp_path_factory.mktemp("text") / "botchan-start.txt"
    path.write_text(resolve_text("botchan").read_text(encoding="utf-8")[:3000], encoding="utf-8")
    return path


def _demo(small_text, out, *extra):
    return ["demo", "--text", "--dataset", f"text:{small_text}", "--seq-len", "16", "--topk", "4",
            "--teacher-epochs", "1", "--student-epochs", "1", "--methods", "ce,kd", "--device", "cpu", "--quiet",
            "--out", out, *extra]


def test_demo_text_end_to_end_then_refuses_to_run_over_itself(small_text, tmp_path, run_cli):
    out = tmp_path / "demo"
    result = run_cli(_demo(small_text, out))
    assert result.code == 0, result.out + result.err
    rows = {m.group(1): m.groups()[1:] for m in map(ROW.match, result.out.splitlines()) if m}
    assert list(rows) == ["teacher", "ce", "kd", "kd-online"], result.out
    sources = {run: r[0] for run, r in rows.items()}
    assert sources == {"teacher": "labels", "ce": "labels", "kd": "cache", "kd-online": "online"}
    assert rows["teacher"][1] == "hf:tiny-teacher" and rows["kd"][1] == "hf:tiny-student"
    for run, (_, _, loss, ppl, fwd_run, fwd_saved) in rows.items():
        assert float(ppl) == pytest.approx(2.718281828 ** float(loss), rel=2e-2), run
        assert (int(fwd_run.replace(",", "")) > 0) == (run == "kd-online")
        assert (int(fwd_saved.replace(",", "")) > 0) == (run == "kd")
    assert "top-4 next-token logits" in result.out and "KD at T = 1" in result.out
    results = json.loads((out / "demo_results.json").read_text())
    assert [r["run"] for r in results["rows"]] == list(rows)
    # The trained teacher is an hf folder, the teacher of the dump and of the online run.
    assert (out / "teacher" / "hf" / "config.json").exists()
    record = json.loads((out / "kd" / "config.json").read_text())
    assert record["config"]["method"] == "kd" and record["hparams"]["temperature"] == 1.0

    again = run_cli(_demo(small_text, out))
    assert again.code == 2 and "pass --overwrite" in again.err and len(again.err.strip().splitlines()) == 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--text", "--views", "3"], "--views belong to the image demo: drop them with --text"),
    (["--text", "--label-fraction", "0.5"], "--label-fraction belong to the image demo"),
    (["--seq-len", "32"], "--seq-len belong to the language-model demo: add --text"),
    (["--text", "--methods", "ce,lud"], "lud is not meaningful on token rows"),
    (["--text", "--methods", "kd,nope"], "nope"),
])
def test_demo_text_refuses_before_anything_is_written(tmp_path, run_cli, extra, message):
    out = tmp_path / "demo"
    result = run_cli(["demo", *extra, "--out", out, "--device", "cpu", "--quiet"])
    assert result.code == 2, result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.err
    assert not out.exists()
