"""``logitcache sweep`` and ``compare`` end to end: every (method, seed) run from one cache, the
summary's numbers against the runs' own summary.json, never a finished run redone, per-method
--set, and bad input refused in one line before anything is written."""

from __future__ import annotations

import json
import statistics

import pytest

from experiment_helpers import sweep_argv


def _summaries(sweep) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))}


def test_results_are_mean_and_sample_std_of_the_runs(finished_sweep):
    runs = _summaries(finished_sweep)
    assert sorted(runs) == ["ce-s0", "ce-s1", "kd-s0", "kd-s1"]
    results = json.loads((finished_sweep / "results.json").read_text())
    assert "ddof = 1" in results["std"]
    groups = {g["label"]: g for g in results["groups"]}
    assert list(groups) == ["ce", "kd"]
    for method, g in groups.items():
        best = [runs[f"{method}-s{s}"]["best_acc"] for s in (0, 1)]
        last = [runs[f"{method}-s{s}"]["last_acc"] for s in (0, 1)]
        assert g["n"] == 2 and g["seeds"] == [0, 1] and g["selection"] == "test"
        assert g["best"]["mean"] == pytest.approx(statistics.fmean(best))
        assert g["best"]["std"] == pytest.approx(statistics.stdev(best))  # sample std, ddof = 1
        assert (g["best"]["min"], g["best"]["max"]) == (min(best), max(best))
        assert g["last"]["mean"] == pytest.approx(statistics.fmean(last))
    assert groups["ce"]["teacher_forwards_saved"] == 0
    assert groups["kd"]["teacher_forwards_saved"] == 2 * 2 * 64, "two runs of two epochs over 64 images"
    table = (finished_sweep / "results.md").read_text()
    assert "| kd | 2 | test |" in table and "ddof = 1" in table
    seeds = {json.loads((finished_sweep / r / "config.json").read_text())["config"]["seed"] for r in runs}
    assert seeds == {0, 1}


def test_compare_gives_the_same_summary_for_runs_or_the_sweep_folder(finished_sweep, run_cli, tmp_path):
    whole = run_cli(["compare", finished_sweep])
    assert whole.code == 0, whole.err
    picked = run_cli(["compare", *(finished_sweep / r for r in ("kd-s1", "kd-s0", "ce-s0", "ce-s1")),
                      "--out", tmp_path / "cmp"])
    assert picked.code == 0, picked.err
    expected = (finished_sweep / "results.md").read_text()
    assert whole.out == expected
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["groups"][0]["label"] == "kd"
    # Runs that differ in more than their seed are separate groups, labelled by what differs.
    one = run_cli(["compare", finished_sweep / "kd-s0"])
    assert "| kd | 1 | test |" in one.out


def test_sweep_end_to_end_skips_finished_runs_and_sets_per_method(experiment_cache, run_console, run_cli, tmp_path):
    out = tmp_path / "sw"
    argv = sweep_argv(experiment_cache, out, "--methods", "kd,dkd", "--seeds", "3", "--set", "kd.temperature=2",
                      "--set", "dkd.beta=1")
    first = run_console(argv, timeout=300)
    assert first.code == 0, first.out + first.err
    assert "[2/2]" in first.out and "| dkd | 1 | test |" in first.out
    hparams = {m: json.loads((out / f"{m}-s3" / "config.json").read_text())["hparams"] for m in ("kd", "dkd")}
    assert hparams["kd"]["temperature"] == 2 and hparams["dkd"]["temperature"] == 4
    assert hparams["dkd"]["beta"] == 1
    before = (out / "kd-s3" / "summary.json").stat().st_mtime_ns
    again = run_cli(argv)  # what is tested is the skip, not the console script again
    assert again.code == 0, again.err
    assert "2 runs of 2 already finished" in again.out and "[" not in again.out.split("\n")[1]
    assert (out / "kd-s3" / "summary.json").stat().st_mtime_ns == before, "a finished run is never redone"
    assert "| kd | 1 | test |" in again.out, "the per-method --set is no setting that tells groups apart"


@pytest.mark.parametrize("extra, message", [
    (["--methods", "kd", "--set", "kd.temperature"], "use METHOD.KEY=VALUE"),
    (["--methods", "kd", "--set", "dkd.beta=2"], "not in --methods kd"),
    (["--methods", "kd,nope"], "nope"),
    (["--methods", "kd", "--seeds", "0,x"], "comma-separated integers"),
    (["--methods", "kd", "--seeds", "1,1"], "names an entry twice"),
    (["--methods", "kd", "--epochz", "3"], "No such option"),
    (["--methods", "kd", "--seed", "3"], "the sweep sets these"),
    (["--methods", "kd", "--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_sweep_input_is_one_line_and_writes_nothing(extra, message, experiment_cache, run_cli, tmp_path):
    out = tmp_path / "sw"
    result = run_cli(sweep_argv(experiment_cache, out, *extra))
    assert result.code == 2, result.out + result.err
    assert message in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_a_sweep_refuses_another_sweeps_folder_and_foreign_files(experiment_cache, finished_sweep, run_cli,
                                                                  snapshot, tmp_path):
    before = snapshot(finished_sweep)
    other = run_cli(sweep_argv(experiment_cache, finished_sweep, "--methods", "kd", "--set", "kd.temperature=3"))
    assert other.code == 2 and "holds a sweep with other settings" in other.err
    assert snapshot(finished_sweep) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    foreign = run_cli(sweep_argv(experiment_cache, mine, "--methods", "kd"))
    assert foreign.code == 2 and "not a sweep" in foreign.err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_compare_refuses_what_is_no_run(run_cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, message in ((empty, "holds no finished run"), (tmp_path / "missing", "is not a run folder")):
        result = run_cli(["compare", path])
        assert result.code == 2 and message in result.err and "Traceback" not in result.err
