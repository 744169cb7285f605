"""``logitcache report``: renders every figure on the shipped digits as a valid PNG, index.html
shows each, the numbers are the teacher's, and neither ``import logitcache`` nor training
imports matplotlib."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"
TEACHER_FIGURES = ["teacher_reliability.png", "misinstruction_per_class.png", "teacher_entropy.png", "target_shift.png"]
RUN_FIGURES = ["run_curves.png", "sweep_bars.png"]


def _check_pngs(out, names):
    from PIL import Image

    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    html = (out / "index.html").read_text()
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG), name
        with Image.open(out / name) as im:
            im.verify()
            assert im.size[0] > 300 and im.size[1] > 300, name
        assert f"src='{name}'" in html, f"index.html shows {name}"
    assert len(re.findall(r"<img ", html)) == len(names)


def test_report_of_the_digits_cache(digits_cache, run_cli, tmp_path):
    out = tmp_path / "rep"
    result = run_cli(["report", digits_cache, "--out", out])
    assert result.code == 0, result.err
    _check_pngs(out, TEACHER_FIGURES)
    assert "note: a top-5 cache" in result.out, "the rebuilt distribution is said to be one"
    record = json.loads((out / "report.json").read_text())
    views = record["teacher"]["views"]
    assert [v["view"] for v in views] == [0, 1, 2] and views[0]["clean"]
    from logitcache.info import cache_info

    info = cache_info(digits_cache, progress=False)
    clean_misinstruction = 1 - views[0]["accuracy"]
    assert clean_misinstruction == pytest.approx(info.clean.misinstruction_rate)
    assert views[0]["ece"] == pytest.approx(info.clean.ece)
    shifts = {s["method"]: s for s in record["teacher"]["shifts"]}
    assert set(shifts) == {"loca", "rld", "lud", "kd --logit-stand"}
    assert shifts["loca"]["corrected"] == 1.0, "LoCa puts the label on top of every mis-instructed pair"
    assert shifts["lud"]["corrected"] == 0.0 and shifts["kd --logit-stand"]["corrected"] == 0.0, "order kept"
    assert all(s["mean_kl"] >= 0 for s in shifts.values())
    # Again into the same folder: refused without --overwrite, then replaced with it.
    again = run_cli(["report", digits_cache, "--out", out])
    assert again.code == 2 and "--overwrite" in again.err
    assert run_cli(["report", digits_cache, "--out", out, "--overwrite"]).code == 0


def test_report_with_runs_adds_curves_and_bars(experiment_cache, finished_sweep, run_cli, tmp_path):
    out = tmp_path / "rep"
    result = run_cli(["report", experiment_cache, "--runs", finished_sweep, "--out", out])
    assert result.code == 0, result.err
    _check_pngs(out, TEACHER_FIGURES + RUN_FIGURES)
    html = (out / "index.html").read_text()
    assert "Mean ± std over seeds" in html and "kd" in html
    assert f"open {out}/index.html" in result.out


def test_report_refuses_a_folder_that_is_not_a_report(digits_cache, run_cli, snapshot, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "x.txt").write_text("precious")
    before = snapshot(out)
    result = run_cli(["report", digits_cache, "--out", out, "--overwrite"])
    assert result.code == 2 and "not a logitcache report" in result.err and "Traceback" not in result.err
    assert snapshot(out) == before


def test_import_and_training_do_not_import_matplotlib_or_the_llm_extras(fresh_imports, loaded):
    # The language-model path's packages load only inside hf:/text: code, never for images.
    assert loaded(fresh_imports["cli"], "matplotlib", "transformers", "tokenizers", "safetensors", "pyarrow") == []
