"""Device selection: ``auto`` means CUDA, then MPS, then CPU (docs/conventions.md)."""

from __future__ import annotations

import torch

from llcv.errors import SettingsError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for a ``--device`` value.

    Raises:
        SettingsError: the device was asked for explicitly but is not available here.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # "cuda:01", "tpu": torch's own message is a C++ one
        raise SettingsError(f"device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
        # torch keeps the index in 8 bits, so "cuda:128" comes back as cuda:-128
        if device.index is not None and not 0 <= device.index < torch.cuda.device_count():
            raise SettingsError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError(f"device {name!r} was asked for but MPS is not available here; use --device cpu")
    return device
