"""The dataset registry: shipped digits, synthetic images, image folders, CIFAR's errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import write_png

from logitcache.datasets import list_datasets, open_dataset
from logitcache.errors import BadInput, DataError, UnknownName


def test_registry_lists_every_kind():
    assert set(list_datasets()) == {"cifar10", "cifar100", "digits", "synthetic", "imagefolder"}


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownName, match="did you mean digits") as err:
        open_dataset("digitz")
    assert "\n" not in str(err.value)


def test_unknown_split():
    with pytest.raises(BadInput, match="unknown split 'val'"):
        open_dataset("digits", "val")


def test_digits():
    train, test = open_dataset("digits"), open_dataset("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.num_classes == 10 and train.in_memory and train.image_shape == (3, 8, 8)
    images = train.images(np.arange(len(train)))
    assert images.dtype == torch.uint8 and images.shape == (1438, 3, 8, 8)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])  # grey
    assert set(np.unique(train.labels)) == set(range(10))
    assert train.labels.dtype == np.int64
    assert torch.equal(train.load(5), images[5])
    assert train.image_size(5) == (8, 8)
    # The augmentation keeps digits readable: a one-pixel shift, never a mirror.
    assert train.train_view.kind == "crop" and train.train_view.padding == 1 and not train.train_view.flip
    with pytest.raises(BadInput, match="no argument"):
        open_dataset("digits:x")


def test_fingerprints_identify_content():
    a, b = open_dataset("digits"), open_dataset("digits")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert a.fingerprint != open_dataset("digits", "test").fingerprint
    d = a.describe()
    assert d == {"name": "digits", "split": "train", "num_samples": 1438, "num_classes": 10, "fingerprint": a.fingerprint}
    # One changed pixel or one changed label changes the fingerprint.
    c = open_dataset("digits")
    c.data = c.data.clone()
    c.data[0, 0, 0, 0] ^= 1
    assert c.fingerprint != a.fingerprint
    d2 = open_dataset("digits")
    d2.labels = d2.labels.copy()
    d2.labels[0] = (d2.labels[0] + 1) % 10
    assert d2.fingerprint != a.fingerprint


def test_synthetic_options_and_determinism():
    ds = open_dataset("synthetic:n=64,size=8,classes=5,seed=3")
    assert len(ds) == 64 and ds.num_classes == 5 and ds.image_shape == (3, 8, 8)
    assert ds.labels.min() >= 0 and ds.labels.max() < 5
    again = open_dataset("synthetic:n=64,size=8,classes=5,seed=3")
    assert torch.equal(ds.data, again.data) and ds.fingerprint == again.fingerprint
    assert open_dataset("synthetic:n=64,size=8,classes=5,seed=4").fingerprint != ds.fingerprint
    assert open_dataset("synthetic:n=64,size=8,classes=5,seed=3", "test").fingerprint != ds.fingerprint
    default = open_dataset("synthetic")
    assert len(default) == 512 and default.image_shape == (3, 32, 32)


@pytest.mark.parametrize("arg", ["n=ten", "colour=3", "n", "n=0", "classes=1"])
def test_synthetic_bad_options(arg):
    with pytest.raises(BadInput, match="synthetic"):
        open_dataset(f"synthetic:{arg}")


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_without_data_root(kind, tmp_path):
    folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    with pytest.raises(DataError, match=f"{kind} needs --data-root.*{folder}"):
        open_dataset(kind)
    with pytest.raises(DataError, match=f"{kind} not found.*does not exist.*--download"):
        open_dataset(kind, data_root=tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()  # nothing created, nothing downloaded
    with pytest.raises(BadInput, match="--data-root"):
        open_dataset(f"{kind}:/data")


def _png(path: Path, h: int, w: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.full((3, h, w), value, dtype=torch.uint8), str(path))


def test_imagefolder(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "train" / "cat" / "a.png", 10, 12, 10)
    _png(root / "train" / "cat" / "sub" / "b.png", 20, 8, 20)
    _png(root / "train" / "ant" / "c.png", 6, 6, 30)
    (root / "train" / "ant" / ".hidden").write_text("ignored")
    _png(root / "val" / "ant" / "d.png", 9, 9, 40)
    _png(root / "val" / "cat" / "e.png", 9, 9, 50)
    ds = open_dataset(f"imagefolder:{root}")
    assert ds.classes == ["ant", "cat"] and not ds.in_memory
    assert ds.files == ["ant/c.png", "cat/a.png", "cat/sub/b.png"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.load(2).shape == (3, 20, 8) and int(ds.load(2)[0, 0, 0]) == 20
    assert ds.image_size(1) == (10, 12)
    assert ds.train_view.kind == "resized_crop"
    val = open_dataset(f"imagefolder:{root}", "test")
    assert len(val) == 2 and val.labels.tolist() == [0, 1]
    fp = ds.fingerprint
    noise = torch.randint(0, 256, (3, 10, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    write_png(noise, str(root / "train" / "cat" / "a.png"))  # new content, another size on disk
    assert open_dataset(f"imagefolder:{root}").fingerprint != fp


def test_imagefolder_errors(tmp_path):
    with pytest.raises(BadInput, match="needs a path"):
        open_dataset("imagefolder")
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(f"imagefolder:{tmp_path / 'empty'}")
    bare = tmp_path / "bare"
    _png(bare / "cls" / "a.png", 4, 4, 1)
    assert len(open_dataset(f"imagefolder:{bare}")) == 1  # a bare class folder is the train split
    with pytest.raises(DataError, match="no val/ or test/"):
        open_dataset(f"imagefolder:{bare}", "test")
    (bare / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not an image"):
        open_dataset(f"imagefolder:{bare}")
    (bare / "cls" / "notes.txt").unlink()
    (bare / "cls" / "broken.png").write_bytes(b"not a png")
    ds = open_dataset(f"imagefolder:{bare}")
    with pytest.raises(DataError, match="cannot decode"):
        ds.load(ds.files.index("cls/broken.png"))
    (tmp_path / "nothing" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        open_dataset(f"imagefolder:{tmp_path / 'nothing'}")


def _cifar_folder(root: Path, kind: str, per_file: int = 2) -> Path:
    """A tiny CIFAR-format folder (torchvision's file names and pickle layout, a few images per
    file): what a subset or a re-packed copy looks like, failing torchvision's MD5 check."""
    import pickle

    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    for name, _ in cls.train_list + cls.test_list:
        entry = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), label_key: [0, 1][:per_file]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: ["cat", "dog"]}))
    return folder


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_failing_the_checksum_says_so_and_nocheck_loads_it(kind, tmp_path):
    folder = _cifar_folder(tmp_path, kind)
    with pytest.raises(DataError, match=f"fails torchvision's MD5 checksum.*--dataset {kind}:nocheck"):
        open_dataset(kind, data_root=tmp_path)
    train = open_dataset(f"{kind}:nocheck", data_root=tmp_path)
    files = 5 if kind == "cifar10" else 1
    assert (len(train), train.num_classes) == (2 * files, 2)
    assert train.images(np.arange(len(train))).shape == (2 * files, 3, 32, 32)
    assert train.describe()["name"] == f"{kind}:nocheck"
    test = open_dataset(f"{kind}:nocheck", "test", data_root=tmp_path)
    assert len(test) == 2 and test.fingerprint != train.fingerprint
    (folder / "batches.meta" if kind == "cifar10" else folder / "meta").unlink()
    with pytest.raises(DataError, match="is incomplete"):
        open_dataset(kind, data_root=tmp_path)


def test_cifar_nocheck_never_runs_a_pickled_payload(tmp_path):
    import pickle

    folder = _cifar_folder(tmp_path, "cifar100")
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "train").write_bytes(pickle.dumps({"data": Payload(), "fine_labels": [0]}))
    with pytest.raises(DataError, match="not a readable CIFAR batch file.*refusing to load"):
        open_dataset("cifar100:nocheck", data_root=tmp_path)
    assert not marker.exists()
    (folder / "train").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 7]}))
    with pytest.raises(DataError, match="do not fit together"):
        open_dataset("cifar100:nocheck", data_root=tmp_path)
