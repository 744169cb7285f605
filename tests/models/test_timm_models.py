"""timm: models and safetensors checkpoints: built offline, named strictly, loaded everywhere a .pt is."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
from safetensors.torch import save_file

from logitcache.datasets import open_dataset
from logitcache.errors import BadInput, CheckpointError, UnknownName
from logitcache.models import create_model, fit_to_model, load_checkpoint, model_input, weights_sha256
from logitcache.views import ViewSpec

TINY = "timm:test_resnet"  # 0.37 M parameters, runs on 8x8 images


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(TINY, num_classes=10)


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file(tiny.state_dict(), path)
    return path


def _fresh(name: str = TINY, num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(1)
    return create_model(name, num_classes=num_classes)


def test_a_pretrained_tag_builds_offline_without_any_download_source(monkeypatch):
    import timm.models._builder

    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)
    model = create_model("timm:test_resnet.r160_in1k", num_classes=7)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 7)
    cfg = model.pretrained_cfg
    assert not cfg.get("url") and not cfg.get("hf_hub_id") and not cfg.get("file")


@pytest.mark.parametrize("name, expected", [
    ("timm:test_resnt", "did you mean timm:test_resnet"),
    ("timm:test_resnet.r999_in1k", "its tags include timm:test_resnet.r160_in1k"),
    ("timmm:test_resnet", "unknown model source 'timmm:'"),
])
def test_unknown_names_suggest_close_ones(name, expected):
    with pytest.raises(UnknownName) as err:
        create_model(name, num_classes=10)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_without_timm_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import then raises ImportError, as when not installed
    with pytest.raises(BadInput, match=r"pip install 'logitcache\[timm\]'"):
        create_model(TINY, num_classes=10)


def test_input_config_comes_from_the_pretrained_config():
    inp = model_input("timm:test_efficientnet")
    assert (inp.size, inp.crop_pct, inp.interpolation) == (160, 0.95, "bicubic")
    assert inp.mean == (0.485, 0.456, 0.406) and "test_efficientnet.r160_in1k" in inp.origin
    assert model_input("resnet8") is None and model_input("tv:resnet18") is None


def test_fit_changes_normalisation_and_folder_view_size_but_not_the_data(tmp_path):
    digits = open_dataset("digits")
    fitted, inp = fit_to_model(digits, TINY)
    assert inp == model_input(TINY)
    assert (fitted.normalize.mean, fitted.normalize.std) == ((0.5,) * 3, (0.5,) * 3)
    assert fitted.train_view == digits.train_view  # a fixed-size dataset keeps its images' size
    assert fitted.fingerprint == digits.fingerprint and digits.normalize.mean != fitted.normalize.mean
    assert inp.view(open_dataset("synthetic:n=4,size=8").train_view).size == 8  # a crop keeps its size
    resized = inp.view(ViewSpec(kind="resized_crop", size=224))
    assert (resized.size, resized.eval_resize) == (160, round(160 / 0.95))
    assert inp.view(ViewSpec(kind="resized_crop", size=96), size=96).eval_resize == round(96 / 0.95)


def test_safetensors_loads_into_timm_and_hashes_as_the_weights(tiny, tiny_file, tmp_path):
    target = _fresh()
    load_checkpoint(target, tiny_file)
    assert weights_sha256(target) == weights_sha256(tiny)
    # A hub-style pytorch_model.bin under a wrapper's "model." prefix and nested under "state_dict".
    bin_path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny.state_dict().items()}}, bin_path)
    assert weights_sha256(create_model(TINY, num_classes=10, checkpoint=bin_path)) == weights_sha256(tiny)
    # A safetensors file under another name is recognised by its header.
    other_name = tmp_path / "weights.bin"
    other_name.write_bytes(tiny_file.read_bytes())
    assert weights_sha256(create_model(TINY, num_classes=10, checkpoint=other_name)) == weights_sha256(tiny)


@pytest.mark.parametrize("name", ["resnet8", "tv:resnet18"])
def test_safetensors_loads_into_the_zoo_and_torchvision(name, tmp_path):
    torch.manual_seed(0)
    source = create_model(name, num_classes=10)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    assert weights_sha256(create_model(name, num_classes=10, checkpoint=path)) == weights_sha256(source)


def test_a_model_prefix_is_kept_when_the_model_has_such_keys(tiny, tmp_path):
    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Linear(2, 2)

    holder = Holder()
    path = tmp_path / "holder.safetensors"
    save_file(holder.state_dict(), path)
    load_checkpoint(Holder(), path)  # "model.weight" is the model's own key, not a wrapper's


def _error(model: torch.nn.Module, path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("cut", [4, 100, -1000])
def test_truncated_safetensors_is_named_as_damaged(tiny_file, tmp_path, cut):
    path = tmp_path / "cut.safetensors"
    data = tiny_file.read_bytes()
    path.write_bytes(data[:cut])
    assert "not a readable safetensors file" in _error(_fresh(), path)


def test_safetensors_of_another_architecture_names_the_keys(tiny_file):
    message = _error(create_model("timm:test_efficientnet", num_classes=10), tiny_file)
    assert "missing keys (conv_stem.weight" in message and "unexpected keys" in message


def test_safetensors_with_another_class_count_says_so(tiny_file):
    assert "has 10 classes but the model was built for 5" in _error(_fresh(num_classes=5), tiny_file)


def test_safetensors_with_another_shape_names_the_first_mismatch(tiny, tmp_path):
    state = dict(tiny.state_dict())
    key = "layer1.0.conv1.weight"
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 2)
    path = tmp_path / "wide.safetensors"
    save_file(state, path)
    assert f"{key} has shape" in _error(_fresh(), path)


def test_without_safetensors_the_package_is_named(tiny_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert "pip install 'logitcache[timm]'" in _error(_fresh(), tiny_file)


def test_the_library_and_cli_import_neither_timm_nor_safetensors(fresh_imports, loaded):
    assert loaded(fresh_imports["library"] | fresh_imports["cli"], "timm", "safetensors") == []
