"""Losses by name: what ``loss=`` accepts in ``estimate_llc`` and the calibration functions.

Its own module because the estimate, the calibration helpers and the chains all take a loss
from here, and none of them should need the sampler to get one.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from llcv.errors import SettingsError

LossFunction = Callable[[nn.Module, Any], torch.Tensor]
LossSpec = Union[Literal["cross_entropy", "mse"], LossFunction]


def _cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _mse(model: nn.Module, batch) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


# Functions, not lambdas made per call, so one loss is the same object at every checkpoint.
_NAMED_LOSSES: dict[str, LossFunction] = {"cross_entropy": _cross_entropy, "mse": _mse}


def resolve_loss(loss: LossSpec) -> LossFunction:
    """The ``(model, batch) -> scalar`` function for a loss name or callable.

    A callable returns the batch's mean loss per sample, like the named losses: the initial loss
    averages batches of its own sizes, and ``nbeta`` scales a per-sample loss.
    """
    if callable(loss):
        return loss
    if loss in _NAMED_LOSSES:
        return _NAMED_LOSSES[loss]
    raise SettingsError(f"unknown loss {loss!r}; use 'cross_entropy', 'mse', or a callable (model, batch) -> loss")
