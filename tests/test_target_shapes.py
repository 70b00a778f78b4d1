"""Subsets and label reading for every kind of target: class labels, 1-D and 2-D regression targets.

A subset by count needs only the dataset's length; only ``classes=`` needs class labels, and
float targets are never cast to labels. The pinned indices below are what ``subset`` chose before
labels stopped being read for a subset by count, so seeded runs keep using the same samples.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from llcv.calibration import Budget, recommend_settings
from llcv.data import dataset_targets, subset
from llcv.errors import DataError, EstimationError
from llcv.sampling import SamplingData
from llcv.settings import SamplerSettings

SIZE = 5000  # above every 4096-sample cap in the sampler settings
NUM_CLASSES = 7

# subset(TensorDataset(..., arange(5000) % 7), num_samples=2048, seed=0), recorded before the fix.
PINNED_2048_FIRST_TEN = [0, 1, 2, 9, 11, 15, 25, 27, 29, 33]
PINNED_2048_SUM = 5152217
PINNED_6_OF_5000_SEED_3 = [1704, 1813, 3813, 3905, 3986, 4499]
PINNED_5_OF_20_SEED_1 = [2, 5, 11, 13, 19]
# subset(same dataset, classes=[2, 5], num_samples=8, seed=4): indices and their labels.
PINNED_CLASSES_INDICES = [89, 1083, 1846, 2217, 2389, 2669, 4030, 4328]
PINNED_CLASSES_LABELS = [5, 5, 5, 5, 2, 2, 5, 2]


def _inputs(size: int = SIZE) -> torch.Tensor:
    return torch.randn(size, 2, generator=torch.Generator().manual_seed(0))


def _targets(kind: str, size: int = SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if kind == "int":
        return torch.arange(size) % NUM_CLASSES
    if kind == "float_1d":
        return torch.randn(size, generator=generator)
    if kind == "float_2d":
        return torch.randn(size, 3, generator=generator)
    if kind == "int_2d":
        return torch.randint(NUM_CLASSES, (size, 3), generator=generator)
    raise ValueError(kind)


def _dataset(kind: str, size: int = SIZE) -> TensorDataset:
    return TensorDataset(_inputs(size), _targets(kind, size))


ALL_KINDS = ["int", "float_1d", "float_2d", "int_2d"]
NOT_LABELS = ["float_1d", "float_2d", "int_2d"]


# Seeded choice: unchanged for class labels, and the same for every kind of target.


def test_subset_by_count_of_integer_labels_picks_the_pinned_indices():
    dataset = _dataset("int")
    chosen = subset(dataset, num_samples=2048, seed=0)
    assert len(chosen) == 2048
    assert chosen.indices[:10] == PINNED_2048_FIRST_TEN and sum(chosen.indices) == PINNED_2048_SUM
    assert subset(dataset, num_samples=6, seed=3).indices == PINNED_6_OF_5000_SEED_3
    assert subset(_dataset("int", 20), num_samples=5, seed=1).indices == PINNED_5_OF_20_SEED_1


def test_subset_by_classes_and_count_of_integer_labels_picks_the_pinned_indices():
    chosen = subset(_dataset("int"), classes=[2, 5], num_samples=8, seed=4)
    assert chosen.indices == PINNED_CLASSES_INDICES
    assert chosen.targets.tolist() == PINNED_CLASSES_LABELS
    assert dataset_targets(chosen).tolist() == PINNED_CLASSES_LABELS


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_subset_by_count_works_for_every_target_kind(kind):
    dataset = _dataset(kind)
    chosen = subset(dataset, num_samples=2048, seed=0)
    # The choice depends on the length and seed alone, so every kind gets the pinned indices.
    assert len(chosen) == 2048
    assert chosen.indices[:10] == PINNED_2048_FIRST_TEN and sum(chosen.indices) == PINNED_2048_SUM
    inputs, target = chosen[3]
    index = chosen.indices[3]
    assert torch.equal(inputs, dataset.tensors[0][index])
    # Items keep their targets untouched: same dtype and shape, no cast to labels.
    assert torch.equal(target, dataset.tensors[1][index]) and target.dtype == dataset.tensors[1].dtype


@pytest.mark.parametrize("kind", ["float_1d", "float_2d"])
def test_float_targets_are_never_class_labels(kind):
    dataset = _dataset(kind)
    shape = str(tuple(dataset.tensors[1].shape))
    for wrapped in (dataset, Subset(dataset, [4, 1]), subset(dataset, num_samples=10)):
        with pytest.raises(DataError, match="regression targets are not class labels") as raised:
            dataset_targets(wrapped)
        assert "torch.float32" in str(raised.value)
    with pytest.raises(DataError, match=r"regression targets are not class labels.*" + shape.replace("(", r"\(").replace(")", r"\)")):
        dataset_targets(dataset)
    # A subset by count of regression data has no `.targets`, like the data it came from.
    assert not hasattr(subset(dataset, num_samples=10), "targets")


def test_float_targets_attribute_is_refused_too():
    class Regression(Dataset):
        targets = [0.5, 1.5, 2.5]

        def __len__(self) -> int:
            return 3

    with pytest.raises(DataError, match=r"regression targets are not class labels: found torch.float32"):
        dataset_targets(Regression())


@pytest.mark.parametrize("kind", NOT_LABELS)
def test_subset_by_classes_refuses_targets_that_are_not_labels(kind):
    dataset = _dataset(kind)
    with pytest.raises(DataError, match=r"classes=\[1\] needs integer class labels") as raised:
        subset(dataset, classes=[1], num_samples=10)
    message = str(raised.value)
    assert str(tuple(dataset.tensors[1].shape)) in message  # says what was found
    if kind.startswith("float"):
        assert "regression targets are not class labels" in message
    else:
        assert "one label per item" in message


def test_integer_labels_keep_working_in_every_wrapper():
    dataset = _dataset("int", 30)
    labels = (torch.arange(30) % NUM_CLASSES).tolist()
    assert dataset_targets(dataset).tolist() == labels
    assert dataset_targets(Subset(dataset, [8, 3])).tolist() == [labels[8], labels[3]]

    class WithTargets(Dataset):
        targets = [int(label) for label in labels]

        def __len__(self) -> int:
            return 30

    assert dataset_targets(WithTargets()).tolist() == labels
    assert dataset_targets(WithTargets()).dtype == torch.long


def test_subset_by_count_keeps_labels_for_a_later_class_subset():
    dataset = _dataset("int", 200)
    by_count = subset(dataset, num_samples=100, seed=2)
    expected = [index % NUM_CLASSES for index in by_count.indices]
    assert by_count.targets.tolist() == expected and by_count.targets.dtype == torch.long
    by_class = subset(by_count, classes=[3])
    assert dataset_targets(by_class).tolist() == [3] * expected.count(3)
    assert all(by_count.indices[position] % NUM_CLASSES == 3 for position in by_class.indices)
    assert len(subset(by_class, num_samples=4, seed=0)) == 4


def test_subset_by_count_never_reads_labels():
    class Unreadable(Dataset):
        """Labels that raise on any read: a subset by count must not touch them."""

        def __len__(self) -> int:
            return 50

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.tensor(float(index))

        @property
        def targets(self) -> torch.Tensor:
            raise AssertionError("a subset by count read the labels")

    chosen = subset(Unreadable(), num_samples=5, seed=1)
    assert len(chosen) == 5 and [float(chosen[i]) for i in range(5)] == [float(i) for i in chosen.indices]


def test_subset_by_count_of_data_without_targets():
    only_inputs = TensorDataset(_inputs(40))
    chosen = subset(only_inputs, num_samples=5, seed=1)
    assert len(chosen) == 5 and sorted(chosen.indices) == chosen.indices
    assert not hasattr(chosen, "targets")
    with pytest.raises(DataError, match="Cannot find the labels"):
        subset(only_inputs, classes=[0])


def test_subset_of_data_without_length_is_a_data_error():
    class Endless(Dataset):
        def __getitem__(self, index: int) -> int:
            return index

    with pytest.raises(DataError, match="no length"):
        subset(Endless(), num_samples=3)


def test_subset_by_count_of_a_regression_subset_nests():
    first = subset(_dataset("float_2d"), num_samples=300, seed=0)
    second = subset(first, num_samples=20, seed=1)
    assert len(second) == 20
    assert second[0][1].shape == (3,)


# The callers from the issue: SamplingData and recommend_settings on regression data.


def test_sampling_data_takes_a_seeded_subset_of_2d_regression_data():
    dataset = _dataset("float_2d")
    settings = SamplerSettings(num_samples=2048, batch_size=256, seed=0)
    data = SamplingData(dataset, settings, torch.device("cpu"))
    assert data.num_samples == 2048 and data.batch_size == 256
    inputs, targets = data.tensors
    assert inputs.shape == (2048, 2) and targets.shape == (2048, 3) and targets.dtype == torch.float32
    expected = dataset.tensors[1][torch.tensor(subset(dataset, num_samples=2048, seed=0).indices)]
    assert torch.equal(targets, expected)


def test_sampling_data_with_classes_on_regression_data_is_a_data_error():
    settings = SamplerSettings(num_samples=100, batch_size=50, classes=[0])
    with pytest.raises(DataError, match="regression targets are not class labels"):
        SamplingData(_dataset("float_2d"), settings, torch.device("cpu"))


def test_recommend_settings_on_2d_regression_data_does_not_fail_on_labels(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SIZE, 4, generator=generator)
    targets = inputs @ torch.randn(4, 3, generator=generator) + 0.1 * torch.randn(SIZE, 3, generator=generator)
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets).solution.T)
    # A seeded subset of the 5000 samples (the path that once read the targets as labels), in
    # full batches, and a search of a few short trials.
    monkeypatch.setattr("llcv.calibration.auto.FIRST_TRIAL_STEPS", 40)
    base = SamplerSettings(num_samples=2048, batch_size=2048, nbeta=50.0, seed=0)
    try:
        settings = recommend_settings(model, TensorDataset(inputs, targets), loss="mse", device="cpu", base=base, budget=Budget(chain_steps=2000))
    except EstimationError:
        return  # whether a trial is healthy in so short a search is not what this test is about
    assert isinstance(settings, SamplerSettings)
    assert settings.num_samples == 2048 and settings.batch_size == 2048
