"""``JobSpec``: what every job of one ``estimate_all`` call shares (its own module, so that
``llcv.estimation.scopes``, which plans a run's jobs, and ``llcv.estimation``, which runs them, both import it
without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass

from llcv.sampling import LossSpec
from llcv.sampling import PrecisionChoice
from llcv.results import DEFAULT_LOSS
from llcv.settings import SamplerSettings
from llcv.targets import Target


@dataclass(frozen=True)
class JobSpec:
    """What every job of one ``estimate_all`` call shares; sent once to each device or Ray worker."""

    settings: SamplerSettings
    settings_hash: str
    loss: LossSpec = DEFAULT_LOSS
    device: str = "auto"
    target: Target = Target()  # what every checkpoint is loaded into and measured on; each job adds its checkpoint
    executor: str = "local"
    # With precision "auto": the run's precision, from its earlier records or decided once before
    # several device workers start, so every checkpoint of a run samples alike; None: each
    # process decides at its first estimate.
    precision: PrecisionChoice | None = None
