"""A sweep whose run was SIGKILLed part way: refused until ``--resume`` is asked for, then only that
run is continued (``train --resume``) and a finished run is never redone."""

from __future__ import annotations

import json

SYNTHETIC = "synthetic:n=64,size=8"
RUN = ["--student", "resnet8", "--dataset", SYNTHETIC, "--epochs", "2", "--device", "cpu"]


def test_a_killed_run_of_a_sweep_is_resumed_only_when_asked(make_cache, kill_at, run_cli, snapshot, tmp_path):
    cache = make_cache(dataset=SYNTHETIC, chunk_samples=16, encoding="full", dtype="fp32")
    out = tmp_path / "sw"
    sweep = ["sweep", "--cache", cache, "--out", out, "--methods", "kd", *RUN]
    first = run_cli([*sweep, "--seeds", "0"])
    assert first.code == 0, first.err
    done = (out / "kd-s0" / "summary.json").stat().st_mtime_ns
    # Seed 1's run as the sweep starts it, killed before its second step (epoch 1 of 2 done).
    kill_at("step:1", ["train", "--method", "kd", "--seed", "1", "--out", out / "kd-s1", "--cache", cache, "--quiet",
                       *RUN])
    assert not (out / "kd-s1" / "summary.json").exists()

    before = snapshot(out)
    refused = run_cli([*sweep, "--seeds", "0,1"])
    assert refused.code == 2 and "kd-s1" in refused.err and "--resume" in refused.err
    assert "Traceback" not in refused.err
    assert snapshot(out) == before, "nothing is started or rewritten before the refusal"

    resumed = run_cli([*sweep, "--seeds", "0,1", "--resume"])
    assert resumed.code == 0, resumed.err
    assert "1 run of 2 already finished" in resumed.out
    assert (out / "kd-s0" / "summary.json").stat().st_mtime_ns == done, "the finished run is not redone"
    metrics = [json.loads(line) for line in (out / "kd-s1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    groups = json.loads((out / "results.json").read_text())["groups"]
    assert [(g["label"], g["n"], g["seeds"]) for g in groups] == [("kd", 2, [0, 1])]
