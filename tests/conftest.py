"""Shared fixtures: tiny training settings, one trained run on `synthetic`, small CIFAR-10 files.

Everything here runs on a CPU, offline, in well under a second per use: the `synthetic`
dataset (512 images of 3x16x16, 4 classes) and `smallcnn` train 16 steps in about 0.1 s.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from llcv.settings import SettingsBundle, load_settings

# The tests' tensors are tiny, so a second intra-op thread buys nothing, and on a shared
# two-core machine its spin-waiting makes every test several times slower.
torch.set_num_threads(1)

TRAIN_SECTIONS = ("data", "model", "train")
CIFAR_IMAGES_PER_BATCH = 8
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The shared run: 512 images / batch 64 = 8 steps per epoch, 2 epochs = 16 steps.
# round(geomspace(1, 16, 8)) = 1, 1, 2, 3, 5, 7, 11, 16: steps 3, 5 and 11 fall mid-epoch.
SHARED_RUN = dict(epochs=2, batch_size=64, log_checkpoints=8, checkpoint_every_epochs=1)
SHARED_RUN_STEPS = [0, 1, 2, 3, 5, 7, 8, 11, 16]


@pytest.fixture(autouse=True)
def fresh_execution_plans():
    """Each test decides how its chains run (batched, precision) anew, as a new process would:
    the per-process cache of those decisions would otherwise carry one test's into the next."""
    from llcv.sampling import execution

    execution._PLANS.clear()
    yield
    execution._PLANS.clear()


def make_train_settings(
    checkpoints_dir: Path, *, dataset: str = "synthetic", data: dict | None = None, model: dict | None = None, **train: Any
) -> SettingsBundle:
    """`data`/`model`/`train` settings for a tiny CPU run; keyword arguments are `[train]` fields."""
    return load_settings(
        TRAIN_SECTIONS,
        overrides={
            "data": {"dataset": dataset, **(data or {})},
            "model": {"name": "smallcnn", **(model or {})},
            "train": {"device": "cpu", "checkpoints_dir": checkpoints_dir, **train},
        },
    )


@pytest.fixture
def train_settings(tmp_path) -> Callable[..., SettingsBundle]:
    """`train_settings(name="run", **train_fields)`: settings writing to ``tmp_path / name``."""

    def build(name: str = "run", **kwargs: Any) -> SettingsBundle:
        return make_train_settings(tmp_path / name, **kwargs)

    return build


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One finished `smallcnn` run on `synthetic` (SHARED_RUN); tests must not modify its files."""
    from llcv.training import train

    directory = tmp_path_factory.mktemp("shared-run") / "checkpoints"
    settings = make_train_settings(directory, **SHARED_RUN)
    result = train(settings)
    return settings, result


# CIFAR-10 in the real "python version" format, small enough to train on in milliseconds.


def _cifar_batch(labels: list[int], seed: int) -> dict:
    """A batch as the official files hold it: bytes keys, N x 3072 uint8 rows of R, G, B planes."""
    data = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    return {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}


def write_cifar10(folder: Path, images_per_batch: int = CIFAR_IMAGES_PER_BATCH) -> Path:
    """data_batch_1..5, test_batch and batches.meta, pickled with protocol 2 like the originals."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"data_batch_{index}": index for index in range(1, 6)}
    files["test_batch"] = 0
    for name, index in files.items():
        labels = [(index + position) % 10 for position in range(images_per_batch)]
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(labels, seed=index), protocol=2))
    meta = {b"label_names": [name.encode() for name in CIFAR_LABEL_NAMES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


@pytest.fixture
def cifar10_dir(tmp_path) -> Path:
    """A CIFAR-10 folder with 5 x 8 training and 8 validation images."""
    return write_cifar10(tmp_path / "cifar10")


@pytest.fixture
def isolated_cli(tmp_path, monkeypatch):
    """Run in an empty folder, and undo the global --quiet/--verbose choice a command makes."""
    from llcv import console

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(console.Verbosity, "level", console.Verbosity.level)
