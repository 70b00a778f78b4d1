"""Self-test: estimate models with known learning coefficients and report how close llcv gets.

``llcv selftest`` runs this on the user's own machine and device, so they can trust the
estimator where they run it. The cases come from ``llcv.known_models``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch.nn.functional as F

from llcv.calibration import recommend_settings
from llcv.devices import resolve_device
from llcv.errors import EstimationError, SettingsError
from llcv.known_models import KnownCase, known_cases
from llcv.progress import SILENT, Reporter
from llcv.reference import devinterp_estimate
from llcv.sampling import estimate_llc
from llcv.settings import SamplerSettings

# What ``--against`` can compare with.
REFERENCES = ("devinterp",)

# Goals: full size within 15% of the truth; quick (CI) size, truth within 3 standard errors.
FULL_SIZE_TOLERANCE = 0.15
QUICK_STANDARD_ERRORS = 3.0


@dataclass(frozen=True)
class SelftestRow:
    """One known case: the truth, the estimate, and whether it met its goal."""

    name: str
    description: str
    true_llc: float
    llc_mean: float | None
    llc_std: float | None
    standard_error: float | None
    relative_error: float | None
    passed: bool
    seconds: float  # the estimate at the stored settings; the calibrated one's time is in ``auto``
    auto: "AutoRow | None" = None
    reference: "ReferenceRow | None" = None


@dataclass(frozen=True)
class AutoRow:
    """The same case with settings from ``recommend_settings`` instead of its stored ones."""

    epsilon: float | None
    gamma: float | None
    llc_mean: float | None
    standard_error: float | None
    relative_error: float | None
    passed: bool
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class ReferenceRow:
    """The same case through the reference implementation (devinterp 1.3) at the stored settings."""

    name: str
    llc_mean: float
    standard_error: float | None
    relative_error: float
    seconds: float


def case_settings(case: KnownCase, precision: str = "fp32") -> SamplerSettings:
    """The sampler settings a known case was calibrated with."""
    return SamplerSettings(
        epsilon=case.epsilon,
        gamma=case.gamma,
        nbeta=case.nbeta,
        num_chains=case.num_chains,
        num_draws=case.num_draws,
        num_burnin_steps=case.num_burnin_steps,
        batch_size=case.batch_size,
        precision=precision,
    )


def _judge(case: KnownCase, result, quick: bool) -> tuple[float | None, float | None, bool]:
    """The standard error over chains, the relative error, and whether the goal is met."""
    mean, std = result.llc_mean, result.llc_std
    healthy = sum(value is not None for value in result.llc_per_chain)
    standard_error = std / math.sqrt(healthy) if std is not None else None
    relative_error = (mean - case.true_llc) / case.true_llc if mean is not None else None
    if mean is None:
        passed = False
    elif quick:
        passed = abs(mean - case.true_llc) <= QUICK_STANDARD_ERRORS * (standard_error or 0.0)
    else:
        passed = abs(relative_error) <= FULL_SIZE_TOLERANCE
    return standard_error, relative_error, passed


def check_auto(case: KnownCase, quick: bool, device: str = "auto", precision: str = "fp32", reporter: Reporter = SILENT) -> AutoRow:
    """Calibrate the case with ``recommend_settings`` (full batches, the case's nbeta), then estimate it."""
    started = time.perf_counter()
    size = len(case.dataset)
    base = SamplerSettings(batch_size=size, num_samples=size, nbeta=case.nbeta, precision=precision)
    try:
        settings = recommend_settings(case.model, case.dataset, loss="mse", device=device, base=base, reporter=reporter)
    except EstimationError as error:
        return AutoRow(None, None, None, None, None, False, time.perf_counter() - started, error=str(error))
    result = estimate_llc(case.model, case.dataset, settings, loss="mse", device=device, reporter=reporter)
    standard_error, relative_error, passed = _judge(case, result, quick)
    return AutoRow(settings.epsilon, settings.gamma, result.llc_mean, standard_error, relative_error, passed, time.perf_counter() - started)


def check_reference(case: KnownCase, device: str = "auto", against: str = "devinterp") -> ReferenceRow:
    """The case through devinterp 1.3's own sampler at its stored settings (fp32, its own initial loss)."""
    settings = case_settings(case)
    reference = devinterp_estimate(case.model, case.dataset, settings, _mse, device=resolve_device(device))
    relative_error = (reference.llc_mean - case.true_llc) / case.true_llc
    return ReferenceRow(against, reference.llc_mean, reference.standard_error, relative_error, reference.seconds)


def _mse(model, batch):
    return F.mse_loss(model(batch[0]), batch[1])


def check_case(
    case: KnownCase,
    quick: bool,
    device: str = "auto",
    precision: str = "fp32",
    reporter: Reporter = SILENT,
    auto: bool = False,
    against: str | None = None,
) -> SelftestRow:
    """Estimate one known case with its stored settings (and, with ``auto``, calibrated ones) and
    judge it; with ``against``, also through that reference implementation, for comparison only."""
    started = time.perf_counter()
    result = estimate_llc(case.model, case.dataset, case_settings(case, precision), loss="mse", device=device, reporter=reporter)
    seconds = time.perf_counter() - started
    mean, std = result.llc_mean, result.llc_std
    standard_error, relative_error, passed = _judge(case, result, quick)
    calibrated = check_auto(case, quick, device, precision, reporter) if auto else None
    return SelftestRow(
        name=case.name,
        description=case.description,
        true_llc=case.true_llc,
        llc_mean=mean,
        llc_std=std,
        standard_error=standard_error,
        relative_error=relative_error,
        passed=passed if calibrated is None else calibrated.passed,
        seconds=seconds,
        auto=calibrated,
        reference=check_reference(case, device, against) if against else None,
    )


def run_selftest(
    quick: bool = False,
    device: str = "auto",
    precision: str = "fp32",
    reporter: Reporter = SILENT,
    auto: bool = False,
    against: str | None = None,
) -> list[SelftestRow]:
    """Estimate every known case; full size by default, CI size with ``quick``.

    With ``auto`` each case is also calibrated by ``recommend_settings`` and estimated with those
    settings; its verdict is then the calibrated estimate's, and both are reported. With
    ``against="devinterp"`` each case also runs through devinterp 1.3's sampler at the stored
    settings, so both are shown side by side (time and error); it does not change the verdict.

    Raises:
        SettingsError: an unknown ``against``, or its package is not installed.
    """
    if against is not None and against not in REFERENCES:
        raise SettingsError(f"--against {against!r}: the reference implementations are {', '.join(REFERENCES)}")
    cases = known_cases(quick=quick)
    reporter.start("selftest", "Known cases", len(cases))
    rows = []
    try:
        for case in cases:
            rows.append(check_case(case, quick, device, precision, reporter, auto=auto, against=against))
            reporter.advance("selftest", 1)
    finally:
        reporter.finish("selftest")
    return rows
