"""The posterior's stiffest curvature at a checkpoint: where the automatic calibration starts.

SGLD is stable for ``epsilon * (nbeta * h + gamma) < 2`` along a direction of loss curvature ``h``,
so the largest Hessian eigenvalue sets the scale of the first epsilon and gamma the search tries
(``llcv.calibration.auto``); the search itself then decides by measurement.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llcv.sampling import LossSpec, resolve_loss
from llcv.sampling import working_copy
from llcv.sampling import SamplingData
from llcv.settings import SamplerSettings


def top_hessian_eigenvalue(
    model: nn.Module, data: SamplingData, loss: LossSpec, settings: SamplerSettings, iterations: int = 20
) -> float:
    """The largest |eigenvalue| of the loss Hessian at the model's weights, on one minibatch.

    Power iteration with Hessian-vector products, on the chains' working copy of the model
    (their BatchNorm mode and statistics). Falls back to 1.0 where the model does not support
    double backward or the value is not a positive finite number.
    """
    work, _ = working_copy(model, data, resolve_loss(loss), settings)
    parameters = [parameter for parameter in work.parameters() if parameter.requires_grad]
    batch = next(data.batches(settings.seed))
    generator = torch.Generator().manual_seed(settings.seed)
    try:
        gradients = torch.autograd.grad(resolve_loss(loss)(work, batch), parameters, create_graph=True)
        vector = [torch.randn(parameter.shape, generator=generator).to(parameter.device) for parameter in parameters]
        eigenvalue = 0.0
        for _ in range(iterations):
            norm = torch.sqrt(sum((part**2).sum() for part in vector))
            vector = [part / norm for part in vector]
            product = torch.autograd.grad(gradients, parameters, grad_outputs=vector, retain_graph=True)
            eigenvalue = float(sum((p * v).sum() for p, v in zip(product, vector)))
            vector = [part.detach() for part in product]
    except RuntimeError:
        return 1.0
    eigenvalue = abs(eigenvalue)
    return eigenvalue if math.isfinite(eigenvalue) and eigenvalue > 0 else 1.0
