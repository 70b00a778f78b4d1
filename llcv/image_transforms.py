"""uint8 images held in memory -> the normalised floats a model reads, with each dataset's
standard training augmentation (a random crop from a zero-padded image, and a horizontal flip
where flipping keeps the label).

Shared by every dataset ``llcv.data`` holds in memory as a uint8 tensor (CIFAR-10, CIFAR-100,
MNIST, Fashion-MNIST, SVHN); each one's constants live beside its file reader.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PixelRecipe:
    """One dataset's normalisation and training augmentation.

    Args:
        mean: per-channel mean of the training images, on the 0..1 scale.
        std: per-channel standard deviation, on the same scale.
        crop_padding: pixels of zero padding on each side before the random crop back to the
            image's size (torchvision's ``RandomCrop(size, padding)``); 0: no crop.
        flip: also flip horizontally with probability 1/2 (never for digits: a flip changes them).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool


class ImageTransform:
    """uint8 ``C x H x W`` -> normalised float, augmented by ``recipe`` when ``augment`` is set.

    The randomness comes from torch's default CPU generator, as torchvision's transforms' does,
    so whoever seeds that generator fixes the augmentation: ``llcv.training`` seeds it per
    sample from (run seed, epoch, index), which makes resume exact with any number of
    DataLoader workers. (A class rather than a closure so that DataLoader workers can pickle it.)
    """

    def __init__(self, recipe: PixelRecipe, augment: bool) -> None:
        self.recipe = recipe
        self.augment = augment
        self.mean = torch.tensor(recipe.mean).view(-1, 1, 1)
        self.std = torch.tensor(recipe.std).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float() / 255.0
        if self.augment:
            if self.recipe.crop_padding:
                image = _random_crop(image, self.recipe.crop_padding)
            if self.recipe.flip and torch.rand(()) < 0.5:
                image = image.flip(-1)
        return (image - self.mean) / self.std

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.recipe}, augment={self.augment})"


def _random_crop(image: torch.Tensor, padding: int) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) with zero fill."""
    height, width = image.shape[-2:]
    padded = F.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    return padded[:, top : top + height, left : left + width]
