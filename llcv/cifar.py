"""The CIFAR-10 "python version" files: the pickled batches, read by an unpickler that refuses
anything a real batch does not need, their label names, where they are, the download, and the
images' transform (normalisation and the standard crop-and-flip augmentation).

Separate from ``llcv.data`` because reading these files safely is a file format of its own;
``llcv.data`` turns what it reads into datasets.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llcv.errors import DataError

logger = logging.getLogger(__name__)

CIFAR10_DEFAULT_DIR = Path("data/cifar10-python")
CIFAR10_EXTRACTED_FOLDER = "cifar-10-batches-py"  # what the official archive unpacks to
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{index}" for index in range(1, 6))
CIFAR10_VAL_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR10_IMAGE_SIZE = 32
CIFAR10_CROP_PADDING = 4
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class CifarTransform:
    """uint8 ``3 x 32 x 32`` -> normalised float, with optional random crop and flip.

    The randomness comes from torch's default CPU generator, as torchvision's transforms' does,
    so whoever seeds that generator fixes the augmentation: ``llcv.training`` seeds it per
    sample from (run seed, epoch, index), which makes resume exact with any number of
    DataLoader workers. (A class rather than a closure so that DataLoader workers can pickle it.)
    """

    def __init__(self, augment: bool) -> None:
        self.augment = augment
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float() / 255.0
        if self.augment:
            image = _random_crop_and_flip(image, CIFAR10_CROP_PADDING)
        return (image - self.mean) / self.std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(augment={self.augment})"


def _random_crop_and_flip(image: torch.Tensor, padding: int) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) with zero fill, then RandomHorizontalFlip."""
    height, width = image.shape[-2:]
    padded = F.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    image = padded[:, top : top + height, left : left + width]
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    return image


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches while refusing every global they do not need.

    A pickle can call any importable function while it loads, so a file posing as a CIFAR
    batch could run code. The real files need only numpy's array reconstruction; the
    ``_frombuffer`` and ``_codecs.encode`` entries cover batches re-saved from Python 3.
    """

    _ALLOWED_GLOBALS = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol 2 stores bytes written by Python 3
        }
    )

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the files were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED_GLOBALS:
            raise DataError(
                f"{self.path} is not a CIFAR-10 batch: it asks to load {module}.{name}, which a real "
                "batch never does, so it was not opened. Replace it with the file from the official archive."
            )
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            return _CifarUnpickler(handle, path).load()
    except DataError:
        raise
    except Exception as error:  # any failure to unpickle means the same thing to the user
        raise DataError(
            f"{path} is not a readable CIFAR-10 batch ({type(error).__name__}: {error}). "
            f"Replace it with the file from the 'CIFAR-10 python version' archive ({CIFAR10_URL})."
        ) from error


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> (uint8 ``N x 3 x 32 x 32`` images, ``N`` labels)."""
    batch = _read_cifar_pickle(path)
    expected = "a dict with b'data' (N x 3072 uint8 array) and b'labels' (N ints from 0 to 9)"
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path} is not a CIFAR-10 batch: expected {expected}, found {found}.")
    data, labels = batch[b"data"], batch[b"labels"]
    pixels_per_image = 3 * CIFAR10_IMAGE_SIZE * CIFAR10_IMAGE_SIZE
    if not isinstance(data, np.ndarray):
        raise DataError(
            f"{path} is not a CIFAR-10 batch: expected {expected}, but b'data' is a {type(data).__name__}."
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels_per_image:
        raise DataError(
            f"{path} is not a CIFAR-10 batch: expected {expected}, "
            f"but b'data' is a {data.dtype} array of shape {data.shape}."
        )
    try:
        targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError) as error:
        raise DataError(
            f"{path} is not a CIFAR-10 batch: expected {expected}, but b'labels' are not integers."
        ) from error
    if targets.shape != (len(data),):
        raise DataError(
            f"{path} is not a CIFAR-10 batch: expected {expected}, but it has {len(data)} images "
            f"and labels of shape {tuple(targets.shape)}."
        )
    if len(targets) and (targets.min() < 0 or targets.max() > 9):
        raise DataError(f"{path} is not a CIFAR-10 batch: expected {expected}, but a label is outside 0..9.")
    # Each row holds the R, G and B planes in turn, each 32x32 in row-major order.
    images = torch.from_numpy(data.reshape(-1, 3, CIFAR10_IMAGE_SIZE, CIFAR10_IMAGE_SIZE).copy())
    return images, targets


def read_cifar_label_names(path: Path) -> list[str]:
    meta = _read_cifar_pickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(
            f"{path} is not CIFAR-10's batches.meta: expected a dict with b'label_names', a list of 10 names."
        )
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def find_cifar_dir(data_dir: Path) -> tuple[Path, list[str]]:
    """The folder holding the batches (``data_dir`` or the archive's subfolder) and what it lacks."""
    needed = [*CIFAR10_TRAIN_FILES, CIFAR10_VAL_FILE, CIFAR10_META_FILE]
    candidates = []
    for folder in (data_dir, data_dir / CIFAR10_EXTRACTED_FOLDER):
        candidates.append((folder, [name for name in needed if not (folder / name).is_file()]))
    # Report against whichever folder is closer to complete; on a tie, data_dir itself.
    return min(candidates, key=lambda candidate: len(candidate[1]))


def download_cifar10(data_dir: Path) -> None:
    from torchvision import datasets

    logger.info("Downloading CIFAR-10 into %s", data_dir)
    try:
        datasets.CIFAR10(root=str(data_dir), train=True, download=True)
    except Exception as error:  # network, disk and checksum failures all leave the user with the same fix
        raise DataError(
            f"Downloading CIFAR-10 into {data_dir} failed ({type(error).__name__}: {error}). Download the "
            f"'CIFAR-10 python version' from {CIFAR10_URL} yourself and extract it there."
        ) from error
