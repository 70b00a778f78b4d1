"""BatchNorm running statistics that belong to the weights being sampled.

A checkpoint saved early in training carries running means and variances that lag its weights
(an exponential average with momentum 0.1 over batches seen at weights that have since moved
far, at learning rates such as 0.1). In eval mode such a checkpoint is not a minimum of the
function the chains sample: they fall to much lower loss and the LLC comes out hugely negative,
exactly where developmental transitions are looked for. Recomputing the statistics for the
checkpoint's own weights, as ``torch.optim.swa_utils.update_bn`` does after weight averaging,
makes the sampled function the one the weights define.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class BatchNormProvenance:
    """How a working copy's BatchNorm layers normalise (``LLCResult.batchnorm_statistics``)."""

    statistics: Literal["recomputed", "checkpoint", "batch", "none"]
    samples: int = 0


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics (the ones eval mode uses)."""
    return [
        module
        for module in model.modules()
        if isinstance(module, _BatchNorm) and module.track_running_stats and module.running_mean is not None
    ]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has any BatchNorm layer, with running statistics or without."""
    return any(isinstance(module, _BatchNorm) for module in model.modules())


def use_batch_statistics(model: nn.Module) -> None:
    """Put ``model`` in eval mode except its BatchNorm layers, which then normalise every batch
    with that batch's own statistics and leave their running statistics untouched.

    This is the function training descended: the statistics follow the weights as they move, so
    BatchNorm's symmetries (a channel's incoming weights can be rescaled, its mean shifted,
    without changing the output) stay symmetries. Frozen running statistics break them, and a
    checkpoint far from a minimum (early in training at a high learning rate) then finds steep
    descents along them. Unlike ``model.train()`` (``bn_mode="train"``, devinterp's behaviour),
    dropout stays off and no buffer is written, so the loss depends on the weights and the batch
    alone and batched chains (``torch.func.vmap``) can run.
    """
    model.eval()
    for layer in batchnorm_layers(model):
        layer.train()
        layer.track_running_stats = False


@torch.no_grad()
def recompute_batchnorm_statistics(
    model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, object], object], autocast: bool = False
) -> int:
    """Replace every BatchNorm layer's running statistics by their average over ``batches``.

    Each layer's running mean and variance are reset and re-estimated as the cumulative average
    over the batches (``momentum=None``), in train mode and without gradients, as
    ``torch.optim.swa_utils.update_bn`` does. ``model`` is changed in place (pass a copy); its
    modules' train/eval flags and the layers' momenta are restored afterwards. A batch of one
    sample after the first is skipped, since a train-mode BatchNorm over a 1x1 map cannot
    normalise a single value.

    Args:
        model: the model whose statistics to recompute; nothing happens without BatchNorm layers.
        batches: the data, e.g. a seeded subset of the training data in minibatches.
        forward: ``(model, batch) -> anything`` that runs the model on a batch (the loss function will do).
        autocast: run the forward passes under bf16 autocast, as the chains do.

    Returns:
        The number of samples the statistics were computed on; 0 when the model has no
        BatchNorm layer with running statistics.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    modes = {module: module.training for module in model.modules()}
    momenta = {layer: layer.momentum for layer in layers}
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    seen = 0
    try:
        for batch in batches:
            size = _batch_size(batch)
            if size < 2 and seen:
                continue
            device_type = _device_type(batch)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                forward(model, batch)
            seen += size
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, training in modes.items():
            module.train(training)
    return seen


def _batch_size(batch) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first) if isinstance(first, torch.Tensor) and first.dim() else 1


def _device_type(batch) -> str:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return first.device.type if isinstance(first, torch.Tensor) else "cpu"
