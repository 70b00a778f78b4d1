"""``JobSpec``: what every job of one ``estimate_all`` call shares (its own module, so that
``llcv.scopes``, which plans a run's jobs, and ``llcv.estimation``, which runs them, both import it
without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from torch.utils.data import Dataset

from llcv.sampling import LossSpec
from llcv.sampling import PrecisionChoice
from llcv.results import DEFAULT_LOSS
from llcv.settings import SamplerSettings


@dataclass(frozen=True)
class JobSpec:
    """What every job of one ``estimate_all`` call shares; sent once to each device or Ray worker."""

    settings: SamplerSettings
    settings_hash: str
    loss: LossSpec = DEFAULT_LOSS
    device: str = "auto"
    model_factory: Callable[[], nn.Module] | None = None
    dataset: Dataset | str | None = None
    model_name: str | None = None
    stem: str | None = None
    data_dir: str | None = None
    # Load llcv checkpoints saved with another version of their model (load_checkpoint's keyword).
    allow_version_mismatch: bool = False
    executor: str = "local"
    # With precision "auto": the run's precision, from its earlier records or decided once before
    # several device workers start, so every checkpoint of a run samples alike; None: each
    # process decides at its first estimate.
    precision: PrecisionChoice | None = None
