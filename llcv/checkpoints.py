"""Checkpoint files: the llcv format, foreign formats, safe loading, and training order.

An llcv checkpoint is a plain dict saved with ``torch.save`` (layout in docs/formats.md) that
``torch.load(path, weights_only=True)`` opens, so a downloaded file can never run code. Foreign
checkpoints (a bare state dict, or the older research format ``checkpoint_..._epoch_39_...pth.tar``
holding ``state_dict`` and ``epoch``) load too, given the model name.

llcv checkpoints record the registered model's version (``model.version``), or for a
``torchvision:`` / ``timm:`` model the library's (``model.library_version``); loading one whose
version differs from the one here now is an error unless the mismatch is allowed, by
``allow_version_mismatch=True``. A checkpoint of your own factory (``model.factory``) loads only
when the caller passes a factory: importing one runs code, and a checkpoint never decides that.
"""

from __future__ import annotations

import pickle
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from llcv.errors import CheckpointError, SettingsError
from llcv.fileio import atomic_write
from llcv.model_sources import ImportedFactory, library_version, registry_of, same_release
from llcv.models import Stem, build_model, model_version
from llcv.version import __version__

FORMAT = "llcv-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt")
_STEP_NAME = re.compile(r"^step_(\d+)\.pt$")
_EPOCH_IN_NAME = re.compile(r"epoch_(\d+)")
# Wrappers that prefix state-dict keys: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Research checkpoints may hold numpy scalars (e.g. a best accuracy); allow exactly those.
# numpy 2 pickles them as numpy._core.multiarray.scalar, numpy 1 (every file from before
# mid-2024) as numpy.core.multiarray.scalar, so the function is allowed under both names.
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_NUMPY_SCALAR_GLOBALS = [
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(kind)) for kind in ("float64", "float32", "int64", "int32", "bool")),
]


class ModelSpec(BaseModel):
    """What ``build_model`` (or the factory) needs to rebuild the network."""

    model_config = ConfigDict(frozen=True)

    # A registered name (resnet18), a registry name as given (torchvision:vit_b_16), or a factory's import path.
    name: str
    num_classes: int | None  # None only for a foreign checkpoint loaded into a given model
    in_channels: int | None
    stem: Stem | None = None  # None where no stem applies (registry models but torchvision ResNets, factories)
    # The registered model's version when the file was saved; None when not recorded (foreign
    # checkpoints, llcv checkpoints written before model versions), which loads as the current one.
    version: int | None = None
    # A torchvision: / timm: model's construction arguments (image_size, ...) and its library's
    # version when saved; a factory's arguments.
    arguments: dict[str, int | float | bool | str] = {}
    library_version: str | None = None
    factory: str | None = None  # package.module:function: your own architecture, imported only when asked


class DatasetSpec(BaseModel):
    """Which data the checkpoint was trained on."""

    model_config = ConfigDict(frozen=True)

    name: str
    data_dir: str | None = None
    seed: int = 0
    image_size: int | None = None  # as trained, when [data] image_size set it; None: the dataset's default


class CheckpointInfo(BaseModel):
    """A checkpoint's metadata; foreign checkpoints leave unknown fields None."""

    model_config = ConfigDict(frozen=True)

    path: str
    format: Literal["llcv", "state_dict", "research"]
    step: int | None = None
    epoch: float | None = None
    model: ModelSpec
    dataset: DatasetSpec | None = None
    metrics: dict[str, float | None] = {}
    settings: dict[str, Any] | None = None
    llcv_version: str | None = None
    created: str | None = None
    # True when model.version differs from the registered version and the mismatch was allowed.
    model_version_overridden: bool = False


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint at ``step``; sorting names gives training order."""
    return f"step_{step:08d}.pt"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DDP/DataParallel and torch.compile wrappers, so saved keys carry no prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Atomically write a checkpoint dict; adds the format markers, version and timestamp.

    Raises:
        WriteError: the file could not be written; a previous file at ``path`` is intact.
    """
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **payload,
        "llcv_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    def write(handle) -> None:
        try:
            torch.save(full, handle)
        except RuntimeError as error:
            # torch's zip writer reports a failed write (full disk, quota) as a RuntimeError
            # whose context is the OSError; re-raise that so atomic_write names the file.
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise

    return atomic_write(Path(path), write)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint file as a dict with ``weights_only=True``; never runs code from the file.

    Raises:
        CheckpointError: missing, empty, truncated, not a checkpoint, or holding unsafe objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        refused = [line for line in lines if "Unsupported global" in line]
        if refused:
            # e.g. "WeightsUnpickler error: Unsupported global: GLOBAL builtins.exec ..."
            detail = refused[0].split(". ")[0]
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds Python objects beyond tensors and plain "
                f"values, which could run code when loaded; llcv loads checkpoints with "
                f"weights_only=True only. Re-save it as a plain state dict if you trust it. ({detail})"
            ) from None
        reason = next((line for line in lines if "WeightsUnpickler" in line), lines[0] if lines else type(error).__name__)
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint: {reason}") from None
    except Exception as error:
        # Truncated zips raise RuntimeError; other kinds of file make the restricted unpickler
        # fail in arbitrary ways (KeyError, IndexError, ...). All mean the same to the user.
        # The first sentence: torch follows a truncated zip's with a paragraph of generic advice.
        reason = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or another kind of file): "
            f"{type(error).__name__}: {reason}"
        ) from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, expected a dict")
    return loaded


def load_checkpoint(
    path: Path,
    model: nn.Module | None = None,
    *,
    model_name: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    stem: Stem | None = None,
    allow_version_mismatch: bool = False,
    factory: ImportedFactory | None = None,
) -> tuple[nn.Module, CheckpointInfo]:
    """Load a checkpoint into a model, safely, and return the model with its metadata.

    For llcv checkpoints the model is rebuilt from the file's metadata, after checking that the
    model version the file records is the registered one (files without one load as the current
    version). For foreign checkpoints pass ``model`` or ``model_name``; the class count and input
    channels are read from the weights' shapes and the stem from the first convolution's kernel,
    unless given. With ``model`` given, the caller vouches for the architecture: neither the
    version nor the class count is checked, only the weights' names and shapes.

    Args:
        path: the checkpoint file.
        model: load into this module instead of building one.
        model_name: the registered architecture of a foreign checkpoint.
        num_classes, in_channels, stem: override what is inferred for foreign checkpoints.
        allow_version_mismatch: load a checkpoint whose model version differs from the
            registered one, or whose torchvision/timm release differs from the installed one
            (``info.model_version_overridden`` then says so).
        factory: build the model with this factory (``--model-factory``), called with the class
            count and channels the checkpoint records (inferred from the weights for foreign
            files) and, where the checkpoint records a factory, its arguments. The caller
            vouches for it: no version is checked. A checkpoint that records a factory needs one.

    Raises:
        CheckpointError: the file is unreadable, unsafe, does not fit the model, or records
            another version of the model (and the mismatch is not allowed).
        SettingsError: ``stem`` is neither cifar nor imagenet, the model is not registered nor a
            known registry model, or the checkpoint records a factory and none was given.
    """
    if stem is not None and stem not in get_args(Stem):  # else a pydantic error from ModelSpec, uncaught
        raise SettingsError(f"stem {stem!r}: use {' or '.join(get_args(Stem))}")
    payload = read_checkpoint(path)
    described = (model, model_name) if factory is None else (model, factory.path)
    info, state_dict = _describe(Path(path), payload, *described, num_classes, in_channels, stem, shapes_needed=model is None and factory is None)
    spec = info.model
    if model is None and factory is not None:
        arguments = spec.arguments if spec.factory is not None else {}
        model = factory(num_classes=spec.num_classes, in_channels=spec.in_channels, **arguments)
    elif model is None:
        if spec.factory is not None:
            raise SettingsError(
                f"checkpoint {path} holds a model built by the factory {spec.factory!r}; importing it runs its code, "
                f"so llcv does that only when asked: pass --model-factory {spec.factory} (in a config file: "
                f"[model] factory = {spec.factory!r}; in Python: Target(model_factory=import_factory({spec.factory!r})))"
            )
        if check_spec_version(spec, path=Path(path), allow=allow_version_mismatch):
            info = info.model_copy(update={"model_version_overridden": True})
        model = build_model(spec.name, spec.num_classes, spec.in_channels, spec.stem, arguments=spec.arguments)
    _load_state_dict(model, state_dict, Path(path))
    return model, info


def check_spec_version(spec: ModelSpec, *, path: Path | str, allow: bool = False) -> bool:
    """``check_model_version`` for a registered model, ``check_library_version`` for a
    ``torchvision:`` / ``timm:`` one; a factory's model is the caller's (no check).

    Returns:
        True when the versions differ and the mismatch was allowed, else False.

    Raises:
        CheckpointError: the versions differ and the mismatch is not allowed.
        SettingsError: the model is neither registered nor a registry model (or timm is missing).
    """
    if spec.factory is not None:
        return False
    if registry_of(spec.name) is not None:
        return check_library_version(spec.name, spec.library_version, path=path, allow=allow)
    return check_model_version(spec.name, spec.version, path=path, allow=allow)


def check_library_version(name: str, recorded: str | None, *, path: Path | str, allow: bool = False) -> bool:
    """Compare the torchvision or timm release a checkpoint of ``name`` records with the installed one.

    A library's models may change what they compute between releases, as a registered model's
    version says for llcv's own; the local build tag (``+cu121``, ``+cpu``) does not count.

    Returns:
        True when the releases differ and the mismatch was allowed, else False (also when none is recorded).

    Raises:
        CheckpointError: the releases differ and the mismatch is not allowed.
    """
    registry = registry_of(name)
    if recorded is None or registry is None:
        return False
    current = library_version(registry)
    if same_release(recorded, current):
        return False
    if allow:
        return True
    raise CheckpointError(
        f"checkpoint {path} was saved with model {name!r} from {registry} {recorded}, but {registry} {current} is "
        f"installed: its {name!r} may compute a different function. Install {registry}=={recorded.split('+')[0]}, "
        f"or, if the change does not matter to you, pass --allow-model-version-mismatch "
        f"(in a config file: [model] allow_version_mismatch = true; in Python: allow_version_mismatch=True)"
    )


def check_model_version(name: str, recorded: int | None, *, path: Path | str, allow: bool = False) -> bool:
    """Compare the model version a checkpoint records with the version ``name`` is registered with.

    Args:
        name: the checkpoint's registered model.
        recorded: the version in the checkpoint; None (not recorded) counts as the current one.
        path: the checkpoint, for the message.
        allow: accept a mismatch.

    Returns:
        True when the versions differ and the mismatch was allowed, else False.

    Raises:
        CheckpointError: the versions differ and the mismatch is not allowed.
        SettingsError: ``name`` is not a registered model.
    """
    if recorded is None:
        return False
    current = model_version(name)
    if recorded == current:
        return False
    if allow:
        return True
    raise CheckpointError(
        f"checkpoint {path} was saved with model {name!r} version {recorded}, but {name!r} is now version "
        f"{current}: its weights would compute a different function. Load it with an llcv whose {name!r} is "
        f"version {recorded}, or, if the change does not matter to you, pass --allow-model-version-mismatch "
        f"(in a config file: [model] allow_version_mismatch = true; in Python: allow_version_mismatch=True)"
    )


def _describe(
    path: Path,
    payload: dict[str, Any],
    model: nn.Module | None,
    model_name: str | None,
    num_classes: int | None,
    in_channels: int | None,
    stem: Stem | None,
    *,
    shapes_needed: bool,
) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    if payload.get("format") == FORMAT:
        if payload.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format version {payload['format_version']}; "
                f"this llcv reads up to {FORMAT_VERSION}, upgrade llcv"
            )
        try:
            info = CheckpointInfo(
                path=str(path),
                format="llcv",
                step=payload["step"],
                epoch=payload.get("epoch"),
                model=ModelSpec(**payload["model"]),
                dataset=DatasetSpec(**payload["dataset"]) if payload.get("dataset") else None,
                metrics=payload.get("metrics") or {},
                settings=payload.get("settings"),
                llcv_version=payload.get("llcv_version"),
                created=payload.get("created"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {path} has malformed llcv metadata: {error}") from None
        return info, _strip_prefixes(payload["state_dict"])

    if "state_dict" in payload and isinstance(payload["state_dict"], dict):
        checkpoint_format, state_dict = "research", payload["state_dict"]
        epoch = payload.get("epoch")
        epoch = float(epoch) if isinstance(epoch, (int, float, np.number)) else _epoch_from_name(path)
    elif payload and all(isinstance(value, torch.Tensor) for value in payload.values()):
        checkpoint_format, state_dict, epoch = "state_dict", payload, _epoch_from_name(path)
    else:
        raise CheckpointError(
            f"checkpoint {path} is neither an llcv checkpoint, a state dict, nor a dict with 'state_dict'"
        )
    state_dict = _strip_prefixes(state_dict)
    if model is None and model_name is None:
        raise CheckpointError(f"checkpoint {path} is a foreign checkpoint without llcv metadata: pass --model")
    # With a model or a factory given, the shapes are its business; only a model to build needs them.
    required = shapes_needed
    spec = ModelSpec(
        name=model_name or type(model).__name__,
        num_classes=num_classes or _infer_num_classes(state_dict, path, required),
        in_channels=in_channels or _infer_in_channels(state_dict, path, required),
        stem=stem or _infer_stem(state_dict),
    )
    step = int(match.group(1)) if (match := _STEP_NAME.match(path.name)) else None
    return CheckpointInfo(path=str(path), format=checkpoint_format, step=step, epoch=epoch, model=spec), state_dict


def _strip_prefixes(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    stripped = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        stripped[key] = value
    return stripped


def _epoch_from_name(path: Path) -> float | None:
    match = _EPOCH_IN_NAME.search(path.name)
    return float(match.group(1)) if match else None


def _weights(state_dict: dict[str, torch.Tensor], ndim: int) -> list[torch.Tensor]:
    return [value for key, value in state_dict.items() if key.endswith("weight") and value.ndim == ndim]


def _infer_num_classes(state_dict: dict[str, torch.Tensor], path: Path, required: bool = True) -> int | None:
    linear = _weights(state_dict, 2)
    if linear:
        return int(linear[-1].shape[0])
    if required:
        raise CheckpointError(f"checkpoint {path}: cannot infer the class count (no linear layer); pass it")
    return None


def _infer_in_channels(state_dict: dict[str, torch.Tensor], path: Path, required: bool = True) -> int | None:
    convolutions = _weights(state_dict, 4)
    if convolutions:
        return int(convolutions[0].shape[1])
    if required:
        raise CheckpointError(f"checkpoint {path}: cannot infer the input channels (no convolution); pass them")
    return None


def _infer_stem(state_dict: dict[str, torch.Tensor]) -> Stem | None:
    """A 3x3 first convolution is the CIFAR stem, a 7x7 one the ImageNet stem."""
    convolutions = _weights(state_dict, 4)
    if not convolutions:
        return None
    return {3: "cifar", 7: "imagenet"}.get(int(convolutions[0].shape[-1]))


def _load_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_few(mismatched)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model ({type(model).__name__}): {'; '.join(problems)}. "
            "Is it another architecture or class count?"
        )
    model.load_state_dict(state_dict)


def _few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def list_checkpoints(directory: Path) -> list[Path]:
    """The checkpoint files in ``directory`` in training order; other files are ignored.

    llcv files (``step_*.pt``) sort by step, research files by the epoch in their name, and any
    other checkpoint-suffixed files by name after those.

    Raises:
        CheckpointError: the directory does not exist or is not a directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoints directory {directory} does not exist or is not a directory")
    files = [path for path in directory.iterdir() if path.is_file() and path.name.endswith(CHECKPOINT_SUFFIXES)]

    def order(path: Path) -> tuple[int, int, str]:
        if match := _STEP_NAME.match(path.name):
            return (0, int(match.group(1)), path.name)
        if match := _EPOCH_IN_NAME.search(path.name):
            return (1, int(match.group(1)), path.name)
        return (2, 0, path.name)

    return sorted((path for path in files if not path.name.startswith(".")), key=order)
