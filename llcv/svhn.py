"""SVHN's cropped digits as their official MATLAB files (``train_32x32.mat``, ``test_32x32.mat``):
reading them, and their normalisation and augmentation.

The files are MATLAB v5 files holding ``X``, uint8 images of shape ``32 x 32 x 3 x N``, and
``y``, labels 1..10 of shape ``N x 1``, where 10 stands for the digit 0; labels come out as
0..9, 10 mapped to 0 as torchvision's ``SVHN`` does. ``scipy.io.loadmat`` reads them: it reads
data only (a MATLAB object or function handle in a file comes back as plain arrays, never
run), and it is asked for ``X`` and ``y`` alone.

Separate from ``llcv.data`` because reading these files safely is a file format of its own;
``llcv.data`` turns what it reads into datasets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llcv.errors import DataError
from llcv.image_transforms import PixelRecipe

SVHN_DEFAULT_DIR = Path("data/svhn")
SVHN_TRAIN_FILE = "train_32x32.mat"
SVHN_VAL_FILE = "test_32x32.mat"
SVHN_IMAGE_SIZE = 32
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_CLASS_NAMES = tuple(str(digit) for digit in range(10))
# Per-channel statistics of the 73,257 training images; a random crop, never a flip (digits).
SVHN_PIXELS = PixelRecipe((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), crop_padding=4, flip=False)
_ZERO_LABEL = 10  # SVHN's label for the digit 0


def locate_svhn(data_dir: Path | None) -> Path:
    """The folder holding both files: ``data_dir``, or ``SVHN_DEFAULT_DIR`` when None.

    Raises:
        DataError: a file is missing; the message names it, the folder and where to get it
            (llcv never downloads these).
    """
    folder = data_dir if data_dir is not None else SVHN_DEFAULT_DIR
    missing = [name for name in (SVHN_TRAIN_FILE, SVHN_VAL_FILE) if not (folder / name).is_file()]
    if missing:
        problem = f"incomplete in {folder}: missing {', '.join(missing)}" if folder.is_dir() else "not found"
        raise DataError(
            f"SVHN is {problem}. Expected {SVHN_TRAIN_FILE} and {SVHN_VAL_FILE} in {folder}. llcv does not "
            f"download them: get them (format 2, cropped digits) from {SVHN_URL} and put them there."
        )
    return folder


def read_svhn(folder: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Both files in ``folder`` -> (train images and labels, validation images and labels);
    ``extra_32x32.mat``, the 531,131 easier extra images, is not read."""
    return read_svhn_split(folder / SVHN_TRAIN_FILE), read_svhn_split(folder / SVHN_VAL_FILE)


def read_svhn_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``*_32x32.mat`` file -> (uint8 ``N x 3 x 32 x 32`` images, ``N`` labels 0..9).

    Raises:
        DataError: not a MATLAB file scipy reads (v7.3 files are HDF5: re-save them as v5, or use
            the official files, which are v5), no ``X`` or ``y``, or either of the wrong type or shape.
    """
    from scipy.io import loadmat

    size = SVHN_IMAGE_SIZE
    expected = f"X (uint8, {size} x {size} x 3 x N) and y (N labels from 1 to 10)"
    try:
        content = loadmat(str(path), appendmat=False, variable_names=["X", "y"])
    except Exception as error:  # scipy raises ValueError, MatReadError, TypeError, ... for a bad file
        raise DataError(
            f"{path} is not a readable SVHN file ({type(error).__name__}: {error}). Expected a MATLAB file "
            f"holding {expected}; get train_32x32.mat and test_32x32.mat from {SVHN_URL}."
        ) from error
    missing = [name for name in ("X", "y") if name not in content]
    if missing:
        raise DataError(f"{path} is not an SVHN file: it has no {' and no '.join(missing)}; expected {expected}.")
    images, labels = content["X"], content["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (size, size, 3):
        raise DataError(
            f"{path} is not an SVHN file: expected {expected}, but X is a {images.dtype} array of shape {images.shape}."
        )
    if labels.dtype.kind not in "iuf" or labels.size != images.shape[3] or labels.squeeze().ndim > 1:
        raise DataError(
            f"{path} is not an SVHN file: expected {expected}, but it has {images.shape[3]} images "
            f"and y is a {labels.dtype} array of shape {labels.shape}."
        )
    targets = labels.reshape(-1).astype(np.int64)
    if not np.array_equal(targets, labels.reshape(-1)) or (len(targets) and (targets.min() < 1 or targets.max() > 10)):
        raise DataError(f"{path} is not an SVHN file: expected {expected}, but y holds other values.")
    targets[targets == _ZERO_LABEL] = 0
    # MATLAB order (row, column, channel, image) -> image, channel, row, column.
    pixels = np.ascontiguousarray(images.transpose(3, 2, 0, 1))
    return torch.from_numpy(pixels), torch.from_numpy(targets)
