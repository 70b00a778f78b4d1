"""Models llcv has no registration for: torchvision's and timm's registries, your own factory by
import path, and the blocks of any model read from its module tree.

``torchvision:NAME`` is any classification builder of ``torchvision.models.list_models(module=
torchvision.models)`` (``torchvision:resnet18``, ``torchvision:vit_b_16``) or a model class that
``torchvision.models`` exports, built from its arguments alone (``torchvision:VisionTransformer``
with ``image_size``, ``patch_size``, ...). ``timm:NAME`` is any ``timm.list_models()`` name,
through the optional extra ``llcv[timm]``. Both are built with random weights (never
pretrained: the weights come from the checkpoint); the class count and the input channels come
from the dataset, and the checkpoint records the name, the construction arguments and the
library's version, so loading needs no flag.

``package.module:function`` is your own architecture (``ImportedFactory``). Importing it runs
your code, so llcv imports a factory only when a flag or a config names it, never because a
checkpoint does (the same reason checkpoints load with ``weights_only=True``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

from torch import nn

from llcv.errors import SettingsError

TORCHVISION = "torchvision"
TIMM = "timm"
REGISTRIES = (TORCHVISION, TIMM)
TIMM_INSTALL = "pip install 'llcv[timm]' (or pip install timm)"

# Construction arguments are recorded in checkpoints (loaded with weights_only=True) and in JSON.
ArgumentValue = int | float | bool | str


def registry_of(name: str) -> str | None:
    """``"torchvision"`` or ``"timm"`` for a ``torchvision:NAME`` / ``timm:NAME`` model, else None."""
    prefix, colon, rest = name.partition(":")
    return prefix if colon and prefix in REGISTRIES and rest else None


def _timm():
    try:
        import timm
    except ImportError:
        raise SettingsError(f"timm: models need the timm package, which is not installed: {TIMM_INSTALL}") from None
    return timm


def _torchvision_models():
    import torchvision.models

    return torchvision.models


@lru_cache(maxsize=2)
def _names(registry: str) -> tuple[str, ...]:
    if registry == TIMM:
        return tuple(_timm().list_models())
    models = _torchvision_models()
    return tuple(models.list_models(module=models))


def _torchvision_class(name: str) -> type[nn.Module] | None:
    """A model class exported by ``torchvision.models`` (``VisionTransformer``), built from arguments alone."""
    found = getattr(_torchvision_models(), name, None)
    return found if isinstance(found, type) and issubclass(found, nn.Module) else None


def check_registry_name(name: str) -> str:
    """Refuse a ``torchvision:`` / ``timm:`` name the library does not know (or timm missing).

    Raises:
        SettingsError: an unknown name (with close matches), or timm not installed.
    """
    registry = registry_of(name)
    if registry is None:
        raise SettingsError(f"{name!r} is not a torchvision:NAME or timm:NAME model")
    short = name.split(":", 1)[1]
    if short in _names(registry) or (registry == TORCHVISION and _torchvision_class(short) is not None):
        return name
    close = difflib.get_close_matches(short, _names(registry), n=3)
    listing = "torchvision.models.list_models()" if registry == TORCHVISION else "timm.list_models()"
    hint = f"; did you mean {', '.join(f'{registry}:{match}' for match in close)}?" if close else ""
    raise SettingsError(f"unknown {registry} model {short!r}{hint} ({listing} lists them)")


def library_version(registry: str) -> str:
    """The installed torchvision or timm version, as checkpoints record it."""
    if registry == TIMM:
        return str(_timm().__version__)
    import torchvision

    return str(torchvision.__version__)


def same_release(recorded: str, current: str) -> bool:
    """Whether two library versions are the same release: the local part (``+cu121``, ``+cpu``)
    says how it was built, not what it computes, so it is left out."""
    return recorded.split("+")[0] == current.split("+")[0]


def construction_arguments(name: str, image_size: int | None, arguments: Mapping[str, ArgumentValue]) -> dict[str, ArgumentValue]:
    """The arguments a registry model is built with: the given ones, and the input size where the
    model needs it to match the data: ``image_size`` for torchvision's ViTs, ``img_size`` for timm
    models that take one (ViTs and their kin; ``try_build`` finds out)."""
    resolved = dict(arguments)
    registry, short = registry_of(name), name.split(":", 1)[-1]
    if image_size is not None and registry == TORCHVISION and (short.startswith("vit_") or short == "VisionTransformer"):
        resolved.setdefault("image_size", image_size)
    if image_size is not None and registry == TIMM:
        resolved.setdefault("img_size", image_size)
    return resolved


def build_registry_model(
    name: str, num_classes: int, in_channels: int, *, cifar_stem: bool, arguments: Mapping[str, ArgumentValue] | None = None
) -> nn.Module:
    """Build ``torchvision:NAME`` or ``timm:NAME`` with random weights.

    Args:
        cifar_stem: torchvision ResNets only: a 3x3 stride-1 first convolution and no max-pool,
            as llcv's own resnets (``stem_applies`` says where it means something).
        arguments: keyword arguments of the builder or class (``image_size``, ``depth``, ...).

    Raises:
        SettingsError: an unknown name, timm not installed, arguments the model refuses, or
            input channels other than 3 for a torchvision model whose first convolution cannot
            be found to adapt.
    """
    check_registry_name(name)
    registry, short = name.split(":", 1)
    arguments = dict(arguments or {})
    try:
        if registry == TIMM:
            return _timm().create_model(short, pretrained=False, num_classes=num_classes, in_chans=in_channels, **arguments)
        model = _build_torchvision(short, num_classes, arguments)
    except (TypeError, ValueError, AssertionError) as error:
        raise SettingsError(f"model {name!r} with arguments {arguments or '{}'}: {error}") from None
    if cifar_stem:
        model = _cifar_stem(model, name)
    return _adapt_first_conv(model, in_channels, name)


def try_build(name: str, num_classes: int, in_channels: int, *, cifar_stem: bool, arguments: Mapping[str, ArgumentValue]) -> tuple[nn.Module, dict]:
    """``build_registry_model``, leaving out ``img_size`` where a timm model does not take one
    (its CNNs adapt to any size); returns the model and the arguments it was built with."""
    try:
        return build_registry_model(name, num_classes, in_channels, cifar_stem=cifar_stem, arguments=arguments), dict(arguments)
    except SettingsError as error:
        refused = "unexpected keyword argument 'img_size'" in str(error)
        if registry_of(name) != TIMM or "img_size" not in arguments or not refused:
            raise
    fewer = {key: value for key, value in arguments.items() if key != "img_size"}
    return build_registry_model(name, num_classes, in_channels, cifar_stem=cifar_stem, arguments=fewer), fewer


def _build_torchvision(short: str, num_classes: int, arguments: dict[str, Any]) -> nn.Module:
    models = _torchvision_models()
    if short in _names(TORCHVISION):
        return models.get_model(short, weights=None, num_classes=num_classes, **arguments)
    return _torchvision_class(short)(num_classes=num_classes, **arguments)


def stem_applies(name: str) -> bool:
    """Whether ``[model] stem`` means something for a registry model: torchvision's ResNets
    (resnet*, resnext*, wide_resnet*), whose 7x7 stride-2 convolution and max-pool the CIFAR stem
    replaces. Other models keep their own stems (a timm model takes its stem options as arguments)."""
    if registry_of(name) != TORCHVISION:
        return False
    short = name.split(":", 1)[1]
    return short.startswith(("resnet", "resnext", "wide_resnet")) or short == "ResNet"


def _cifar_stem(model: nn.Module, name: str) -> nn.Module:
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise SettingsError(f"model {name!r}: the cifar stem applies to torchvision's ResNets only; leave --stem unset")
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _adapt_first_conv(model: nn.Module, in_channels: int, name: str) -> nn.Module:
    """torchvision builders take no input-channel argument: replace the first 3-channel Conv2d
    (in registration order, which is the order of the forward pass in torchvision's models) by
    one with ``in_channels``, otherwise identical (a fresh initialisation either way)."""
    if in_channels == 3:
        return model
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent_path, _, attribute = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            replacement = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, module.padding_mode,
            )  # fmt: skip
            setattr(parent, attribute, replacement)
            return model
    raise SettingsError(
        f"model {name!r} takes 3-channel images and has no 3-channel first convolution llcv could adapt to "
        f"{in_channels} channels; use data with 3 channels, or a factory (--model-factory) that builds it for yours"
    )


# --- your own factory ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedFactory:
    """``package.module:function``, a function (or class) returning an ``nn.Module``.

    The contract: it is called with the keywords ``num_classes`` and ``in_channels`` (from the
    dataset when training, from the checkpoint when loading) where its signature takes them (or
    takes ``**kwargs``), and with ``[model] arguments``; it returns a freshly initialised module.
    Only the path is held, so the value pickles to device and Ray workers, which import it
    again (the module must be importable there too).
    """

    path: str

    def function(self) -> Callable[..., Any]:
        """The imported function.

        Raises:
            SettingsError: the path is malformed, its module does not import, or it has no such function.
        """
        module_name, colon, attribute = self.path.partition(":")
        if not colon or not module_name or not attribute:
            raise SettingsError(f"model factory {self.path!r}: use package.module:function")
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # noqa: BLE001 - any failure of the user's import is theirs to read
            raise SettingsError(
                f"model factory {self.path!r}: module {module_name!r} does not import ({type(error).__name__}: {error}); "
                "is it on PYTHONPATH?"
            ) from None
        found: Any = module
        for part in attribute.split("."):
            found = getattr(found, part, None)
        if found is None or not callable(found):
            raise SettingsError(f"model factory {self.path!r}: module {module_name!r} has no function {attribute!r}")
        return found

    def __call__(self, num_classes: int | None = None, in_channels: int | None = None, **arguments: Any) -> nn.Module:
        """Build the model.

        Raises:
            SettingsError: as ``function``, the function refuses its arguments, or it returns no ``nn.Module``.
        """
        function = self.function()
        offered = {key: value for key, value in (("num_classes", num_classes), ("in_channels", in_channels)) if value is not None}
        keywords = {**_accepted(function, offered), **arguments}
        try:
            model = function(**keywords)
        except TypeError as error:
            raise SettingsError(f"model factory {self.path!r} called with {keywords}: {error}") from None
        if not isinstance(model, nn.Module):
            raise SettingsError(f"model factory {self.path!r} returned a {type(model).__name__}, not a torch.nn.Module")
        return model


def import_factory(path: str) -> ImportedFactory:
    """Import ``package.module:function`` now (so a bad path fails before any work) and return it.

    Raises:
        SettingsError: as ``ImportedFactory.function``.
    """
    factory = ImportedFactory(path)
    factory.function()
    return factory


def _accepted(function: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C extension: offer nothing it may refuse
        return {}
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return offered
    return {key: value for key, value in offered.items() if key in parameters}


# --- blocks from the module tree -----------------------------------------------------------------


def module_blocks(model: nn.Module, depth: int = 1) -> dict[str, tuple[str, ...]]:
    """Per-layer blocks of any model, from its module tree, in registration order.

    Depth 1: each top-level child that owns parameters is a block (``layer1`` -> ``layer1.*``),
    and each parameter held by the model itself is one (``class_token``). Depth N goes N levels
    down (``encoder.layers.encoder_layer_0``); a child with no children of its own stays one
    block. A model that wraps one child holding every parameter is read from that child down.
    Names keep the module paths (dots included), so a block's scope says where it is.

    Raises:
        SettingsError: depth below 1, or a model without parameters.
    """
    if depth < 1:
        raise SettingsError(f"block depth {depth}: use 1 or more")
    if not any(True for _ in model.parameters()):
        raise SettingsError("the model has no parameters, so it has no blocks")
    prefix, root = "", model
    while True:  # skip wrappers: a module whose only parameters are one child's
        owners = [(name, child) for name, child in root.named_children() if _owns_parameters(child)]
        if len(owners) != 1 or any(True for _ in root.parameters(recurse=False)):
            break
        prefix, root = _join(prefix, owners[0][0]), owners[0][1]
    blocks: dict[str, tuple[str, ...]] = {}
    _collect(root, prefix, depth, blocks)
    return blocks


def _collect(module: nn.Module, prefix: str, depth: int, blocks: dict[str, tuple[str, ...]]) -> None:
    for name, _ in module.named_parameters(recurse=False):
        blocks[_join(prefix, name)] = (_join(prefix, name),)
    for name, child in module.named_children():
        if not _owns_parameters(child):
            continue
        path = _join(prefix, name)
        if depth <= 1 or not any(True for _ in child.children()):
            blocks[path] = (f"{path}.*",)
        else:
            _collect(child, path, depth - 1, blocks)


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
