"""What ``calibrate_auto`` returns: the recommendation, the pick's sensitivity to each setting,
and what the search spent, within its budget (docs/calibration.md, docs/formats.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from llcv.calibration.trials import Trial
from llcv.settings import DEFAULT_BUDGET_STEPS, SamplerSettings

# A pick whose estimate moves by more than this share beyond two standard errors is flagged.
SETTINGS_DEPENDENT = 0.1


class Budget(BaseModel):
    """How much a search may spend: gradient evaluations (steps x chains) and/or seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain_steps: int | None = DEFAULT_BUDGET_STEPS
    seconds: float | None = None


class Sensitivity(BaseModel):
    """How far the pick's estimate moves when one setting changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    knob: Literal["gamma", "epsilon", "batch_size"]
    value: float
    changed_to: float
    llc: float | None
    llc_changed: float | None
    move: float | None  # llc_changed - llc
    move_se: float | None
    relative: float | None  # move / llc
    settings_dependent: bool | None  # None: not measured (the changed trial is unhealthy, too short for gamma's move, or was not run)
    note: str = ""
    # The move is a lower bound: the changed trial had not relaxed, and the move it had reached
    # already made the pick settings-dependent (calibrations before llcv 0.17 have none).
    at_least: bool = False

    @property
    def unresolved(self) -> bool:
        """Whether the move was measured too noisily to call the knob harmless: not
        settings-dependent, yet two standard errors of the move exceed ``SETTINGS_DEPENDENT`` of the
        LLC, so a settings-dependent move could hide in its noise. Derived from the stored numbers,
        so calibrations written before this verdict existed get it too."""
        if self.settings_dependent is not False or self.move_se is None or self.llc is None:
            return False
        return 2 * self.move_se > SETTINGS_DEPENDENT * abs(self.llc)


class Spent(BaseModel):
    """What a search cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int
    chain_steps: int
    seconds: float
    budget: Budget
    exhausted: bool


class AutoCalibration(BaseModel):
    """The outcome of ``calibrate_auto``: the recommended settings, why, and everything measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recommended: SamplerSettings | None
    reason: str
    nbeta: float
    stiffness: float
    trials: list[Trial]
    pick: int | None  # index into trials
    sensitivity: list[Sensitivity]
    spent: Spent
    checkpoint: str | None = None
    fingerprint: dict[str, Any] = {}

    @property
    def settings_dependent(self) -> list[str]:
        """The knobs that move the pick's estimate by more than ``SETTINGS_DEPENDENT`` beyond two standard errors."""
        return [entry.knob for entry in self.sensitivity if entry.settings_dependent]

    @property
    def unresolved(self) -> list[str]:
        """The knobs whose move was measured too noisily to rule out a settings-dependent one."""
        return [entry.knob for entry in self.sensitivity if entry.unresolved]

    @property
    def not_measured(self) -> list[str]:
        """The knobs whose move was not measured (each entry's ``note`` says why)."""
        return [entry.knob for entry in self.sensitivity if entry.settings_dependent is None]
