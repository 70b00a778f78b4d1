"""MNIST, Fashion-MNIST, CIFAR-100 and SVHN, each read from small files written here in the
real format (IDX, gzipped or not; protocol-2 pickles; MATLAB v5), and the message a malformed
or missing file gets. No test downloads anything."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.io import savemat
from typer.testing import CliRunner

from _helpers import without_whitespace
from llcv import LLCResult
from llcv.cli import app
from llcv.data import dataset_targets, load_dataset
from llcv.errors import DataError

NUM_TRAIN, NUM_VAL = 30, 12
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEANS_AND_STDS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def _pattern(channels: int, size: int) -> np.ndarray:
    """A ``channels x size x size`` uint8 image whose value says where it is: 8 * row + column
    in channel 0, 8 * column in channel 1, 200 in channel 2; asymmetric, so a flip shows."""
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    planes = [8 * rows + columns, 8 * columns, np.full((size, size), 200)][:channels]
    return np.stack(planes).astype(np.uint8)


def _normalised(image: np.ndarray, name: str) -> torch.Tensor:
    mean, std = (torch.tensor(values).view(-1, 1, 1) for values in MEANS_AND_STDS[name])
    return (torch.from_numpy(image).float() / 255.0 - mean) / std


def _random_images(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)


# MNIST and Fashion-MNIST: IDX files


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding: 0, 0, type code, number of dimensions, big-endian sizes, the values."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_file(path: Path, content: bytes, gzipped: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def _write_idx(folder: Path, gzipped: bool = False) -> Path:
    """The four files of a tiny MNIST; the first validation image is the known pattern, label 0."""
    splits = {"train": NUM_TRAIN, "t10k": NUM_VAL}
    for split, count in splits.items():
        images = _random_images(count, (28, 28), seed=count)
        labels = (np.arange(count) % 10).astype(np.uint8)
        if split == "t10k":
            images[0] = _pattern(1, 28)[0]
        _write_file(folder / f"{split}-images-idx3-ubyte", _idx_bytes(images), gzipped)
        _write_file(folder / f"{split}-labels-idx1-ubyte", _idx_bytes(labels), gzipped)
    return folder


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize(("name", "subfolder"), [("mnist", ""), ("mnist", "MNIST/raw"), ("fashionmnist", "FashionMNIST/raw")])
def test_idx_datasets_read_the_official_files(tmp_path, name, subfolder, gzipped):
    folder = _write_idx(tmp_path / subfolder, gzipped)
    train, val, info = load_dataset(name, data_dir=tmp_path)
    assert (info.name, info.num_classes, info.in_channels, info.image_size) == (name, 10, 1, 28)
    assert (info.num_train, info.num_val) == (NUM_TRAIN, NUM_VAL) and Path(info.data_dir) == folder
    assert info.class_names == (FASHION_NAMES if name == "fashionmnist" else [str(digit) for digit in range(10)])
    assert train.images.shape == (NUM_TRAIN, 1, 28, 28) and train.images.dtype == torch.uint8
    assert dataset_targets(val).tolist() == [index % 10 for index in range(NUM_VAL)]
    image, label = val[0]
    assert image.dtype == torch.float32 and label == 0
    assert torch.allclose(image, _normalised(_pattern(1, 28), name))


def test_idx_reads_the_plain_file_where_both_are_there(tmp_path):
    _write_idx(tmp_path, gzipped=True)
    _write_idx(tmp_path, gzipped=False)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"broken")  # never opened
    assert load_dataset("mnist", data_dir=tmp_path)[2].num_train == NUM_TRAIN


def _images(count: int, size: int = 28) -> np.ndarray:
    return np.zeros((count, size, size), np.uint8)


def _labels(values) -> np.ndarray:
    return np.asarray(values, np.uint8)


IDX_MALFORMED = {
    # file to replace, its content, what the message says
    "labels-magic-for-images": ("train-images-idx3-ubyte", _idx_bytes(_labels([0] * NUM_TRAIN)), "0x00000803"),
    "not-idx": ("t10k-labels-idx1-ubyte", b"<html>Not Found</html>", "magic number"),
    "empty": ("t10k-labels-idx1-ubyte", b"", "only 0 bytes"),
    "header-cut": ("train-images-idx3-ubyte", bytes([0, 0, 8, 3, 0, 0]), "header ends"),
    "truncated": ("train-images-idx3-ubyte", _idx_bytes(_images(NUM_TRAIN))[:-100], "truncated"),
    "trailing-bytes": ("train-labels-idx1-ubyte", _idx_bytes(_labels([0] * NUM_TRAIN)) + b"\0", "bytes after"),
    "float-type": ("train-labels-idx1-ubyte", _idx_bytes(np.zeros(NUM_TRAIN, np.float32), 0x0D), "0x00000d01"),
    "wrong-size": ("t10k-images-idx3-ubyte", _idx_bytes(_images(NUM_VAL, 27)), "27x27"),
    "count-mismatch": ("t10k-labels-idx1-ubyte", _idx_bytes(_labels([0] * (NUM_VAL - 1))), "11 labels"),
    "label-range": ("t10k-labels-idx1-ubyte", _idx_bytes(_labels([10] * NUM_VAL)), "label 10"),
}


@pytest.mark.parametrize("case", IDX_MALFORMED.values(), ids=IDX_MALFORMED.keys())
def test_idx_malformed_file_is_named(tmp_path, case):
    file, content, says = case
    _write_idx(tmp_path)
    (tmp_path / file).write_bytes(content)
    with pytest.raises(DataError, match=file) as raised:
        load_dataset("mnist", data_dir=tmp_path)
    assert says in str(raised.value)


def test_idx_broken_gzip_is_named(tmp_path):
    _write_idx(tmp_path, gzipped=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])  # a gzip stream cut short
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz is not a readable file"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_header_claiming_a_huge_file_costs_only_what_is_there(tmp_path):
    _write_idx(tmp_path)
    huge = bytes([0, 0, 8, 3]) + b"".join(size.to_bytes(4, "big") for size in (2**31, 28, 28))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(huge + b"\0" * 10)
    with pytest.raises(DataError, match="only 10 bytes follow"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_missing_file_says_where_it_was_looked_for(tmp_path):
    _write_idx(tmp_path / "FashionMNIST" / "raw")
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as raised:
        load_dataset("fashionmnist", data_dir=tmp_path)
    message = str(raised.value)
    assert "missing t10k-labels-idx1-ubyte" in message and str(tmp_path / "FashionMNIST" / "raw") in message
    assert "does not download" in message and "zalandoresearch" in message


def test_idx_default_folder_and_no_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"MNIST is not found.*data/mnist.*yann\.lecun\.com"):
        load_dataset("mnist")
    _write_idx(tmp_path / "data" / "mnist")
    assert load_dataset("mnist")[2].data_dir == "data/mnist"
    with pytest.raises(DataError, match="download is available only for cifar10"):
        load_dataset("mnist", download=True)
    with pytest.raises(DataError, match="28x28"):
        load_dataset("mnist", image_size=32)


# CIFAR-100: the python version's pickles


def _cifar100_batch(count: int, seed: int) -> dict:
    """A file in the real format: bytes keys, N x 3072 uint8 rows of R, G, B planes, both label kinds."""
    return {
        b"filenames": [b"image.png"] * count,
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": [(7 * index + seed) % 100 for index in range(count)],
        b"coarse_labels": [index % 20 for index in range(count)],
        b"data": _random_images(count, (3072,), seed),
    }


def _write_cifar100(folder: Path) -> Path:
    """train, test (its first image the known pattern) and meta, pickled with protocol 2 as the originals."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train").write_bytes(pickle.dumps(_cifar100_batch(NUM_TRAIN, seed=1), protocol=2))
    test = _cifar100_batch(NUM_VAL, seed=0)
    test[b"data"][0] = _pattern(3, 32).reshape(-1)
    (folder / "test").write_bytes(pickle.dumps(test, protocol=2))
    meta = {
        b"fine_label_names": [f"fine_{index}".encode() for index in range(100)],
        b"coarse_label_names": [f"coarse_{index}".encode() for index in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


@pytest.mark.parametrize("subfolder", ["", "cifar-100-python"])
def test_cifar100_reads_the_fine_labels(tmp_path, subfolder):
    folder = _write_cifar100(tmp_path / subfolder)
    train, val, info = load_dataset("cifar100", data_dir=tmp_path)
    assert (info.num_classes, info.in_channels, info.image_size) == (100, 3, 32)
    assert (info.num_train, info.num_val) == (NUM_TRAIN, NUM_VAL) and Path(info.data_dir) == folder
    assert info.class_names == [f"fine_{index}" for index in range(100)]
    assert train.images.shape == (NUM_TRAIN, 3, 32, 32) and train.images.dtype == torch.uint8
    assert dataset_targets(train).tolist() == [(7 * index + 1) % 100 for index in range(NUM_TRAIN)]
    image, label = val[0]
    assert label == 0 and torch.allclose(image, _normalised(_pattern(3, 32), "cifar100"))


def test_cifar100_refuses_a_pickle_that_would_run_code(tmp_path):
    class WritesMarker:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'marker')!r}, 'w').write('ran')",))

    _write_cifar100(tmp_path)
    (tmp_path / "meta").write_bytes(pickle.dumps({b"fine_label_names": WritesMarker()}, protocol=2))
    with pytest.raises(DataError, match=r"meta is not a CIFAR-100 file: it asks to load \w+\.exec"):
        load_dataset("cifar100", data_dir=tmp_path)
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize(
    ("file", "content", "says"),
    [
        ("train", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, "b'fine_labels'"),  # a CIFAR-10 batch
        ("test", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, "outside 0..99"),
        ("test", {b"data": np.zeros((2, 1024), np.uint8), b"fine_labels": [0, 1]}, "shape (2, 1024)"),
        ("meta", {b"label_names": [b"airplane"] * 10}, "b'fine_label_names', a list of 100 names"),
    ],
    ids=["cifar10-batch", "label-range", "wrong-shape", "cifar10-meta"],
)
def test_cifar100_malformed_file_is_named(tmp_path, file, content, says):
    _write_cifar100(tmp_path)
    (tmp_path / file).write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(DataError, match=f"{file} is not") as raised:
        load_dataset("cifar100", data_dir=tmp_path)
    assert says in str(raised.value)


def test_cifar100_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    _write_cifar100(tmp_path)
    (tmp_path / "meta").unlink()
    with pytest.raises(DataError) as raised:
        load_dataset("cifar100", data_dir=tmp_path)
    message = str(raised.value)
    assert "missing meta" in message and "cifar-100-python" in message
    assert "CIFAR-100 python version" in message and "does not download" in message
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="CIFAR-100 is not found.*data/cifar100-python"):
        load_dataset("cifar100")
    with pytest.raises(DataError, match="download is available only for cifar10"):
        load_dataset("cifar100", data_dir=tmp_path, download=True)


# SVHN: MATLAB files


def _write_svhn(folder: Path) -> Path:
    """train_32x32.mat and test_32x32.mat as scipy writes MATLAB v5 files: X is 32 x 32 x 3 x N,
    y is N x 1 with labels 1..10 (10 for the digit 0); the first test image is the known pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for file, count in (("train_32x32.mat", NUM_TRAIN), ("test_32x32.mat", NUM_VAL)):
        images = _random_images(count, (3, 32, 32), seed=count)
        images[0] = _pattern(3, 32)
        labels = (np.arange(count) % 10 + 1).astype(np.uint8).reshape(-1, 1)
        labels[0] = 10
        savemat(folder / file, {"X": images.transpose(2, 3, 1, 0), "y": labels})
    return folder


def test_svhn_reads_the_mat_files_and_maps_10_to_0(tmp_path):
    _write_svhn(tmp_path)
    train, val, info = load_dataset("svhn", data_dir=tmp_path)
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 32)
    assert (info.num_train, info.num_val) == (NUM_TRAIN, NUM_VAL) and info.class_names == [str(d) for d in range(10)]
    assert train.images.shape == (NUM_TRAIN, 3, 32, 32) and train.images.dtype == torch.uint8
    assert dataset_targets(train).tolist() == [0] + [(index % 10 + 1) % 10 for index in range(1, NUM_TRAIN)]
    image, label = val[0]
    assert label == 0 and torch.allclose(image, _normalised(_pattern(3, 32), "svhn"))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "not a readable SVHN file"),
        ({"X": np.zeros((32, 32, 3, NUM_TRAIN), np.uint8)}, "has no y"),
        ({"X": np.zeros((28, 28, 3, NUM_TRAIN), np.uint8), "y": np.ones((NUM_TRAIN, 1))}, "shape (28, 28, 3, 30)"),
        ({"X": np.zeros((32, 32, 3, NUM_TRAIN)), "y": np.ones((NUM_TRAIN, 1))}, "X is a float64 array"),
        ({"X": np.zeros((32, 32, 3, NUM_TRAIN), np.uint8), "y": np.ones((5, 1))}, "30 images and y"),
        ({"X": np.zeros((32, 32, 3, NUM_TRAIN), np.uint8), "y": np.zeros((NUM_TRAIN, 1))}, "y holds other values"),
    ],
    ids=["not-a-mat-file", "no-y", "wrong-size", "float-images", "label-count", "label-0"],
)
def test_svhn_malformed_file_is_named(tmp_path, content, says):
    _write_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    if content is None:
        path.write_bytes(b"\x89HDF\r\n" + b"\0" * 200)
    else:
        savemat(path, content)
    with pytest.raises(DataError, match="train_32x32.mat") as raised:
        load_dataset("svhn", data_dir=tmp_path)
    assert says in str(raised.value)


def test_svhn_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    _write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match=r"missing test_32x32\.mat.*does not download.*ufldl\.stanford\.edu"):
        load_dataset("svhn", data_dir=tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="SVHN is not found.*data/svhn"):
        load_dataset("svhn")


# Augmentation: the standard one for training, none for estimation


def _crops(image: torch.Tensor, padding: int, fill: torch.Tensor) -> list[torch.Tensor]:
    """Every crop RandomCrop(size, padding) can give, padding with the value a black pixel becomes."""
    size = image.shape[-1]
    padded = F.pad(image - fill, (padding,) * 4) + fill
    return [padded[:, top : top + size, left : left + size] for top in range(2 * padding + 1) for left in range(2 * padding + 1)]


@pytest.mark.parametrize(
    ("name", "write", "padding", "flips"),
    [("mnist", _write_idx, 2, False), ("fashionmnist", _write_idx, 2, True), ("svhn", _write_svhn, 4, False),
     ("cifar100", _write_cifar100, 4, True)],
)  # fmt: skip
def test_training_augments_as_is_standard_and_estimation_never(tmp_path, name, write, padding, flips):
    write(tmp_path)
    plain, val, _ = load_dataset(name, data_dir=tmp_path)
    augmented, _, _ = load_dataset(name, data_dir=tmp_path, augment=True)
    original = plain[0][0]
    assert torch.equal(original, plain[0][0]) and torch.equal(val[0][0], val[0][0])  # no randomness without augment
    black = _normalised(np.zeros((original.shape[0], 1, 1), np.uint8), name)
    crops = _crops(original, padding, black)
    flipped = [crop.flip(-1) for crop in crops]
    torch.manual_seed(0)
    views = [augmented[0][0] for _ in range(40)]
    is_crop = [any(torch.allclose(view, crop, atol=1e-6) for crop in crops) for view in views]
    is_flip = [any(torch.allclose(view, crop, atol=1e-6) for crop in flipped) for view in views]
    assert all(crop or flip for crop, flip in zip(is_crop, is_flip))
    assert any(not torch.equal(view, original) for view in views)
    assert any(is_flip) and not all(is_flip) if flips else not any(is_flip)


# End to end: train on generated files, then estimate a checkpoint of that run


def test_train_and_estimate_on_gzipped_mnist(tmp_path, isolated_cli):
    data_dir = _write_idx(tmp_path / "mnist" / "MNIST" / "raw", gzipped=True).parents[1]
    out = tmp_path / "checkpoints"
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["--quiet", "train", "--dataset", "mnist", "--data-dir", str(data_dir), "--model", "smallcnn", "--epochs", "1",
         "--batch-size", "15", "--log-checkpoints", "2", "--num-workers", "0", "--device", "cpu",
         "--checkpoints-dir", str(out)],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    final = sorted(out.glob("step_*.pt"))[-1]
    estimated = runner.invoke(
        app,
        ["estimate", "--checkpoint", str(final), "--num-chains", "1", "--num-draws", "4", "--num-burnin-steps", "2",
         "--num-samples", "30", "--batch-size", "15", "--device", "cpu", "--json"],
    )  # fmt: skip
    assert estimated.exit_code == 0, estimated.output
    result = LLCResult.from_dict(json.loads(estimated.stdout))
    assert len(result.llc_trace) == 1 and len(result.llc_trace[0]) == 4


def test_a_malformed_file_exits_2_with_its_message(tmp_path, isolated_cli):
    _write_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"garbage!")
    result = CliRunner().invoke(app, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    shown = without_whitespace(result.output)
    assert "train-labels-idx1-ubyteisnotanIDXfileofMNISTlabels" in shown and "Traceback" not in shown
