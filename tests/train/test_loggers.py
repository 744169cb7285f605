"""``--log tensorboard`` / ``--log wandb`` beside metrics.jsonl: optional, lazily imported, and a
missing package is one error line naming the extra to install.

TensorBoard is tested for real (its event file read back); wandb for real by an offline run (its
binary run file holds every metric), and its calls against a stub module that records them."""

from __future__ import annotations

import importlib
import json
import sys
import types

import pytest

from train_helpers import read_metrics

SYNTHETIC = "synthetic:n=64,size=8"
BASE = ["--method", "ce", "--student", "resnet8", "--dataset", SYNTHETIC, "--device", "cpu", "--quiet"]


def test_tensorboard_event_file_holds_every_metric_of_every_epoch(tmp_path, run_cli):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    done = run_cli(["train", *BASE, "--epochs", "2", "--val-fraction", "0.25", "--log", "tensorboard", "--out", out])
    assert done.code == 0, done.err
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    metrics = read_metrics(out)
    keys = [k for k in metrics[0] if k != "epoch"]
    assert "val_top1" in keys and "test_top1" in keys and "train_loss" in keys
    assert sorted(events.Tags()["scalars"]) == sorted(keys)
    for key in keys:
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in metrics], rel=1e-6), key


def test_a_resumed_run_may_start_logging(synthetic_cache, train_run, monkeypatch):
    """Loggers do not change what is trained, so --resume accepts another --log."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_module = importlib.import_module("logitcache.train")
    real, calls = train_module.evaluate_model, []

    def stop_in_epoch_2(*args, **kw):
        calls.append(1)
        if len(calls) > 1:  # epoch 1 was evaluated and saved
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "evaluate_model", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_run(method="kd", cache=synthetic_cache, epochs=2)
    monkeypatch.setattr(train_module, "evaluate_model", real)
    _, out = train_run(method="kd", cache=synthetic_cache, epochs=2, resume=True, log=("tensorboard",))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("test_top1")] == [2]


class _StubWandb(types.ModuleType):
    """Records what the logger asks of wandb."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)
        stub = self

        class Run:
            def log(self, metrics, step):
                stub.logged.append((step, metrics))

            def finish(self):
                stub.finished += 1

        return Run()


def test_wandb_logs_offline_into_the_run_folder(tmp_path, run_cli, monkeypatch):
    stub = _StubWandb()
    monkeypatch.setitem(sys.modules, "wandb", stub)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    done = run_cli(["train", *BASE, "--epochs", "2", "--log", "wandb", "--out", out])
    assert done.code == 0, done.err
    (init,) = stub.inits
    assert (init["mode"], init["dir"], init["config"]["config"]["log"]) == ("offline", str(out), ["wandb"])
    metrics = read_metrics(out)
    assert stub.logged == [(m["epoch"], {k: v for k, v in m.items() if k != "epoch"}) for m in metrics]
    assert stub.finished == 1


def test_a_real_wandb_run_is_written_offline_into_the_run_folder(tmp_path, run_cli, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    done = run_cli(["train", *BASE, "--epochs", "2", "--log", "wandb", "--out", out])
    assert done.code == 0, done.err
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing was sent anywhere
    data = run_file.read_bytes()
    last = read_metrics(out)[-1]
    for key, value in last.items():  # wandb keeps each history value as JSON text
        assert key.encode() in data, key
    top1 = last["test_top1"]  # JSON text from wandb's Go core: 0 where Python writes 0.0
    assert any(text.encode() in data for text in (json.dumps(top1), f"{top1:g}")), top1


@pytest.mark.parametrize(("name", "module"), [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_missing_logger_package_is_one_line_naming_the_extra(tmp_path, run_cli, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # import then raises ImportError, as when not installed
    out = tmp_path / "run"
    refused = run_cli(["train", *BASE, "--epochs", "1", "--log", name, "--out", out])
    assert refused.code == 2
    assert refused.err == f"error: --log {name} needs the {name} package: pip install 'logitcache[{name}]'\n"
    assert not out.exists()


def test_an_unknown_logger_is_refused(tmp_path, run_cli):
    refused = run_cli(["train", *BASE, "--epochs", "1", "--log", "mlflow", "--out", tmp_path / "run"])
    assert refused.code == 2 and "unknown --log 'mlflow': use tensorboard or wandb" in refused.err


def test_loggers_are_imported_only_when_asked_for(fresh_imports, loaded):
    assert loaded(fresh_imports["library"], "tensorboard", "wandb", "torch.utils.tensorboard") == []
