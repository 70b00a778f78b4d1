"""Model factories importable by path (``--model-factory model_factories:tiny_net``, tests/ being
on the path), for the tests of your own architectures."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A convolution, a hidden layer and a head: three blocks, a few thousand weights."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.hidden = nn.Linear(width * 4, 16)
        self.head = nn.Linear(16, num_classes)
        self.scale = nn.Parameter(torch.ones(()))  # held by the model itself: a block of its own

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.features(images).flatten(1)))) * self.scale


def tiny_net(num_classes: int, in_channels: int, width: int = 4) -> nn.Module:
    return TinyNet(num_classes, in_channels, width)


def tiny_net_any(**kwargs) -> nn.Module:
    """Takes whatever it is given."""
    return TinyNet(kwargs["num_classes"], kwargs["in_channels"])


def not_a_module(num_classes: int) -> str:
    return f"{num_classes} classes"
