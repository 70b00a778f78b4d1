"""MNIST and Fashion-MNIST as their official IDX files, gzipped or not: where they are, and
each one's class names, normalisation and augmentation.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian 32-bit size per dimension, then the values in row-major order
(<http://yann.lecun.com/exdb/mnist/>). The parser here is written with numpy rather than
taken from torchvision (``torchvision.datasets.mnist.read_sn3_pascalvincent_tensor``): that one
reads only uncompressed files and checks the header with ``assert``, which ``python -O`` drops,
so a malformed file would come out as a wrong-shaped tensor or a torch traceback instead of a
message naming the file.

Separate from ``llcv.data`` because reading these files safely is a file format of its own;
``llcv.data`` turns what it reads into datasets.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from llcv.errors import DataError
from llcv.image_transforms import PixelRecipe

MNIST_IMAGE_SIZE = 28
MNIST_CROP_PADDING = 2  # of 28 pixels: a shift of up to 2, which keeps every stroke in the frame
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions: count x rows x columns
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension: count
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 20
# IDX type codes and their big-endian numpy types.
_Split = tuple[torch.Tensor, torch.Tensor]  # uint8 N x 1 x 28 x 28 images, N long labels
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class IdxFormat:
    """One dataset published as four IDX files.

    Args:
        title: the dataset's name in messages ("MNIST").
        default_dir: the folder read when the user names none.
        torchvision_folder: where torchvision keeps the files under its root (``MNIST/raw``),
            also searched, so a torchvision download works as it is.
        url: where to get the files.
        class_names: the names of labels 0..9.
        pixels: the normalisation and the training augmentation.
    """

    title: str
    default_dir: Path
    torchvision_folder: str
    url: str
    class_names: tuple[str, ...]
    pixels: PixelRecipe


IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
IDX_VAL_IMAGES = "t10k-images-idx3-ubyte"
IDX_VAL_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS, IDX_VAL_IMAGES, IDX_VAL_LABELS)

# Mean and standard deviation of the 60,000 training images' pixels, on the 0..1 scale.
MNIST = IdxFormat(
    title="MNIST",
    default_dir=Path("data/mnist"),
    torchvision_folder="MNIST/raw",
    url="http://yann.lecun.com/exdb/mnist/ (or torchvision's mirror, https://ossci-datasets.s3.amazonaws.com/mnist/)",
    class_names=tuple(str(digit) for digit in range(10)),
    pixels=PixelRecipe((0.1307,), (0.3081,), crop_padding=MNIST_CROP_PADDING, flip=False),  # a flip changes digits
)
# Clothes keep their label when mirrored, so Fashion-MNIST's augmentation flips as CIFAR's does.
FASHION_MNIST = IdxFormat(
    title="Fashion-MNIST",
    default_dir=Path("data/fashion-mnist"),
    torchvision_folder="FashionMNIST/raw",
    url="https://github.com/zalandoresearch/fashion-mnist",
    class_names=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),  # fmt: skip
    pixels=PixelRecipe((0.2860,), (0.3530,), crop_padding=MNIST_CROP_PADDING, flip=True),
)


def locate_idx(data_dir: Path | None, idx: IdxFormat) -> dict[str, Path]:
    """The four files by name, found in ``data_dir`` (None: ``idx.default_dir``) or its
    torchvision subfolder; each may be plain or gzipped (``NAME.gz``), the plain one read where
    both exist.

    Raises:
        DataError: a file is missing; the message names it, where it was looked for and where to
            get it (llcv never downloads these).
    """
    data_dir = data_dir if data_dir is not None else idx.default_dir
    candidates = []
    for folder in (data_dir, data_dir / idx.torchvision_folder):
        found, missing = {}, []
        for name in IDX_FILES:
            path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            if path is None:
                missing.append(name)
            else:
                found[name] = path
        candidates.append((folder, found, missing))
    # Report against whichever folder is closer to complete; on a tie, data_dir itself.
    folder, found, missing = min(candidates, key=lambda candidate: len(candidate[2]))
    if missing:
        problem = f"incomplete in {folder}: missing {', '.join(missing)}" if data_dir.is_dir() else "not found"
        raise DataError(
            f"{idx.title} is {problem}. Expected {', '.join(IDX_FILES)} (each plain or gzipped, NAME.gz) in "
            f"{data_dir} or {data_dir / idx.torchvision_folder}. llcv does not download them: get the four "
            f"files from {idx.url} and put them there."
        )
    return found


def read_idx_dataset(files: dict[str, Path], idx: IdxFormat) -> tuple[_Split, _Split]:
    """The files ``locate_idx`` found -> (train images and labels, validation images and labels)."""
    train = read_idx_split(files[IDX_TRAIN_IMAGES], files[IDX_TRAIN_LABELS], idx)
    return train, read_idx_split(files[IDX_VAL_IMAGES], files[IDX_VAL_LABELS], idx)


def read_idx_split(images_path: Path, labels_path: Path, idx: IdxFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """An images file and its labels file -> (uint8 ``N x 1 x 28 x 28`` images, ``N`` labels)."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC, f"{idx.title} images")
    labels = read_idx(labels_path, IDX_LABELS_MAGIC, f"{idx.title} labels")
    size = MNIST_IMAGE_SIZE
    if images.shape[1:] != (size, size):
        raise DataError(
            f"{images_path} holds {images.shape[1]}x{images.shape[2]} images; {idx.title}'s are {size}x{size}."
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "they must come from the same split of the same download."
        )
    if len(labels) and labels.max() >= len(idx.class_names):
        raise DataError(
            f"{labels_path} holds label {labels.max()}; {idx.title}'s labels are 0 to {len(idx.class_names) - 1}."
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def read_idx(path: Path, magic: int, what: str) -> np.ndarray:
    """An IDX file, plain or gzipped (told by its first bytes), as an array of its dimensions.

    Args:
        path: the file.
        magic: the magic number the file must start with (type code and dimension count).
        what: what the file should hold, for messages ("MNIST images").

    Raises:
        DataError: not gzip nor IDX, another magic number, a header or data shorter than the
            header says, or bytes after the data.
    """
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw) as handle:
                    return _parse_idx(handle, path, magic, what)
            return _parse_idx(raw, path, magic, what)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"{path} is not a readable file of {what} ({type(error).__name__}: {error}). "
            "Replace it with the file from the official download."
        ) from error


def _parse_idx(handle: BinaryIO, path: Path, magic: int, what: str) -> np.ndarray:
    expected = f"an IDX file of {what}, starting with the magic number {magic:#010x}"
    header = handle.read(4)
    found = int.from_bytes(header, "big") if len(header) == 4 else None
    if found != magic:
        shown = f"{found:#010x}" if found is not None else f"only {len(header)} bytes"
        raise DataError(f"{path} is not {expected}: it starts with {shown}. Replace it with the official file.")
    num_dims, dtype = magic & 0xFF, np.dtype(_IDX_TYPES[(magic >> 8) & 0xFF])
    sizes_bytes = handle.read(4 * num_dims)
    if len(sizes_bytes) != 4 * num_dims:
        raise DataError(f"{path} is truncated: its header ends before the sizes of its {num_dims} dimensions.")
    shape = tuple(int(size) for size in np.frombuffer(sizes_bytes, dtype=">u4"))
    num_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = _read_at_most(handle, num_bytes + 1)  # one byte more shows trailing data
    dims = " x ".join(map(str, shape))
    if len(data) < num_bytes:
        raise DataError(
            f"{path} is truncated: its header says {dims} values ({num_bytes} bytes) but only {len(data)} "
            "bytes follow. Download it again."
        )
    if len(data) > num_bytes:
        raise DataError(f"{path} has bytes after the {dims} values its header announces; it is not {expected}.")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _read_at_most(handle: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes, in chunks: a header claiming huge sizes costs only what the file holds."""
    chunks, remaining = [], limit
    while remaining > 0:
        chunk = handle.read(min(remaining, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
