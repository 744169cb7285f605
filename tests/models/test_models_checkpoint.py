"""load_checkpoint: the containers it accepts and the one-line errors it gives."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from logitcache.errors import CheckpointError
from logitcache.models import create_model, load_checkpoint, weights_sha256


class NotATensor:
    """Any class outside torch's weights_only allow-list."""


@pytest.fixture
def source() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10)
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    return model


def _load_error(model: torch.nn.Module, path: Path | str) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    message = str(err.value)
    assert "\n" not in message
    return message


def _loads_into_fresh_model(source: torch.nn.Module, path: Path) -> None:
    torch.manual_seed(1)
    target = create_model("resnet8", num_classes=10)
    load_checkpoint(target, path)
    assert weights_sha256(target) == weights_sha256(source)


def test_top_level_state_dict(source, tmp_path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(source.state_dict(), path)
    _loads_into_fresh_model(source, path)


@pytest.mark.parametrize("key", ["model", "state_dict", "net"])
def test_state_dict_nested_under_a_training_script_key(source, tmp_path, key: str) -> None:
    path = tmp_path / "ckpt_epoch_240.pth"
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {
            "epoch": 240,
            key: source.state_dict(),
            "best_acc": torch.tensor(71.5),
            "optimizer": optimizer.state_dict(),
        },
        path,
    )
    _loads_into_fresh_model(source, path)


def test_data_parallel_prefix_is_stripped(source, tmp_path) -> None:
    path = tmp_path / "ddp.pt"
    wrapped = torch.nn.DataParallel(source)
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    torch.save({"model": wrapped.state_dict()}, path)
    _loads_into_fresh_model(source, path)


def test_checkpoint_without_num_batches_tracked_loads(source, tmp_path) -> None:
    # Checkpoints saved before torch 0.4.1 have no num_batches_tracked buffers.
    path = tmp_path / "old.pt"
    state = OrderedDict(
        (k, v) for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")
    )
    torch.save(state, path)
    _loads_into_fresh_model(source, path)


def test_create_model_loads_checkpoint(source, tmp_path) -> None:
    path = tmp_path / "t.pt"
    torch.save(source.state_dict(), path)
    model = create_model("resnet8", num_classes=10, checkpoint=str(path))
    assert weights_sha256(model) == weights_sha256(source)


def test_wrong_number_of_classes_says_so(source, tmp_path) -> None:
    path = tmp_path / "t.pt"
    torch.save(source.state_dict(), path)
    message = _load_error(create_model("resnet8", num_classes=100), path)
    assert f"checkpoint {path} has 10 classes but the model was built for 100" in message
    assert "pass the dataset the teacher was trained on, or the right checkpoint" in message


def test_wrong_number_of_classes_for_a_torchvision_model(tmp_path) -> None:
    path = tmp_path / "tv.pt"
    torch.save(create_model("tv:mobilenet_v3_small", num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match="has 10 classes but the model was built for 100"):
        create_model("tv:mobilenet_v3_small", num_classes=100, checkpoint=path)


def test_other_architecture_lists_missing_keys(source, tmp_path) -> None:
    path = tmp_path / "t.pt"
    torch.save(source.state_dict(), path)
    message = _load_error(create_model("resnet14", num_classes=10), path)
    assert "does not fit" in message
    assert "missing keys (layer1.1.conv1.weight" in message
    assert "model name the checkpoint was trained with" in message


def test_shape_mismatch_names_the_key(source, tmp_path) -> None:
    path = tmp_path / "t.pt"
    state = source.state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(state, path)
    message = _load_error(create_model("resnet8", num_classes=10), path)
    assert "conv1.weight has shape (32, 3, 3, 3) in the checkpoint but (16, 3, 3, 3)" in message


def test_other_width_is_not_mistaken_for_a_class_count(source, tmp_path) -> None:
    path = tmp_path / "t.pt"
    torch.save(create_model("wrn_16_2", num_classes=10).state_dict(), path)
    message = _load_error(create_model("wrn_16_1", num_classes=10), path)
    assert "classes" not in message
    assert "does not fit WideResNet" in message


def test_unexpected_keys_are_reported(source, tmp_path) -> None:
    path = tmp_path / "t.pt"
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    assert "1 unexpected keys (extra.weight)" in _load_error(create_model("resnet8", 10), path)


def test_arbitrary_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"obj": NotATensor()}, path)
    message = _load_error(create_model("resnet8"), path)
    assert "pickled Python objects" in message
    assert "NotATensor" in message
    assert "re-save it with torch.save(model.state_dict(), path)" in message


def test_garbage_file(tmp_path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 4)
    message = _load_error(create_model("resnet8"), path)
    assert f"checkpoint {path} is not a readable PyTorch file" in message
    assert "torch.save" in message


def test_text_file(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint\n")
    assert "is not a readable PyTorch file" in _load_error(create_model("resnet8"), path)


def test_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.pt"
    message = _load_error(create_model("resnet8"), path)
    assert message == f"checkpoint {path} not found: check the path"


def test_directory_is_not_a_checkpoint(tmp_path) -> None:
    message = _load_error(create_model("resnet8"), tmp_path)
    assert message == f"checkpoint {tmp_path} is a directory: pass the file inside it"


def test_not_a_dict(tmp_path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    message = _load_error(create_model("resnet8"), path)
    assert "holds a list, not a state dict" in message
    assert "torch.save(model.state_dict(), path)" in message


def test_dict_without_tensors(tmp_path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "model": {"lr": 0.1}}, path)
    message = _load_error(create_model("resnet8"), path)
    assert "holds no state dict" in message
    assert "'epoch', 'model'" in message


def test_hash_ignores_the_container_but_not_the_dtype(source, tmp_path) -> None:
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": torch.nn.DataParallel(source).state_dict()}, path)
    target = create_model("resnet8", num_classes=10)
    load_checkpoint(target, path)
    assert weights_sha256(target) == weights_sha256(source)
    assert weights_sha256(target.to(torch.bfloat16)) != weights_sha256(source)


def test_errors_raised_inside_load_state_dict_become_checkpoint_errors(source, tmp_path) -> None:
    # With current module versions recorded, BatchNorm no longer fills num_batches_tracked.
    path = tmp_path / "t.pt"
    state = source.state_dict()
    del state["bn1.num_batches_tracked"]
    torch.save(state, path)
    message = _load_error(create_model("resnet8", num_classes=10), path)
    assert "bn1.num_batches_tracked" in message
    assert "pass the model name the checkpoint was trained with" in message
