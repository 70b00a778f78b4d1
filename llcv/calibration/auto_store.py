"""The store of an automatic calibration, ``calibration.json`` (docs/formats.md, "Calibration"):
its format name and version, its content, and the fingerprint a stored search must match for
``calibrate_auto`` to resume it.

Apart from ``llcv.calibration.auto``, which runs the search and keeps this file as it goes, so
that the search module holds its rules and this one the file they are kept in.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from llcv.calibration.outcome import AutoCalibration
from llcv.fileio import finite_or_none
from llcv.sampling import LossSpec, SamplingData
from llcv.settings import SamplerSettings

AUTO_FORMAT = "llcv-calibrate-auto"
AUTO_FORMAT_VERSION = 1


def payload_dict(result: AutoCalibration, complete: bool = True) -> dict[str, Any]:
    """The content of ``calibration.json`` (docs/formats.md)."""
    return finite_or_none(
        {"format": AUTO_FORMAT, "format_version": AUTO_FORMAT_VERSION, "complete": complete, **result.model_dump(mode="json")}
    )


def search_fingerprint(model: nn.Module, data: SamplingData, loss: LossSpec, base: SamplerSettings) -> dict[str, Any]:
    """What a stored search must match to be resumed: the model's weights, the samples, the loss and
    the settings the search does not decide (a changed one starts the search afresh)."""
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    loss_name = loss if isinstance(loss, str) else f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', repr(loss))}"
    return {
        "model_sha256": digest.hexdigest(),
        "num_samples": data.num_samples,
        "loss": loss_name,
        "base": base.model_dump(mode="json", exclude={"epsilon", "gamma", "num_draws", "num_burnin_steps"}),
        "version": AUTO_FORMAT_VERSION,
    }
