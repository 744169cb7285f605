"""The command line as a new user meets it: ``--config`` files and how they merge with the
command line, ``--version``, whole sentences in ``--help``, and names listed where they are asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitcache.methods import get_method, list_methods
from logitcache_cli import train as train_cli
from logitcache_cli._config import merge_set

SYNTHETIC = "synthetic:n=64,size=8"
# A dkd run with a seeded random teacher online: no cache to make, about two seconds.
DKD = f"""
student = "resnet8"
dataset = "{SYNTHETIC}"
method = "dkd"
teacher-online = true
teacher = "resnet8"
random_init_teacher = true
epochs = 1
device = "cpu"
workers = 0
quiet = true
"""


def _one_error_line(result) -> str:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.err, result.err
    return lines[0]


def _toml(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("form", ["list", "table"])
def test_set_in_the_file_and_on_the_command_line_merge_key_by_key(form, tmp_path, run_cli):
    hparams = 'set = ["beta=2", "warmup=1"]' if form == "list" else "[set]\nbeta = 2\nwarmup = 1"
    config = _toml(tmp_path / "run.toml", f"{DKD}\n{hparams}\n")
    out = tmp_path / "run"
    done = run_cli(["train", "--config", config, "--set", "alpha=0.5", "--set", "beta=3", "--out", out])
    assert done.code == 0, done.err
    saved = json.loads((out / "config.json").read_text())["hparams"]
    assert saved == {**get_method("dkd").defaults(), "alpha": 0.5, "beta": 3.0, "warmup": 1}


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 9)),
       cli=st.dictionaries(st.sampled_from("cdef"), st.integers(0, 9)))
def test_merge_set_is_a_dict_update(file, cli):
    """Whatever the keys: the file's entries, each key the command line gives replaced by its value."""

    class Ctx:
        meta = {"logitcache.config_set": [f"{k}={v}" for k, v in file.items()]}

    merged = merge_set(Ctx(), None, [f"{k}={v}" for k, v in cli.items()] or None)
    assert dict(item.split("=") for item in merged or []) == {k: str(v) for k, v in {**file, **cli}.items()}


def test_config_values_reach_the_run_and_the_command_line_wins(tmp_path, run_cli, monkeypatch):
    seen = {}

    def fake_train(cfg, **kwargs):  # the TrainConfig the options make, without training
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(train_cli, "train", fake_train)
    config = _toml(tmp_path / "run.toml", f"{DKD}\nlr = 1\nbatch-size = 32\nsync_bn = false\nmilestones = \"1,2\"\n")
    assert run_cli(["train", "--config", config, "--epochs", "3", "--out", tmp_path / "run"]).code == 0
    cfg = seen["cfg"]
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.sync_bn, cfg.milestones, cfg.teacher_online) == (
        3, 1.0, 32, False, (1, 2), True)


WRONG = {  # file text -> words of the refusal
    "bool for an int": ("epochs = true", "epochs = true in", "is a boolean: epochs takes an integer"),
    "string for a number": ('lr = "0.1"', 'lr = "0.1" in', "is a string: lr takes a number"),
    "int for a flag": ("quiet = 1", "quiet = 1 in", "is an integer: quiet takes true or false"),
    "number for a string": ("student = 8", "student = 8 in", "is an integer: student takes a string"),
    "a table for a number": ("[lr]\nx = 1", "lr = {'x': 1} in", "is a table: lr takes a number"),
    "set as a number": ("set = 3", "set = 3 in", "use a list of KEY=VALUE strings"),
    "set as a nested table": ("[set.beta]\nx = 1", "set = {'beta': {'x': 1}}", "or a table ([set] then beta = 2)"),
    "a number in a list option": ("log = [3]", "log = 3 in", "is an integer: log takes a string"),
}


@pytest.mark.parametrize("text", ['log = "tensorboard"', 'log = ["tensorboard"]'])
def test_a_repeatable_option_takes_a_list_or_one_value(text, tmp_path, run_cli, monkeypatch):
    seen = {}

    def fake_train(cfg, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(train_cli, "train", fake_train)
    config = _toml(tmp_path / "run.toml", f"{text}\n")
    assert run_cli(["train", "--config", config, "--student", "resnet8", "--dataset", "digits", "--method", "ce",
                    "--out", tmp_path / "run"]).code == 0
    assert tuple(seen["cfg"].log) == ("tensorboard",)


@pytest.mark.parametrize("case", list(WRONG))
def test_a_config_value_of_the_wrong_type_or_name_is_refused(case, tmp_path, run_cli):
    text, *words = WRONG[case]
    config = _toml(tmp_path / "run.toml", f"{text}\n")
    out = tmp_path / "run"
    line = _one_error_line(run_cli(["train", "--config", config, "--student", "resnet8", "--dataset", "digits",
                                    "--out", out]))
    for word in words:
        assert word in line, line
    assert str(config) in line and not out.exists()


def test_misspelt_keys_each_get_their_suggestion(tmp_path, run_cli):
    config = _toml(tmp_path / "run.toml", "epoch = 3\nbatchsize = 2\nset_ = []\nzzz = 1\n")
    line = _one_error_line(run_cli(["train", "--config", config, "--student", "resnet8", "--dataset", "digits",
                                    "--out", tmp_path / "run"]))
    assert "epoch: did you mean epochs?" in line and "batchsize: did you mean batch_size?" in line
    assert "set_: did you mean set?" in line and "zzz:" not in line
    assert "unknown key(s) batchsize, epoch, set_, zzz in" in line and "valid keys: aa, batch_size, cache," in line


FILES = {  # what --config names -> words of the refusal
    "a folder": (lambda tmp: tmp, "is a folder: pass a TOML file"),
    "nothing": (lambda tmp: tmp / "missing.toml", "does not exist"),
    "Latin-1 text": (lambda tmp: _toml(tmp / "l1.toml", 'student = "r\xe9snet8"\n'.encode("latin-1")),
                     "is not UTF-8 text (byte 12): save it as UTF-8"),
    "not TOML": (lambda tmp: _toml(tmp / "bad.toml", "student = \n"), "is not valid TOML"),
    "an unreadable file": (lambda tmp: Path("/proc/self/mem"), "cannot read --config /proc/self/mem"),
}


@pytest.mark.parametrize("case", list(FILES))
def test_a_config_file_that_cannot_be_read(case, tmp_path, run_cli):
    make, words = FILES[case]
    path = make(tmp_path)
    out = tmp_path / "run"
    line = _one_error_line(run_cli(["train", "--config", path, "--student", "resnet8", "--dataset", "digits",
                                    "--out", out]))
    assert words in line and str(path) in line, line
    assert not out.exists()


def test_version(run_cli):
    from logitcache._utils import tool_version

    done = run_cli(["--version"])
    assert done.code == 0 and done.out.strip() == f"logitcache {tool_version()}"


def test_help_shows_each_command_in_whole_sentences(run_cli):
    import typer

    from logitcache_cli.main import app

    shown = " ".join(run_cli(["--help"]).out.split())
    commands = typer.main.get_command(app).commands
    assert len(commands) >= 11
    for name, command in commands.items():
        first = " ".join(command.help.split("\n\n")[0].split()).split(". ")[0].rstrip(".")
        assert f"{name} {first}." in shown, name
    # Click ends a cut summary with "..." (the usage line ends with "[ARGS]...").
    assert not [line for line in run_cli(["--help"]).out.splitlines()[1:] if line.endswith("...")]


def test_methods_with_an_unknown_name_lists_the_valid_ones(run_cli):
    line = _one_error_line(run_cli(["methods", "dk"]))
    assert "unknown method 'dk': did you mean dkd, kd?" in line
    assert line.endswith("valid are " + ", ".join(list_methods()))


def test_models_with_a_pattern_matching_nothing_suggests_names(run_cli):
    line = _one_error_line(run_cli(["models", "resnt8"]))
    assert line.startswith("error: no model matches 'resnt8': did you mean resnet8")
    assert line.endswith("`logitcache models` lists them all")
