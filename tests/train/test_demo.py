"""``logitcache demo``: end to end through the console script in a reduced setting (a teacher, one
cache, a sweep of students on a tenth of the labels, mean ± std, what the table supports, the
report), its folder refusals, and that an online row replays the cache's own views."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from logitcache.demo import DEMO_MARKER, DemoConfig, run_demo
from logitcache.store.reader import CacheReader

DEMO_ARGS = ["demo", "--teacher-epochs", "1", "--student-epochs", "1", "--views", "2", "--methods", "ce,kd",
             "--seeds", "0,1", "--jobs", "2", "--device", "cpu", "--quiet"]
STAT = r"([\d.]+)(?: ± ([\d.]+))?"
ROW = re.compile(rf"^(\S+)\s+(cache|online|labels)\s+(\d+)%\s+(\d+)\s+{STAT}\s+{STAT}\s+([\d,]+)\s+([\d,]+)$")


def _table(stdout: str) -> dict[str, tuple]:
    rows = {}
    for line in stdout.splitlines():
        m = ROW.match(line.strip())
        if m:
            run, source, labels, n, best, best_std, last, last_std, made, saved = m.groups()
            rows[run] = (source, int(labels), int(n), float(best), best_std, float(last), last_std,
                         int(made.replace(",", "")), int(saved.replace(",", "")))
    return rows


def test_demo_end_to_end_then_refuses_to_run_over_itself(tmp_path, run_console, run_cli, snapshot):
    out = tmp_path / "demo"
    proc = run_console([*DEMO_ARGS, "--out", out], timeout=600)
    assert proc.code == 0, proc.out + proc.err
    assert "Traceback" not in proc.err
    rows = _table(proc.out)
    assert list(rows) == ["teacher", "ce", "kd"], proc.out
    header = next(line for line in proc.out.splitlines() if line.startswith("run "))
    assert "mean ± std" in header and "teacher fwd saved" in header and "time" not in header
    assert rows["teacher"][:3] == ("labels", 100, 1) and rows["teacher"][4] is None
    for run in ("ce", "kd"):
        source, labels, n, best, best_std, last, last_std, made, saved = rows[run]
        assert (labels, n) == (10, 2) and best_std is not None and last_std is not None, "two seeds: mean ± std"
        assert 0 <= last <= 100 and made == 0
        assert (source, saved) == (("labels", 0) if run == "ce" else ("cache", 2 * 1438)), run
    assert "ddof = 1" in proc.out and "selected on" in proc.out and "(optimistic)" in proc.out
    reading = proc.out.split("what this table supports:")[1]
    assert re.search(r"kd vs ce: [+-][\d.]+ points \(last %\), (a difference beyond|within) two standard errors",
                     reading), reading
    assert "n = 2 seeds each" in reading and "one image is 0.28 points" in reading

    results = json.loads((out / "demo_results.json").read_text())
    assert [r["run"] for r in results["rows"]] == ["teacher", "ce", "kd"]
    assert results["reading"] == [line.strip()[2:] for line in reading.splitlines() if line.startswith("  - ")]
    assert sorted(p.name for p in (out / "sweep").iterdir() if p.is_dir()) == ["ce-s0", "ce-s1", "kd-s0", "kd-s1", "logs"]
    for run in ("ce-s0", "kd-s1"):
        assert json.loads((out / "sweep" / run / "config.json").read_text())["labels"]["labelled"] == 144
    assert f"report: {out}/report/index.html" in proc.out
    assert len(list((out / "report").glob("*.png"))) == 6
    assert (out / "cache.zarr" / "zarr.json").is_file() and (out / DEMO_MARKER).is_file()
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
            methods=("kd",), seeds=(0,), jobs=1, device="cpu", progress=False)


def test_demo_online_row_replays_the_caches_views_and_overwrite_replaces_it(tmp_path, replay_spy):
    """An online row is only a fair comparison if it sees the views the cached runs see, over more
    epochs than views: the cache's own seeds, view e mod V in epoch e. The same demo is then the
    previous demo that --overwrite replaces (one demo run less than two tests)."""
    out = tmp_path / "demo"
    result = run_demo(DemoConfig(out=str(out), student_epochs=3, online=("kd",), **TINY), echo=lambda message: None)
    assert [r.run for r in result.rows] == ["teacher", "kd", "kd-online"]
    assert result.rows[2].teacher_forwards_run == 3 * 64
    reader = CacheReader(out / "cache.zarr")
    try:
        # In this process: the teacher's one epoch (call 1), then the online run's three.
        for epoch, call in enumerate(range(2, 5), start=1):
            seeds = replay_spy.seeds(call)[np.argsort(replay_spy.samples(call))]
            assert np.array_equal(seeds, reader.seeds(1 + (epoch - 1) % 2)), f"epoch {epoch}: other views"
    finally:
        reader.close()

    (out / "sweep" / "kd-s0" / "stale.txt").write_text("from the first demo")
    result = run_demo(DemoConfig(out=str(out), student_epochs=1, overwrite=True, **TINY), echo=lambda message: None)
    assert len(result.rows) == 2
    assert not (out / "sweep" / "kd-s0" / "stale.txt").exists() and not (out / "kd-online").exists()
    assert json.loads((out / "demo_results.json").read_text())["rows"][1]["run"] == "kd"


def test_demo_without_overwrite_names_the_fix(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "x").write_text("")
    from logitcache.errors import BadInput

    with pytest.raises(BadInput, match="--overwrite"):
        run_demo(DemoConfig(out=str(out), student_epochs=1, **TINY), echo=lambda message: None)
    assert [p.name for p in Path(out).iterdir()] == ["x"]
