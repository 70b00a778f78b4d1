"""Datasets by name: each loader returns a train split, a validation split and a DatasetInfo.

``load_dataset`` looks the name up in a registry of nine loaders:

- ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits, upsampled to 32x32.
  Needs no files, so every command works offline out of the box.
- ``synthetic``: seeded class prototypes plus noise; tiny and learnable in a few steps, for tests.
- ``cifar10`` and ``cifar100``: the "CIFAR-10/100 python version" pickle batches, read by a
  restricted unpickler (``llcv.cifar``); CIFAR-100 with its 100 fine labels.
- ``mnist`` and ``fashionmnist``: the four official IDX files, gzipped or not (``llcv.idx``);
  one channel, 28x28.
- ``svhn``: the cropped digits' ``train_32x32.mat`` and ``test_32x32.mat`` (``llcv.svhn``).
- ``imagenet1k`` and ``folder``: ImageFolder trees with ``train/`` and ``val/`` class folders,
  read lazily from disk.

Every dataset read from files is read from a folder on disk (``data_dir``, or the dataset's
default folder); only ``cifar10`` can be downloaded (``download=True``), the others say where
to put their files. The in-memory ones (all but the ImageFolder trees) keep uint8 images and
normalise them as they are read (``llcv.image_transforms``), with each dataset's standard
training augmentation when asked for.

Every dataset returned here (and every ``subset`` of one) exposes ``.targets``, a 1-D long
tensor of labels, so per-class subsets never load an image. Items are ``(image, label)`` with
``label`` a Python int, so the default collate function yields a LongTensor for every dataset.

``subset`` also takes datasets from elsewhere: a subset by count needs only ``len(dataset)``, so
it works for regression data (float or multi-dimensional targets) and for datasets without any
targets; only ``classes=`` needs integer class labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch.utils.data import Dataset, Subset, TensorDataset

from llcv.cifar import CIFAR10, CIFAR100, CIFAR_IMAGE_SIZE, CifarFormat, locate_cifar, read_cifar
from llcv.errors import DataError
from llcv.idx import FASHION_MNIST, MNIST, MNIST_IMAGE_SIZE, IdxFormat, locate_idx, read_idx_dataset
from llcv.image_transforms import ImageTransform, PixelRecipe
from llcv.svhn import SVHN_CLASS_NAMES, SVHN_IMAGE_SIZE, SVHN_PIXELS, locate_svhn, read_svhn

logger = logging.getLogger(__name__)

DIGITS_VALIDATION_FRACTION = 0.2
DIGITS_IMAGE_SIZE = 32  # digits' default size: upsampled, so the models built for 32x32 inputs apply
DIGITS_NATIVE_SIZE = 8

SYNTHETIC_NUM_CLASSES = 4
SYNTHETIC_IMAGE_SIZE = 16
SYNTHETIC_NUM_TRAIN = 512
SYNTHETIC_NUM_VAL = 128
# Prototypes have unit variance per pixel; with noise of the same scale the classes stay far
# apart in 768 dimensions, so a small CNN separates them within a few steps.
SYNTHETIC_NOISE_STD = 1.0

IMAGENET_DEFAULT_DIR = Path("data/imagenet")
IMAGENET_LEGACY_DIR = Path("data/imagenet1k")  # the default before data/imagenet; still honoured
IMAGENET_IMAGE_SIZE = 224
IMAGENET_RESIZE_RATIO = 256 / 224  # the standard eval recipe: resize to 256, centre-crop 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetInfo(BaseModel):
    """What a model and a report need to know about a loaded dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    num_train: int
    num_val: int
    data_dir: str | None  # the folder actually read; None for datasets that need no files
    class_names: list[str]


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor, with labels as a 1-D long tensor.

    Args:
        images: ``N x C x H x W`` tensor, float (ready to use) or uint8 (for ``transform``).
        targets: ``N`` labels.
        transform: applied to each image as it is read, e.g. conversion and augmentation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


class _SubsetWithTargets(Subset):
    """A ``torch.utils.data.Subset`` that keeps ``.targets`` for further subsetting.

    ``.targets`` are the parent's class labels at the chosen indices. A subset by count is built
    without them and reads them on first access, so choosing samples by count never depends on
    the targets being class labels; a later ``subset(classes=...)`` of it still finds them.

    Args:
        dataset: the parent dataset.
        indices: positions in ``dataset`` to keep, in order.
        targets: the labels at ``indices`` when already known; None reads them when needed.
    """

    def __init__(self, dataset: Dataset, indices: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        super().__init__(dataset, indices.tolist())
        self._targets = targets

    @property
    def targets(self) -> torch.Tensor:
        """1-D long tensor of the chosen items' class labels.

        Raises:
            AttributeError: the parent has no class labels (regression targets, or none at all).
                An AttributeError, not a DataError, so that ``hasattr(subset, "targets")`` answers
                whether there are labels, as it does for every other dataset; ``dataset_targets``
                then reports the parent's own reason.
        """
        if self._targets is None:
            try:
                self._targets = dataset_targets(self.dataset)[torch.as_tensor(self.indices, dtype=torch.long)]
            except DataError as error:
                raise AttributeError(f"This subset has no class labels: {error}") from error
        return self._targets

    @targets.setter
    def targets(self, targets: torch.Tensor) -> None:
        # Assignable as on the plain attribute this class used to have.
        self._targets = targets


@dataclass(frozen=True)
class _LoadRequest:
    """``load_dataset``'s arguments, handed to the registered loader as one object."""

    name: str
    data_dir: Path | None
    seed: int
    augment: bool
    download: bool
    image_size: int | None


_Splits = tuple[Dataset, Dataset, DatasetInfo]


def list_datasets() -> list[str]:
    """Names accepted by ``load_dataset``, sorted."""
    return sorted(_LOADERS)


def load_dataset(
    name: str = "digits",
    data_dir: str | Path | None = None,
    seed: int = 0,
    *,
    augment: bool = False,
    download: bool = False,
    image_size: int | None = None,
) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Load a dataset's train and validation splits.

    ``augment=True`` applies the standard training augmentation to the train split where one
    is standard: random crop and horizontal flip for cifar10, cifar100, fashionmnist, imagenet1k
    and folder; a random crop only for mnist and svhn, where a flip changes the digit; none for
    digits nor synthetic. The validation split, and the train split when ``augment=False``,
    always use the evaluation transforms; LLC estimation uses those.

    Args:
        name: one of ``list_datasets()``.
        data_dir: where the files are; None uses the dataset's default folder (cifar10:
            ``data/cifar10-python``; cifar100: ``data/cifar100-python``; mnist: ``data/mnist``;
            fashionmnist: ``data/fashion-mnist``; svhn: ``data/svhn``; imagenet1k:
            ``data/imagenet``, else the older ``data/imagenet1k``). Required for ``folder``;
            ignored by digits and synthetic.
        seed: fixes the digits split and the synthetic tensors; the other datasets come with
            fixed splits.
        augment: use training augmentation on the train split.
        download: fetch CIFAR-10 into ``data_dir`` if it is not there (cifar10 only).
        image_size: side of the square images for imagenet1k and folder (default 224) and digits
            (default 32, upsampled from their own 8). The other datasets have one native size,
            and accept only that.

    Returns:
        ``(train split, validation split, info)``.

    Raises:
        DataError: the name is unknown, or the dataset's files are missing or malformed; the
            message says what was expected where and how to get it.
    """
    if name not in _LOADERS:
        raise DataError(f"Unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}.")
    if image_size is not None and image_size <= 0:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}.")
    request = _LoadRequest(
        name=name,
        data_dir=Path(data_dir) if data_dir is not None else None,
        seed=seed,
        augment=augment,
        download=download,
        image_size=image_size,
    )
    return _LOADERS[name](request)


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """The class labels of a dataset from this module, without loading any image.

    Works for every dataset ``load_dataset`` and ``subset`` return, and for a
    ``torch.utils.data.Subset`` or a ``TensorDataset(images, labels)`` built from them.

    Returns:
        1-D long tensor, one label per item, in item order.

    Raises:
        DataError: the dataset has no labels this function can find, or its targets are not
            class labels: float (regression) targets, or not one integer per item.
    """
    targets = _raw_targets(dataset)
    # Casting float targets to long would silently turn regression values into made-up classes.
    if targets.is_floating_point() or targets.is_complex():
        raise DataError(
            f"regression targets are not class labels: found {targets.dtype} targets of shape "
            f"{tuple(targets.shape)} in a {type(dataset).__name__}, where class labels are one integer per item."
        )
    if targets.ndim != 1:
        raise DataError(
            f"Expected one label per item (a 1-D tensor of integers), got {targets.dtype} targets of "
            f"shape {tuple(targets.shape)} in a {type(dataset).__name__}."
        )
    return targets.long()


def _raw_targets(dataset: Dataset) -> torch.Tensor:
    """A dataset's targets as a tensor of their own dtype and shape (``dataset_targets`` checks them)."""
    if hasattr(dataset, "targets"):
        try:
            # No dtype: forcing long here is exactly the cast that hid regression targets.
            return torch.as_tensor(dataset.targets)
        except (TypeError, ValueError, RuntimeError) as error:
            raise DataError(
                f"The `.targets` of a {type(dataset).__name__} are not a tensor of labels ({error})."
            ) from error
    if isinstance(dataset, Subset):
        return _raw_targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1]
    raise DataError(
        f"Cannot find the labels of a {type(dataset).__name__}: expected a `.targets` "
        "attribute, a torch Subset, or a TensorDataset(images, labels)."
    )


def subset(
    dataset: Dataset,
    *,
    num_samples: int | None = None,
    classes: Sequence[int] | None = None,
    seed: int = 0,
) -> Dataset:
    """A seeded subset: the items whose label is in ``classes``, then ``num_samples`` of them.

    Chosen items keep their original order, so the same arguments always give the same subset.
    Without ``classes`` the labels are never read: any dataset with a length works, whatever
    its targets (float, multi-dimensional, or none), and the choice depends only on its length,
    ``num_samples`` and ``seed``.

    Args:
        dataset: any dataset with ``len``; with ``classes``, one ``dataset_targets`` understands
            whose targets are integer class labels.
        num_samples: how many items to keep, chosen at random with ``seed``; None keeps all.
        classes: labels to keep; None keeps every class.
        seed: seeds the random choice of ``num_samples`` items.

    Returns:
        A ``torch.utils.data.Subset`` of ``dataset``; it has ``.targets`` for the chosen items
        whenever ``dataset`` has class labels.

    Raises:
        DataError: ``classes`` is given but the targets are not class labels (float or not 1-D)
            or select no item; ``num_samples`` is not positive or is more than the items
            available; or the dataset has no length.
    """
    targets = None
    if classes is not None:
        try:
            targets = dataset_targets(dataset)
        except DataError as error:
            raise DataError(f"classes={list(classes)} needs integer class labels, one per item: {error}") from error
        indices = torch.arange(len(targets))
        wanted = torch.as_tensor(list(classes), dtype=torch.long)
        indices = indices[torch.isin(targets, wanted)]
        if len(indices) == 0:
            present = sorted(set(targets.tolist()))
            raise DataError(f"Classes {list(classes)} select no samples; the labels present are {present}.")
    else:
        indices = torch.arange(_length(dataset))
    if num_samples is not None:
        if num_samples <= 0:
            raise DataError(f"num_samples must be positive, got {num_samples}.")
        if num_samples > len(indices):
            where = f"in classes {list(classes)}" if classes is not None else "in the dataset"
            raise DataError(f"Asked for {num_samples} samples but there are only {len(indices)} {where}.")
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(len(indices), generator=generator)[:num_samples]
        indices = indices[chosen.sort().values]
    if targets is None:
        # Labels are read lazily (see _SubsetWithTargets), so a subset by count never needs them.
        return _SubsetWithTargets(dataset, indices)
    return _SubsetWithTargets(dataset, indices, targets[indices])


def _length(dataset: Dataset) -> int:
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError as error:
        raise DataError(
            f"Cannot take a subset of a {type(dataset).__name__}: it has no length (an iterable-style dataset?)."
        ) from error


def _check_native_size(request: _LoadRequest, native_size: int) -> None:
    if request.image_size is not None and request.image_size != native_size:
        raise DataError(
            f"{request.name} images are {native_size}x{native_size}; image_size={request.image_size} "
            "applies only to imagenet1k and folder. Leave image_size unset."
        )


def _refuse_download(request: _LoadRequest) -> None:
    if request.download:
        raise DataError(
            f"download is available only for cifar10; {request.name} reads images already on disk "
            "(see docs/guide.md)."
        )


def _load_digits(request: _LoadRequest) -> _Splits:
    """scikit-learn's 1,797 8x8 digits as RGB, upsampled to 32x32 unless ``image_size`` says
    otherwise (8 keeps their own pixels, for a model that must sample fast); a seeded 80/20 split."""
    from sklearn.datasets import load_digits

    size = request.image_size or DIGITS_IMAGE_SIZE
    digits = load_digits()
    pixels = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # values are 0..16
    if size != DIGITS_NATIVE_SIZE:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    # Statistics over all images, not the train split, so every seed normalises identically.
    pixels = (pixels - pixels.mean()) / pixels.std()
    images = pixels.repeat(1, 3, 1, 1)  # grey replicated, so models built for RGB apply unchanged
    targets = torch.as_tensor(digits.target, dtype=torch.long)

    generator = torch.Generator().manual_seed(request.seed)
    order = torch.randperm(len(targets), generator=generator)
    num_val = round(DIGITS_VALIDATION_FRACTION * len(targets))
    val_indices, train_indices = order[:num_val], order[num_val:]
    train = TensorImageDataset(images[train_indices], targets[train_indices])
    val = TensorImageDataset(images[val_indices], targets[val_indices])
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        in_channels=3,
        image_size=size,
        num_train=len(train),
        num_val=len(val),
        data_dir=None,
        class_names=[str(digit) for digit in range(10)],
    )
    return train, val, info


def _load_synthetic(request: _LoadRequest) -> _Splits:
    """Fixed per-class prototype images plus Gaussian noise; the same seed gives the same tensors."""
    _check_native_size(request, SYNTHETIC_IMAGE_SIZE)
    generator = torch.Generator().manual_seed(request.seed)
    shape = (3, SYNTHETIC_IMAGE_SIZE, SYNTHETIC_IMAGE_SIZE)
    prototypes = torch.randn(SYNTHETIC_NUM_CLASSES, *shape, generator=generator)

    def draw(num_samples: int) -> TensorImageDataset:
        targets = torch.randint(SYNTHETIC_NUM_CLASSES, (num_samples,), generator=generator)
        noise = SYNTHETIC_NOISE_STD * torch.randn(num_samples, *shape, generator=generator)
        return TensorImageDataset(prototypes[targets] + noise, targets)

    train = draw(SYNTHETIC_NUM_TRAIN)
    val = draw(SYNTHETIC_NUM_VAL)
    info = DatasetInfo(
        name="synthetic",
        num_classes=SYNTHETIC_NUM_CLASSES,
        in_channels=3,
        image_size=SYNTHETIC_IMAGE_SIZE,
        num_train=len(train),
        num_val=len(val),
        data_dir=None,
        class_names=[f"class_{label}" for label in range(SYNTHETIC_NUM_CLASSES)],
    )
    return train, val, info


def _in_memory_splits(
    request: _LoadRequest,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    pixels: PixelRecipe,
    class_names: Sequence[str],
    folder: Path,
) -> _Splits:
    """uint8 ``N x C x H x W`` images and their labels, per split -> datasets that normalise
    (and, for the train split when ``request.augment``, augment) each image as it is read."""
    train_set = TensorImageDataset(*train, transform=ImageTransform(pixels, augment=request.augment))
    val_set = TensorImageDataset(*val, transform=ImageTransform(pixels, augment=False))
    info = DatasetInfo(
        name=request.name,
        num_classes=len(class_names),
        in_channels=train[0].shape[1],
        image_size=train[0].shape[-1],
        num_train=len(train_set),
        num_val=len(val_set),
        data_dir=str(folder),
        class_names=list(class_names),
    )
    return train_set, val_set, info


def _load_cifar(request: _LoadRequest, cifar: CifarFormat) -> _Splits:
    """A CIFAR python version: train = its training batches, validation = its test batch."""
    _check_native_size(request, CIFAR_IMAGE_SIZE)
    if cifar is not CIFAR10:
        _refuse_download(request)
    folder = locate_cifar(request.data_dir, cifar, download=request.download)
    train, val, class_names = read_cifar(folder, cifar)
    return _in_memory_splits(request, train, val, cifar.pixels, class_names, folder)


def _load_idx(request: _LoadRequest, idx: IdxFormat) -> _Splits:
    """MNIST or Fashion-MNIST: train = the 60,000 train-* images, validation = the 10,000 t10k-*."""
    _check_native_size(request, MNIST_IMAGE_SIZE)
    _refuse_download(request)
    files = locate_idx(request.data_dir, idx)
    train, val = read_idx_dataset(files, idx)
    folder = next(iter(files.values())).parent
    return _in_memory_splits(request, train, val, idx.pixels, idx.class_names, folder)


def _load_svhn(request: _LoadRequest) -> _Splits:
    """SVHN's cropped digits: train = train_32x32.mat, validation = test_32x32.mat."""
    _check_native_size(request, SVHN_IMAGE_SIZE)
    _refuse_download(request)
    folder = locate_svhn(request.data_dir)
    train, val = read_svhn(folder)
    return _in_memory_splits(request, train, val, SVHN_PIXELS, SVHN_CLASS_NAMES, folder)


def _load_rgb_image(path: str) -> Any:
    """ImageFolder's loader, with unreadable files reported by name instead of a PIL traceback."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except OSError as error:  # PIL's UnidentifiedImageError is an OSError too
        raise DataError(f"Cannot read image {path} ({error}); remove or replace the file.") from error


def _image_folder_transforms(image_size: int, augment: bool) -> Any:
    from torchvision import transforms

    if augment:
        geometry = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        resize = round(image_size * IMAGENET_RESIZE_RATIO)
        geometry = [transforms.Resize(resize), transforms.CenterCrop(image_size)]
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    return transforms.Compose([*geometry, transforms.ToTensor(), normalize])


def _load_image_folders(request: _LoadRequest, root: Path, layout_help: str = "") -> _Splits:
    """``root/train/<class>/*`` and ``root/val/<class>/*`` as lazily read ImageFolder datasets.

    ``layout_help`` is appended to every layout error: a sentence starting with a space.
    """
    from torchvision.datasets import ImageFolder

    layout = (
        f"Expected {root}/train/<class>/<image> and {root}/val/<class>/<image>: one folder per class "
        f"inside each, with the same class folders in both.{layout_help}"
    )
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{root / split} does not exist. {layout}")

    image_size = request.image_size if request.image_size is not None else IMAGENET_IMAGE_SIZE
    splits = {}
    for split, augment in (("train", request.augment), ("val", False)):
        try:
            transform = _image_folder_transforms(image_size, augment)
            dataset = ImageFolder(str(root / split), transform=transform, loader=_load_rgb_image)
        except OSError as error:  # FileNotFoundError: no class folders, or no images in them
            raise DataError(f"Cannot read {root / split}: {error}. {layout}") from error
        # A tensor, like every other dataset here, so subsets and per-class counts stay cheap.
        dataset.targets = torch.as_tensor(dataset.targets, dtype=torch.long)
        splits[split] = dataset

    train, val = splits["train"], splits["val"]
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(
            f"The class folders of {root}/train and {root}/val differ (only in train: {only_train}; "
            f"only in val: {only_val}), so their labels would not match. {layout}"
        )
    info = DatasetInfo(
        name=request.name,
        num_classes=len(train.classes),
        in_channels=3,
        image_size=image_size,
        num_train=len(train),
        num_val=len(val),
        data_dir=str(root),
        class_names=list(train.classes),
    )
    return train, val, info


def _load_imagenet1k(request: _LoadRequest) -> _Splits:
    """ImageNet-1k as an ImageFolder tree under ``data/imagenet`` (or the older ``data/imagenet1k``)."""
    _refuse_download(request)
    root = request.data_dir
    if root is None:
        root = IMAGENET_DEFAULT_DIR
        if not root.exists() and IMAGENET_LEGACY_DIR.exists():
            logger.info("Using the older default folder %s: %s does not exist", IMAGENET_LEGACY_DIR, root)
            root = IMAGENET_LEGACY_DIR
    layout_help = (
        " ImageNet's validation images come as one flat folder;"
        " docs/guide.md shows how to sort them into class folders."
    )
    return _load_image_folders(request, root, layout_help)


def _load_folder(request: _LoadRequest) -> _Splits:
    """Any ImageFolder tree with ``train/`` and ``val/``; images are converted to RGB."""
    _refuse_download(request)
    if request.data_dir is None:
        raise DataError(
            "The folder dataset needs data_dir: a folder holding train/<class>/<image> "
            "and val/<class>/<image>."
        )
    return _load_image_folders(request, request.data_dir)


_LOADERS: dict[str, Callable[[_LoadRequest], _Splits]] = {
    "cifar10": partial(_load_cifar, cifar=CIFAR10),
    "cifar100": partial(_load_cifar, cifar=CIFAR100),
    "digits": _load_digits,
    "fashionmnist": partial(_load_idx, idx=FASHION_MNIST),
    "folder": _load_folder,
    "imagenet1k": _load_imagenet1k,
    "mnist": partial(_load_idx, idx=MNIST),
    "svhn": _load_svhn,
    "synthetic": _load_synthetic,
}
