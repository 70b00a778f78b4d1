"""The CIFAR-10 and CIFAR-100 "python version" files: the pickled batches, read by an
unpickler that refuses anything a real batch does not need, their label names, where they are,
CIFAR-10's download, and each one's normalisation and augmentation (``CifarFormat.pixels``).

Both archives hold the same kind of file (a dict of bytes keys holding an ``N x 3072`` uint8
array and a list of labels); they differ in file names, the labels' key and the meta file's, so
one ``CifarFormat`` per archive says which.

Separate from ``llcv.data`` because reading these files safely is a file format of its own;
``llcv.data`` turns what it reads into datasets.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llcv.errors import DataError
from llcv.image_transforms import PixelRecipe

logger = logging.getLogger(__name__)

_Split = tuple[torch.Tensor, torch.Tensor]  # uint8 N x C x H x W images, N long labels

CIFAR_IMAGE_SIZE = 32
CIFAR_CROP_PADDING = 4
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

CIFAR10_DEFAULT_DIR = Path("data/cifar10-python")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Per-channel statistics of the 50,000 training images, as CIFAR-10's above.
CIFAR100_DEFAULT_DIR = Path("data/cifar100-python")
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class CifarFormat:
    """What tells one CIFAR archive from the other.

    Args:
        title: the dataset's name in messages ("CIFAR-10").
        default_dir: the folder read when the user names none.
        extracted_folder: the folder the official archive unpacks to.
        train_files: the training batches, read in this order.
        val_file: the test batch, used as the validation split.
        meta_file: the file holding the class names.
        labels_key: the batches' key for the labels the task uses.
        names_key: the meta file's key for those labels' names.
        num_classes: how many labels there are (0 .. num_classes - 1).
        pixels: the normalisation and the training augmentation.
    """

    title: str
    default_dir: Path
    extracted_folder: str
    train_files: tuple[str, ...]
    val_file: str
    meta_file: str
    labels_key: bytes
    names_key: bytes
    num_classes: int
    pixels: PixelRecipe

    @property
    def files(self) -> list[str]:
        return [*self.train_files, self.val_file, self.meta_file]


CIFAR10 = CifarFormat(
    title="CIFAR-10",
    default_dir=CIFAR10_DEFAULT_DIR,
    extracted_folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{index}" for index in range(1, 6)),
    val_file="test_batch",
    meta_file="batches.meta",
    labels_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    pixels=PixelRecipe(CIFAR10_MEAN, CIFAR10_STD, crop_padding=CIFAR_CROP_PADDING, flip=True),
)
# The task is the 100 fine labels; the 20 coarse superclasses (b"coarse_labels") are not read.
CIFAR100 = CifarFormat(
    title="CIFAR-100",
    default_dir=CIFAR100_DEFAULT_DIR,
    extracted_folder="cifar-100-python",
    train_files=("train",),
    val_file="test",
    meta_file="meta",
    labels_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    pixels=PixelRecipe(CIFAR100_MEAN, CIFAR100_STD, crop_padding=CIFAR_CROP_PADDING, flip=True),
)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches while refusing every global they do not need.

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

    def __init__(self, file: Any, path: Path, title: str) -> None:
        super().__init__(file, encoding="bytes")  # the files were written by Python 2
        self.path = path
        self.title = title

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED_GLOBALS:
            raise DataError(
                f"{self.path} is not a {self.title} file: it asks to load {module}.{name}, which a real "
                "one never does, so it was not opened. Replace it with the file from the official archive."
            )
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path, cifar: CifarFormat) -> Any:
    try:
        with path.open("rb") as handle:
            return _CifarUnpickler(handle, path, cifar.title).load()
    except DataError:
        raise
    except Exception as error:  # any failure to unpickle means the same thing to the user
        raise DataError(
            f"{path} is not a readable {cifar.title} file ({type(error).__name__}: {error}). "
            f"Replace it with the file from the '{cifar.title} python version' archive ({CIFAR_URL})."
        ) from error


def read_cifar_batch(path: Path, cifar: CifarFormat = CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> (uint8 ``N x 3 x 32 x 32`` images, ``N`` labels from ``cifar.labels_key``)."""
    batch = _read_cifar_pickle(path, cifar)
    key = cifar.labels_key
    last = cifar.num_classes - 1
    not_one = f"{path} is not a {cifar.title} batch"
    expected = f"a dict with b'data' (N x 3072 uint8 array) and {key!r} (N ints from 0 to {last})"
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{not_one}: expected {expected}, found {found}.")
    data, labels = batch[b"data"], batch[key]
    pixels_per_image = 3 * CIFAR_IMAGE_SIZE * CIFAR_IMAGE_SIZE
    if not isinstance(data, np.ndarray):
        raise DataError(f"{not_one}: expected {expected}, but b'data' is a {type(data).__name__}.")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels_per_image:
        raise DataError(f"{not_one}: expected {expected}, but b'data' is a {data.dtype} array of shape {data.shape}.")
    try:
        targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError) as error:
        raise DataError(f"{not_one}: expected {expected}, but {key!r} are not integers.") from error
    if targets.shape != (len(data),):
        raise DataError(
            f"{not_one}: expected {expected}, but it has {len(data)} images and labels of shape {tuple(targets.shape)}."
        )
    if len(targets) and (targets.min() < 0 or targets.max() > last):
        raise DataError(f"{not_one}: expected {expected}, but a label is outside 0..{last}.")
    # Each row holds the R, G and B planes in turn, each 32x32 in row-major order.
    images = torch.from_numpy(data.reshape(-1, 3, CIFAR_IMAGE_SIZE, CIFAR_IMAGE_SIZE).copy())
    return images, targets


def read_cifar_label_names(path: Path, cifar: CifarFormat = CIFAR10) -> list[str]:
    """The class names in ``cifar.meta_file``, in label order."""
    meta = _read_cifar_pickle(path, cifar)
    names = meta.get(cifar.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != cifar.num_classes:
        raise DataError(
            f"{path} is not {cifar.title}'s {cifar.meta_file}: expected a dict with {cifar.names_key!r}, "
            f"a list of {cifar.num_classes} names."
        )
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def locate_cifar(data_dir: Path | None, cifar: CifarFormat = CIFAR10, download: bool = False) -> Path:
    """The folder holding ``cifar``'s files: ``data_dir`` (None: ``cifar.default_dir``) or the
    archive's subfolder in it, downloading CIFAR-10 there first when ``download`` is set.

    Raises:
        DataError: a file is missing; the message names it, where it was looked for and where to
            get the archive. Only CIFAR-10 is ever downloaded.
    """
    data_dir = data_dir if data_dir is not None else cifar.default_dir
    folder, missing = _find_cifar_dir(data_dir, cifar)
    if missing and download and cifar is CIFAR10:
        _download_cifar10(data_dir)
        folder, missing = _find_cifar_dir(data_dir, cifar)
    if missing:
        problem = f"incomplete in {folder}: missing {', '.join(missing)}" if data_dir.is_dir() else "not found"
        train_files = cifar.train_files
        listed = f"{train_files[0]} to {train_files[-1]}" if len(train_files) > 1 else train_files[0]
        how = "or rerun with --download" if cifar is CIFAR10 else "(llcv does not download it)"
        raise DataError(
            f"{cifar.title} is {problem}. Expected {listed}, {cifar.val_file} and {cifar.meta_file} in "
            f"{data_dir} or {data_dir / cifar.extracted_folder}. Get the '{cifar.title} python version' "
            f"from {CIFAR_URL} and extract it there, {how}."
        )
    return folder


def read_cifar(folder: Path, cifar: CifarFormat = CIFAR10) -> tuple[_Split, _Split, list[str]]:
    """The files in ``folder`` -> (train images and labels, validation images and labels, class names)."""
    batches = [read_cifar_batch(folder / file, cifar) for file in cifar.train_files]
    train = (torch.cat([images for images, _ in batches]), torch.cat([targets for _, targets in batches]))
    return train, read_cifar_batch(folder / cifar.val_file, cifar), read_cifar_label_names(folder / cifar.meta_file, cifar)


def _find_cifar_dir(data_dir: Path, cifar: CifarFormat) -> tuple[Path, list[str]]:
    """The folder holding the batches (``data_dir`` or the archive's subfolder) and what it lacks."""
    candidates = []
    for folder in (data_dir, data_dir / cifar.extracted_folder):
        candidates.append((folder, [name for name in cifar.files if not (folder / name).is_file()]))
    # Report against whichever folder is closer to complete; on a tie, data_dir itself.
    return min(candidates, key=lambda candidate: len(candidate[1]))


def _download_cifar10(data_dir: Path) -> None:
    from torchvision import datasets

    logger.info("Downloading CIFAR-10 into %s", data_dir)
    try:
        datasets.CIFAR10(root=str(data_dir), train=True, download=True)
    except Exception as error:  # network, disk and checksum failures all leave the user with the same fix
        raise DataError(
            f"Downloading CIFAR-10 into {data_dir} failed ({type(error).__name__}: {error}). Download the "
            f"'CIFAR-10 python version' from {CIFAR_URL} yourself and extract it there."
        ) from error
