"""``logitcache demo``: end to end through the console script in a reduced setting, its folder
refusals, and that its online row replays the same views as its cached rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from logitcache.demo import DEMO_MARKER, DemoConfig, run_demo

DEMO_ARGS = ["demo", "--teacher-epochs", "2", "--student-epochs", "1", "--views", "2", "--device", "cpu", "--quiet"]
RUNS = ["teacher", "ce", "kd-cache", "dkd-cache", "loca-cache", "rld-cache", "lud-cache", "kd-online"]
ROW = re.compile(r"^(\S+)\s+(\S+)\s+(cache|online|labels)\s+([\d.]+)\s+([\d.]+)\s+([\d,]+)\s+([\d,]+)$")


def _table(stdout: str) -> dict[str, tuple]:
    rows = {}
    for line in stdout.splitlines():
        m = ROW.match(line.strip())
        if m:
            run, method, source, best, last, made, saved = m.groups()
            rows[run] = (method, source, float(best), float(last), int(made.replace(",", "")), int(saved.replace(",", "")))
    return rows


def test_demo_end_to_end_then_refuses_to_run_over_itself(tmp_path, run_console, run_cli, snapshot):
    out = tmp_path / "demo"
    proc = run_console([*DEMO_ARGS, "--out", out], timeout=300)
    assert proc.code == 0, proc.err
    assert "Traceback" not in proc.err
    rows = _table(proc.out)
    assert list(rows) == RUNS, proc.out
    # The table compares what the cache changes, teacher passes, not wall times measured under load.
    header = next(line for line in proc.out.splitlines() if line.startswith("run "))
    assert "teacher fwd run" in header and "time" not in header
    for run, (method, source, best, last, made, saved) in rows.items():
        assert 0 <= last <= best <= 100, run
        assert method == ("ce" if run in ("teacher", "ce") else run.split("-")[0])
        assert source == {"teacher": "labels", "ce": "labels", "kd-online": "online"}.get(run, "cache")
        assert saved == (1438 if source == "cache" else 0), run
        assert made == (1438 if source == "online" else 0), run
    assert "selected on the test set (optimistic)" in proc.out
    assert rows["teacher"][2] > 50, "two epochs of resnet20 on digits learn something"

    results = json.loads((out / "demo_results.json").read_text())
    assert [r["run"] for r in results] == RUNS
    for r in results:
        method, source, best, last, made, saved = rows[r["run"]]
        assert (r["method"], r["source"], r["teacher_forwards_run"], r["teacher_forwards_saved"]) == (
            method, source, made, saved)
        assert (r["best_acc"], r["last_acc"]) == pytest.approx((best, last), abs=0.005)
        assert (out / r["run"] / "best.pt").is_file()
    assert r["teacher_forwards_run"] == 1438, "kd-online ran the teacher once per sample"
    assert (out / "cache.zarr" / "zarr.json").is_file() and (out / DEMO_MARKER).is_file()
    assert f"demo_results.json are in {out}" in proc.out
    assert re.search(r"^the demo took \d+ s$", proc.out, re.MULTILINE), proc.out

    # Into the same folder again: refused without --overwrite, nothing changed.
    before = snapshot(out)
    refused = run_cli([*DEMO_ARGS, "--out", out])
    assert refused.code == 2
    assert "--overwrite" in refused.err and "Traceback" not in refused.err
    assert snapshot(out) == before


def test_overwrite_refuses_a_folder_that_is_not_a_demo(tmp_path, run_cli, snapshot):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "results.csv").write_text("precious")
    before = snapshot(out)
    refused = run_cli([*DEMO_ARGS, "--out", out, "--overwrite"])
    assert refused.code == 2
    assert "not a logitcache demo" in refused.err and "nothing was deleted" in refused.err
    assert snapshot(out) == before


TINY = dict(dataset="synthetic:n=64,size=8", teacher="resnet8", student="resnet8", teacher_epochs=1, views=2,
            methods=("kd",), online=("kd",), device="cpu", progress=False)


def test_demo_online_row_replays_the_cached_rows_views(tmp_path, replay_spy):
    """kd-online is only a fair comparison if it sees the views kd-cache sees, over more epochs than views."""
    rows = run_demo(DemoConfig(out=str(tmp_path / "demo"), student_epochs=3, **TINY), echo=lambda message: None)
    assert [r.run for r in rows] == ["teacher", "kd-cache", "kd-online"]
    # Training epochs in call order: the teacher's 1, then 3 per student run.
    seeds = [replay_spy.seeds(e)[np.argsort(replay_spy.samples(e))] for e in range(1, 8)]
    cached, online = seeds[1:4], seeds[4:7]
    for epoch, (a, b) in enumerate(zip(cached, online), start=1):
        assert np.array_equal(a, b), f"epoch {epoch}: the online teacher saw other views"
    assert np.array_equal(cached[0], cached[2]) and not np.array_equal(cached[0], cached[1])  # cycle over 2 views


def test_demo_overwrite_replaces_a_previous_demo(tmp_path):
    out = tmp_path / "demo"
    run_demo(DemoConfig(out=str(out), student_epochs=1, **TINY), echo=lambda message: None)
    (out / "kd-cache" / "stale.txt").write_text("from the first demo")
    rows = run_demo(DemoConfig(out=str(out), student_epochs=1, overwrite=True, **TINY), echo=lambda message: None)
    assert len(rows) == 3
    assert not (out / "kd-cache" / "stale.txt").exists()
    assert json.loads((out / "demo_results.json").read_text())[1]["run"] == "kd-cache"


def test_demo_without_overwrite_names_the_fix(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "x").write_text("")
    from logitcache.errors import BadInput

    with pytest.raises(BadInput, match="--overwrite"):
        run_demo(DemoConfig(out=str(out), student_epochs=1, **TINY), echo=lambda message: None)
    assert [p.name for p in Path(out).iterdir()] == ["x"]
