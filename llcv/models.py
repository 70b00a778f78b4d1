"""Model registry: architectures by name, each with its named parameter blocks.

``build_model`` is the only way llcv constructs a network, so a checkpoint's metadata (name,
class count, input channels, stem) is enough to rebuild it. Researchers add their own
architectures with ``@register_model("name")``; the name is available as soon as the module
holding the decorated function has been imported. Each registration carries a version, which
``llcv train`` writes into every checkpoint and ``load_checkpoint`` compares with the registered
one, so weights never load silently into a function they were not trained as.

Models without a registration build here too (``llcv.model_sources``): ``torchvision:NAME`` and
``timm:NAME`` by registry name, and your own factory by import path (``new_model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn

from llcv.errors import SettingsError
from llcv.model_sources import (
    ArgumentValue,
    ImportedFactory,
    check_registry_name,
    construction_arguments,
    library_version,
    registry_of,
    stem_applies,
    try_build,
)

Stem = Literal["cifar", "imagenet"]
ModelFactory = Callable[[int, int, Stem], nn.Module]

# Inputs this small lose too much resolution to a 7x7 stride-2 conv plus max-pool.
CIFAR_STEM_MAX_IMAGE_SIZE = 64


@dataclass(frozen=True)
class RegisteredModel:
    """A registry entry: the factory and the model's blocks as parameter-name patterns."""

    factory: ModelFactory
    blocks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    version: int = 1


_REGISTRY: dict[str, RegisteredModel] = {}


def register_model(name: str, blocks: dict[str, tuple[str, ...] | list[str]] | None = None, *, version: int = 1):
    """Decorator that registers ``factory(num_classes, in_channels, stem) -> nn.Module``.

    Args:
        name: the name used by ``--model`` and stored in checkpoints.
        blocks: named groups of parameter-name glob patterns (e.g. ``{"head": ["fc.*"]}``),
            used by per-layer LLC estimates.
        version: the version of the function the factory builds, a positive integer written
            into every checkpoint ``llcv train`` saves (``model.version``, docs/formats.md).
            Bump it whenever a change keeps every weight's name and shape but changes what the
            network computes: a stride, padding, dilation, pooling, activation, normalisation
            or the order of layers. Such weights would still load, silently, into a different
            function; with a new version, loading a checkpoint of the old one is an error
            (``CheckpointError``) unless the mismatch is allowed explicitly. A change that alters
            a name or shape needs no bump: loading already fails on it.

    Raises:
        SettingsError: ``version`` is not a positive integer.

    Example:
        >>> @register_model("tiny", blocks={"all": ["*"]}, version=1)
        ... def tiny(num_classes, in_channels, stem):
        ...     return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SettingsError(f"model {name!r}: version must be a positive integer, got {version!r}")

    def decorate(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = RegisteredModel(
            factory=factory, blocks={block: tuple(patterns) for block, patterns in (blocks or {}).items()}, version=version
        )
        return factory

    return decorate


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def model_blocks(name: str) -> dict[str, tuple[str, ...]]:
    """The named parameter blocks a registered model declares."""
    return dict(_lookup(name).blocks)


def model_version(name: str) -> int:
    """The version a registered model declares (``register_model(..., version=)``).

    Raises:
        SettingsError: the name is not registered.
    """
    return _lookup(name).version


def default_stem(image_size: int | None) -> Stem:
    """The CIFAR stem for small inputs, the ImageNet stem otherwise (or when the size is unknown)."""
    if image_size is not None and image_size <= CIFAR_STEM_MAX_IMAGE_SIZE:
        return "cifar"
    return "imagenet"


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    stem: Stem | None = None,
    *,
    image_size: int | None = None,
    arguments: Mapping[str, ArgumentValue] | None = None,
) -> nn.Module:
    """Build a model with freshly initialised weights (never pretrained).

    Args:
        name: a name from ``list_models()``, or ``torchvision:NAME`` / ``timm:NAME``
            (``llcv.model_sources``).
        num_classes: size of the output layer.
        in_channels: channels of the input images.
        stem: ``"cifar"`` (3x3 conv, no max-pool) or ``"imagenet"``; None picks by ``image_size``.
            For registry models it applies to torchvision's ResNets only (``stem_applies``).
        image_size: the input's side length, used only to choose the default stem.
        arguments: a registry model's construction arguments, as its checkpoint records them.

    Raises:
        SettingsError: the name is not registered nor a known registry model, or the registry
            model refuses its arguments.
    """
    if registry_of(name) is not None:
        cifar = stem_applies(name) and (stem or default_stem(image_size)) == "cifar"
        model, _ = try_build(name, num_classes, in_channels, cifar_stem=cifar, arguments=dict(arguments or {}))
        return model
    entry = _lookup(name)
    return entry.factory(num_classes, in_channels, stem or default_stem(image_size))


def new_model(
    name: str,
    num_classes: int,
    in_channels: int,
    *,
    stem: Stem | None = None,
    image_size: int | None = None,
    arguments: Mapping[str, ArgumentValue] | None = None,
    factory: ImportedFactory | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A model to train and the spec its checkpoints record (``llcv.checkpoints.ModelSpec``'s fields).

    A registered model records its version; a registry model its construction arguments (the
    given ones and, for models that need it, the input size) and the library's version; a
    factory its import path, under ``name`` and ``factory``, and its arguments.

    Raises:
        SettingsError: as ``build_model``; a stem given for a model it does not apply to; or, with
            ``factory``, as ``ImportedFactory``.
    """
    arguments = dict(arguments or {})
    spec: dict[str, Any] = {
        "name": name, "num_classes": num_classes, "in_channels": in_channels, "stem": None, "version": None,
        "arguments": {}, "library_version": None, "factory": None,
    }  # fmt: skip
    if factory is not None:
        if stem is not None:
            raise SettingsError(f"--stem applies to llcv's registered models and torchvision ResNets, not to the factory {factory.path!r}")
        model = factory(num_classes=num_classes, in_channels=in_channels, **arguments)
        return model, {**spec, "name": factory.path, "factory": factory.path, "arguments": arguments}
    registry = registry_of(name)
    if registry is not None:
        if stem is not None and not stem_applies(name):
            raise SettingsError(f"--stem applies to torchvision's ResNets, not to {name!r}; leave it unset")
        chosen = (stem or default_stem(image_size)) if stem_applies(name) else None
        resolved = construction_arguments(name, image_size, arguments)
        model, used = try_build(name, num_classes, in_channels, cifar_stem=chosen == "cifar", arguments=resolved)
        return model, {**spec, "stem": chosen, "arguments": used, "library_version": library_version(registry)}
    if arguments:
        raise SettingsError(f"model {name!r} is registered in llcv and takes no construction arguments ([model] arguments)")
    chosen = stem or default_stem(image_size)
    return build_model(name, num_classes, in_channels, chosen), {**spec, "stem": chosen, "version": model_version(name)}


def check_model_name(name: str) -> str:
    """A registered name, or a ``torchvision:`` / ``timm:`` name its library knows.

    Raises:
        SettingsError: neither (the message lists the registered names), or timm not installed.
    """
    if registry_of(name) is not None:
        return check_registry_name(name)
    _lookup(name)
    return name


def _lookup(name: str) -> RegisteredModel:
    if name not in _REGISTRY:
        raise SettingsError(
            f"unknown model {name!r}; choose one of {', '.join(list_models())}, or torchvision:NAME or timm:NAME"
        )
    return _REGISTRY[name]


class SmallCNN(nn.Module):
    """A two-conv network that trains in seconds and samples in minutes on a CPU; for demos and tests.

    The first convolution has stride 2 and each is followed by max-pooling, so a 32x32 input
    costs about 0.4 M multiply-adds: cheap enough for thousands of SGLD steps on a laptop.
    No BatchNorm, so the LLC depends on the weights alone in any mode.
    """

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.max_pool2d(torch.relu(self.conv1(images)), 2)
        hidden = torch.max_pool2d(torch.relu(self.conv2(hidden)), 2)
        return self.fc2(torch.relu(self.fc1(_pooled(hidden, self.pool).flatten(1))))


def _pooled(hidden: torch.Tensor, pool: nn.AdaptiveAvgPool2d) -> torch.Tensor:
    """``pool(hidden)``, computed as a repeat where the map is smaller than the pool's output and
    divides it: adaptive average pooling then copies each cell into a block, and torch's kernel
    for that took a third of a sampling step on 8x8 digits (it is the same function, so
    checkpoints keep their model version)."""
    size = pool.output_size if isinstance(pool.output_size, int) else None
    height, width = hidden.shape[-2:]
    if size is None or height != width or height >= size or size % height:
        return pool(hidden)
    factor = size // height
    return hidden.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


# Version 1: the stride-2 first convolution above. Its stride changed once before models had
# versions; checkpoints from before versioning carry none and load as the current version.
@register_model(
    "smallcnn",
    blocks={"conv1": ("conv1.*",), "conv2": ("conv2.*",), "fc1": ("fc1.*",), "fc2": ("fc2.*",)},
    version=1,
)
def smallcnn(num_classes: int, in_channels: int, stem: Stem) -> nn.Module:
    """The small CPU-friendly CNN; the stem setting does not apply to it."""
    return SmallCNN(num_classes, in_channels)


_RESNET_BLOCKS = {
    "stem": ("conv1.*", "bn1.*"),
    "layer1": ("layer1.*",),
    "layer2": ("layer2.*",),
    "layer3": ("layer3.*",),
    "layer4": ("layer4.*",),
    "fc": ("fc.*",),
}


def _resnet(constructor: Callable[..., nn.Module], num_classes: int, in_channels: int, stem: Stem) -> nn.Module:
    model = constructor(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@register_model("resnet18", blocks=_RESNET_BLOCKS, version=1)
def resnet18(num_classes: int, in_channels: int, stem: Stem) -> nn.Module:
    """torchvision's ResNet18, randomly initialised."""
    from torchvision.models import resnet18 as constructor

    return _resnet(constructor, num_classes, in_channels, stem)


@register_model("resnet34", blocks=_RESNET_BLOCKS, version=1)
def resnet34(num_classes: int, in_channels: int, stem: Stem) -> nn.Module:
    """torchvision's ResNet34, randomly initialised."""
    from torchvision.models import resnet34 as constructor

    return _resnet(constructor, num_classes, in_channels, stem)


@register_model("resnet50", blocks=_RESNET_BLOCKS, version=1)
def resnet50(num_classes: int, in_channels: int, stem: Stem) -> nn.Module:
    """torchvision's ResNet50, randomly initialised."""
    from torchvision.models import resnet50 as constructor

    return _resnet(constructor, num_classes, in_channels, stem)
