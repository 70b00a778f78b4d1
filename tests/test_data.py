"""Tests for llcv.data: every dataset loads offline from bundled data or files built here."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset, TensorDataset

from llcv.cifar import CIFAR10_MEAN, CIFAR10_STD
from llcv.data import (
    DatasetInfo,
    dataset_targets,
    list_datasets,
    load_dataset,
    subset,
)
from llcv.errors import DataError

CIFAR_IMAGES_PER_BATCH = 20
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_list_datasets_is_sorted_and_complete():
    assert list_datasets() == [
        "cifar10", "cifar100", "digits", "fashionmnist", "folder", "imagenet1k", "mnist", "svhn", "synthetic"
    ]


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(DataError) as raised:
        load_dataset("imagenet21k")
    message = str(raised.value)
    assert "imagenet21k" in message
    assert all(name in message for name in list_datasets())


# digits


def test_digits_shapes_classes_and_normalisation():
    train, val, info = load_dataset("digits")
    assert isinstance(info, DatasetInfo)
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 32)
    assert info.num_train + info.num_val == 1797
    assert (len(train), len(val)) == (info.num_train, info.num_val)
    assert info.num_val == round(0.2 * 1797)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int)
    everything = torch.cat([train.images, val.images])
    assert torch.isfinite(everything).all()
    assert abs(everything.mean().item()) < 1e-4
    assert everything.std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(everything[:, 0], everything[:, 2])  # grey replicated to three channels
    assert set(dataset_targets(train).tolist()) == set(range(10))


def test_digits_split_follows_the_seed():
    train_a, val_a, _ = load_dataset("digits", seed=0)
    train_b, val_b, _ = load_dataset("digits", seed=0)
    train_c, _, _ = load_dataset("digits", seed=1)
    assert torch.equal(train_a.images, train_b.images) and torch.equal(val_a.targets, val_b.targets)
    assert not torch.equal(train_a.images, train_c.images)


def test_digits_batches_collate_to_long_labels():
    train, _, _ = load_dataset("digits")
    images, labels = next(iter(DataLoader(train, batch_size=8)))
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.long


def test_fixed_size_dataset_refuses_another_image_size():
    with pytest.raises(DataError, match="image_size"):
        load_dataset("synthetic", image_size=64)


def test_digits_come_at_their_own_8x8_pixels_or_upsampled():
    native, _, info = load_dataset("digits", image_size=8)
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images, dtype=torch.float32)
    assert native.images.shape[1:] == (3, 8, 8) and info.image_size == 8
    # the same 8x8 values, standardised, not resampled: each image correlates perfectly with its raw pixels
    image = native.images[0, 0].flatten()
    assert any(torch.corrcoef(torch.stack([image, candidate.flatten()]))[0, 1] > 0.9999 for candidate in raw)
    upsampled, _, info = load_dataset("digits", image_size=16)
    assert upsampled.images.shape[1:] == (3, 16, 16) and info.image_size == 16
    assert load_dataset("digits")[2].image_size == 32


def test_a_checkpoint_is_estimated_on_images_of_the_size_it_was_trained_on(tmp_path):
    from llcv.settings import load_settings
    from llcv.targets import Target
    from llcv.training import train

    settings = load_settings(
        ("data", "model", "train"),
        overrides={"data": {"image_size": 8}, "train": {"epochs": 1, "checkpoints_dir": tmp_path, "device": "cpu"}},
    )
    checkpoint = train(settings).checkpoints[-1]
    assert Target(checkpoint).load().dataset[0][0].shape == (3, 8, 8)


# synthetic


def test_synthetic_is_deterministic_per_seed():
    train_a, val_a, info = load_dataset("synthetic", seed=3)
    train_b, val_b, _ = load_dataset("synthetic", seed=3)
    train_c, _, _ = load_dataset("synthetic", seed=4)
    assert (info.num_train, info.num_val, info.num_classes, info.image_size) == (512, 128, 4, 16)
    assert train_a[0][0].shape == (3, 16, 16)
    assert torch.equal(train_a.images, train_b.images) and torch.equal(val_a.targets, val_b.targets)
    assert not torch.equal(train_a.images, train_c.images)


def test_synthetic_labels_are_learnable():
    train, val, info = load_dataset("synthetic")
    labels = range(info.num_classes)
    class_means = torch.stack([train.images[train.targets == label].mean(0) for label in labels])
    distances = torch.cdist(val.images.flatten(1), class_means.flatten(1))
    accuracy = (distances.argmin(1) == val.targets).float().mean().item()
    assert accuracy > 0.95


# cifar10


def _cifar_batch(labels: list[int]) -> dict:
    """A batch in the real format: bytes keys, N x 3072 uint8 rows of R, G, B planes."""
    rng = np.random.default_rng(len(labels) + sum(labels))
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    filenames = [b"image.png"] * len(labels)
    return {b"batch_label": b"test batch", b"labels": labels, b"data": data, b"filenames": filenames}


def _write_pickle(path: Path, content: object) -> None:
    # Protocol 2, as the official files (written by Python 2) use.
    path.write_bytes(pickle.dumps(content, protocol=2))


def _known_pattern() -> np.ndarray:
    """A 3 x 32 x 32 image whose value says where it is: R = 8 * row, G = 8 * column, B = 200."""
    rows, columns = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([8 * rows, 8 * columns, np.full((32, 32), 200)]).astype(np.uint8)


def _write_cifar(folder: Path) -> Path:
    """Five training batches, a test batch whose first image is the known pattern, and the meta file."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(1, 6):
        labels = [(index + position) % 10 for position in range(CIFAR_IMAGES_PER_BATCH)]
        _write_pickle(folder / f"data_batch_{index}", _cifar_batch(labels))
    test = _cifar_batch([position % 10 for position in range(CIFAR_IMAGES_PER_BATCH)])
    test[b"data"][0] = _known_pattern().reshape(-1)  # plane by plane, row-major, as documented
    _write_pickle(folder / "test_batch", test)
    _write_pickle(folder / "batches.meta", {b"label_names": [name.encode() for name in CIFAR_LABEL_NAMES]})
    return folder


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-py"])
def test_cifar10_reads_the_python_batches(tmp_path, subfolder):
    folder = _write_cifar(tmp_path / subfolder)
    train, val, info = load_dataset("cifar10", data_dir=tmp_path)
    assert info.num_train == 5 * CIFAR_IMAGES_PER_BATCH and info.num_val == CIFAR_IMAGES_PER_BATCH
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 3, 32)
    assert info.class_names == CIFAR_LABEL_NAMES
    assert Path(info.data_dir) == folder
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    positions = range(CIFAR_IMAGES_PER_BATCH)
    expected_train_labels = [(index + position) % 10 for index in range(1, 6) for position in positions]
    assert dataset_targets(train).tolist() == expected_train_labels
    # Validation is test_batch: its first image is the known pattern.
    assert torch.equal(val.images[0], torch.from_numpy(_known_pattern()))
    image, label = val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    pixel_row_5_column_7 = torch.tensor([40, 56, 200]) / 255.0
    assert torch.allclose(image[:, 5, 7], (pixel_row_5_column_7 - mean) / std)


def test_cifar10_reads_batches_pickled_by_numpy_1(tmp_path):
    # numpy 1 (which wrote the official files) names numpy.core where numpy 2 writes numpy._core.
    _write_cifar(tmp_path)
    batch = tmp_path / "test_batch"
    batch.write_bytes(batch.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    _, val, _ = load_dataset("cifar10", data_dir=tmp_path)
    assert torch.equal(val.images[0], torch.from_numpy(_known_pattern()))


def test_cifar10_augmentation_changes_train_images_only(tmp_path):
    _write_cifar(tmp_path)
    plain_train, _, _ = load_dataset("cifar10", data_dir=tmp_path)
    train, val, _ = load_dataset("cifar10", data_dir=tmp_path, augment=True)
    torch.manual_seed(0)
    views = [train[3][0] for _ in range(10)]
    assert all(view.shape == (3, 32, 32) for view in views)
    assert any(not torch.equal(view, plain_train[3][0]) for view in views)
    assert torch.equal(val[3][0], val[3][0])  # the validation split is never augmented
    # The global torch RNG drives the augmentation, so restoring it replays the same views.
    torch.manual_seed(0)
    assert all(torch.equal(view, train[3][0]) for view in views)


def test_cifar10_download_reads_what_torchvision_extracted(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_cifar10(root, train, download):
        calls.append((root, download))
        _write_cifar(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    _, _, info = load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert calls == [(str(tmp_path), True)]
    assert info.num_train == 5 * CIFAR_IMAGES_PER_BATCH


def test_cifar10_missing_file_is_named(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError) as raised:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(raised.value)
    assert "data_batch_3" in message and str(tmp_path) in message
    assert "cs.toronto.edu" in message and "--download" in message


def test_cifar10_missing_folder_explains_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data/cifar10-python.*CIFAR-10 python version"):
        load_dataset("cifar10")


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a pickle",
        pickle.dumps({b"labels": [0]}, protocol=2),
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
    ],
    ids=["not-a-pickle", "missing-data-key", "wrong-shape", "label-count"],
)
def test_cifar10_malformed_batch_is_named(tmp_path, content):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(content)
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", data_dir=tmp_path)


class _WritesMarker:
    """A pickle payload that, if unpickled by plain pickle.load, creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_cifar10_refuses_a_pickle_that_would_run_code(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "marker"
    payload = {b"data": _WritesMarker(marker), b"labels": [0]}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="data_batch_1.*exec"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


# imagenet1k and folder


def _write_image_folder(
    root: Path, classes=("ant", "bee", "cat"), images_per_class=2, splits=("train", "val")
) -> Path:
    for split in splits:
        for class_index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for image_index in range(images_per_class):
                colour = (40 * class_index, 10 * image_index, 100)
                # Grey (mode "L") and RGB files mixed: every one must come out with 3 channels.
                image = Image.new("RGB", (40, 30), colour)
                if image_index % 2:
                    image = image.convert("L")
                image.save(folder / f"{image_index}.png")
    return root


def test_folder_dataset_reads_an_image_folder_tree(tmp_path):
    _write_image_folder(tmp_path, images_per_class=3)
    train, val, info = load_dataset("folder", data_dir=tmp_path, image_size=32)
    assert (info.num_classes, info.in_channels, info.image_size) == (3, 3, 32)
    assert info.class_names == ["ant", "bee", "cat"]
    assert (info.num_train, info.num_val) == (9, 9)
    assert dataset_targets(train).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert isinstance(train.targets, torch.Tensor) and train.targets.dtype == torch.long
    images, labels = next(iter(DataLoader(val, batch_size=9)))
    assert images.shape == (9, 3, 32, 32) and labels.dtype == torch.long
    assert torch.isfinite(images).all()


def test_folder_augmentation_keeps_the_shape(tmp_path):
    _write_image_folder(tmp_path)
    train, _, _ = load_dataset("folder", data_dir=tmp_path, image_size=24, augment=True)
    assert train[0][0].shape == (3, 24, 24)


def test_folder_augmentation_is_fixed_by_seeding_torchs_default_generator(tmp_path):
    # Training makes each sample's augmentation exact by seeding this generator per sample, so
    # torchvision's random crop and flip must draw from it, as llcv's CIFAR transform does.
    _write_image_folder(tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "train" / "ant" / "0.png")  # a flat colour looks the same however cropped
    train, _, _ = load_dataset("folder", data_dir=tmp_path, image_size=24, augment=True)
    views = []
    for seed in (0, 1, 0):
        torch.default_generator.manual_seed(seed)
        views.append(train[0][0])
    assert torch.equal(views[0], views[2])
    assert not torch.equal(views[0], views[1])


def test_folder_needs_a_data_dir():
    with pytest.raises(DataError, match="data_dir"):
        load_dataset("folder")


def test_folder_missing_val_explains_the_layout(tmp_path):
    _write_image_folder(tmp_path, splits=("train",))
    with pytest.raises(DataError, match=r"val does not exist.*one folder per class"):
        load_dataset("folder", data_dir=tmp_path, image_size=32)


def test_folder_with_different_classes_in_train_and_val_is_refused(tmp_path):
    _write_image_folder(tmp_path, splits=("train",))
    _write_image_folder(tmp_path, classes=("ant", "bee"), splits=("val",))
    with pytest.raises(DataError, match=r"only in train: \['cat'\]"):
        load_dataset("folder", data_dir=tmp_path, image_size=32)


def test_folder_unreadable_image_is_named(tmp_path):
    _write_image_folder(tmp_path)
    broken = tmp_path / "val" / "bee" / "0.png"
    broken.write_bytes(b"not an image")
    _, val, _ = load_dataset("folder", data_dir=tmp_path, image_size=32)
    with pytest.raises(DataError, match="0.png"):
        val[2]


def test_imagenet1k_defaults_and_legacy_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_image_folder(tmp_path / "data" / "imagenet1k")
    train, _, info = load_dataset("imagenet1k", image_size=32)
    assert Path(info.data_dir) == Path("data/imagenet1k")
    assert info.num_classes == 3 and train[0][0].shape == (3, 32, 32)
    # Once data/imagenet exists, it wins over the older folder.
    _write_image_folder(tmp_path / "data" / "imagenet", classes=("a", "b"))
    _, _, info = load_dataset("imagenet1k", image_size=32)
    assert Path(info.data_dir) == Path("data/imagenet") and info.num_classes == 2


def test_imagenet1k_default_size_is_224(tmp_path):
    _write_image_folder(tmp_path, classes=("n01",), images_per_class=1)
    train, _, info = load_dataset("imagenet1k", data_dir=tmp_path)
    assert info.image_size == 224 and train[0][0].shape == (3, 224, 224)


def test_imagenet1k_missing_val_points_to_the_guide(tmp_path):
    _write_image_folder(tmp_path, splits=("train",))
    with pytest.raises(DataError, match=r"val does not exist.*docs/guide\.md"):
        load_dataset("imagenet1k", data_dir=tmp_path)


# subset and dataset_targets


def test_subset_by_classes_keeps_only_those_labels():
    train, _, _ = load_dataset("digits")
    chosen = subset(train, classes=[3, 7])
    targets = dataset_targets(chosen)
    assert set(targets.tolist()) == {3, 7}
    assert len(chosen) == int(((train.targets == 3) | (train.targets == 7)).sum())
    assert all(chosen[index][1] == targets[index] for index in range(0, len(chosen), 37))


def test_subset_by_num_samples_is_seeded():
    train, _, _ = load_dataset("digits")
    first = subset(train, num_samples=50, seed=1)
    again = subset(train, num_samples=50, seed=1)
    other = subset(train, num_samples=50, seed=2)
    assert len(first) == 50
    assert first.indices == again.indices and first.indices != other.indices
    assert first.indices == sorted(first.indices)


def test_subset_combines_classes_and_num_samples_and_nests():
    train, _, _ = load_dataset("synthetic")
    chosen = subset(train, classes=[1], num_samples=10)
    assert dataset_targets(chosen).tolist() == [1] * 10
    assert len(subset(chosen, num_samples=4)) == 4


def test_subset_errors_say_what_is_available():
    train, _, _ = load_dataset("synthetic")
    with pytest.raises(DataError, match=r"labels present are \[0, 1, 2, 3\]"):
        subset(train, classes=[9])
    available = int((train.targets == 0).sum())
    with pytest.raises(DataError, match=f"only {available}"):
        subset(train, classes=[0], num_samples=available + 1)
    with pytest.raises(DataError, match="positive"):
        subset(train, num_samples=0)


def test_dataset_targets_of_torch_wrappers():
    train, _, _ = load_dataset("synthetic")
    assert dataset_targets(Subset(train, [5, 2])).tolist() == [int(train.targets[5]), int(train.targets[2])]
    tensors = TensorDataset(torch.zeros(3, 1), torch.tensor([2, 0, 1]))
    assert dataset_targets(tensors).tolist() == [2, 0, 1]
    with pytest.raises(DataError, match="labels"):
        dataset_targets(TensorDataset(torch.zeros(3, 1)))
