"""Self-test: estimate models with known learning coefficients and report how close llcv gets.

``llcv selftest`` runs this on the user's own machine and device, so they can trust the
estimator where they run it. The cases come from ``llcv.known_models`` (the hand-listed suite)
or ``llcv.known_families`` (suites generated from a seed); :func:`family_summary` reads the
errors as a distribution per family.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llcv.calibration import Budget, calibrate_auto
from llcv.devices import resolve_device
from llcv.errors import EstimationError, SettingsError
from llcv.known_families import family_cases, parse_families, quick_case, scale_cases
from llcv.known_models import KnownCase, known_cases
from llcv.sampling import resolve_loss
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
    family: str = ""  # the case's family ("dln", "rrr", ...); "" where unknown


@dataclass(frozen=True)
class FamilyErrors:
    """The distribution of one family's absolute relative errors (the verdicts' estimates).

    ``count`` counts every case, ``no_estimate`` those with no healthy chain; the statistics are
    over the others (None where there are none). ``unhealthy``: calibrated estimates (``--auto``)
    whose health failed; their errors enter the statistics, but never ``within_tolerance``, since
    the tool does not vouch for them. ``p90`` interpolates linearly between order
    statistics (numpy's default). ``worst_signed`` is the error of largest size with its sign. ``seconds``:
    what the verdicts' estimates cost together (with ``--auto``, calibrations included).
    """

    family: str
    count: int
    within_tolerance: int
    no_estimate: int
    median: float | None
    p90: float | None
    worst: float | None
    worst_signed: float | None
    seconds: float = 0.0
    unhealthy: int = 0


@dataclass(frozen=True)
class AutoCheck:
    """How ``--auto`` calibrates each case: with which sampler, within which budget."""

    sampler: Literal["sgld", "rmsprop_sgld"] = SamplerSettings().sampler
    budget: Budget = Budget()
    batch_size: int | None = None  # None: full batches, as the stored settings use


@dataclass(frozen=True)
class AutoRow:
    """The same case with settings from ``calibrate_auto`` instead of its stored ones.

    ``seconds`` and ``chain_steps`` cover the calibration and the estimate together: what the
    calibrated number cost."""

    sampler: str
    epsilon: float | None
    gamma: float | None
    llc_mean: float | None
    standard_error: float | None
    relative_error: float | None
    passed: bool
    seconds: float
    chain_steps: int = 0
    settings_dependent: tuple[str, ...] = ()
    error: str | None = None
    unresolved: tuple[str, ...] = ()  # knobs whose move was too noisy to rule out a settings-dependent one
    not_measured: tuple[str, ...] = ()  # knobs whose move was not measured (an unhealthy or too short trial, or none)
    # What an exact sampler reads at the calibrated nbeta and gamma, where the case knows
    # (``KnownCase.localized_llc``): the estimate's distance from it is the sampler's error, its
    # distance from the truth the localization's.
    localized_llc: float | None = None
    healthy: bool | None = None  # the calibrated estimate's health (llcv.health)

    @property
    def unhealthy(self) -> bool:
        """Whether there is a calibrated estimate and its health failed: its number is shown, but
        the tool does not vouch for it."""
        return self.healthy is False and self.llc_mean is not None


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


def check_auto(
    case: KnownCase, device: str = "auto", precision: str = "fp32", reporter: Reporter = SILENT, check: AutoCheck = AutoCheck()
) -> AutoRow:
    """Calibrate the case with ``calibrate_auto`` (the case's nbeta; ``check``'s sampler, budget and
    batch size, full batches by default), then estimate it with the recommended settings."""
    started = time.perf_counter()
    size = len(case.dataset)
    batch_size = min(check.batch_size or size, size)
    base = SamplerSettings(batch_size=batch_size, num_samples=size, nbeta=case.nbeta, precision=precision, sampler=check.sampler)
    try:
        calibration = calibrate_auto(case.model, case.dataset, loss=case.loss, device=device, base=base, budget=check.budget, reporter=reporter)
    except EstimationError as error:
        return AutoRow(check.sampler, None, None, None, None, None, False, time.perf_counter() - started, error=str(error))
    settings = calibration.recommended
    result = estimate_llc(case.model, case.dataset, settings, loss=case.loss, device=device, reporter=reporter)
    # Judged on the tolerance even when quick: the search accepts a gamma whose halving moves the
    # LLC by no more than what its trials resolve (docs/calibration.md), a bias that the estimate's
    # own standard error, however small, does not bound.
    standard_error, relative_error, passed = _judge(case, result, quick=False)
    # An estimate the tool does not vouch for (its chains did not mix, drifted or diverged) passes
    # no target, however close it lands.
    passed = passed and result.healthy
    estimate_steps = settings.num_chains * (result.burnin_steps + settings.num_draws * settings.num_steps_bw_draws)
    return AutoRow(
        check.sampler, settings.epsilon, settings.gamma, result.llc_mean, standard_error, relative_error, passed,
        time.perf_counter() - started, calibration.spent.chain_steps + estimate_steps, tuple(calibration.settings_dependent),
        unresolved=tuple(calibration.unresolved), not_measured=tuple(calibration.not_measured),
        localized_llc=case.localized_llc(calibration.nbeta, settings.gamma) if case.localized_llc is not None else None,
        healthy=result.healthy,
    )  # fmt: skip


def check_reference(case: KnownCase, device: str = "auto", against: str = "devinterp") -> ReferenceRow:
    """The case through devinterp 1.3's own sampler at its stored settings (fp32, its own initial loss)."""
    settings = case_settings(case)
    # llcv's named losses are (model, batch) -> mean loss, devinterp's ``evaluate``: F.mse_loss, or
    # F.cross_entropy against the soft labels.
    evaluate = resolve_loss(case.loss)
    reference = devinterp_estimate(case.model, case.dataset, settings, evaluate, device=resolve_device(device))
    relative_error = (reference.llc_mean - case.true_llc) / case.true_llc
    return ReferenceRow(against, reference.llc_mean, reference.standard_error, relative_error, reference.seconds)


def check_case(
    case: KnownCase,
    quick: bool,
    device: str = "auto",
    precision: str = "fp32",
    reporter: Reporter = SILENT,
    auto: AutoCheck | None = None,
    against: str | None = None,
) -> SelftestRow:
    """Estimate one known case with its stored settings (and, with ``auto``, calibrated ones) and
    judge it; with ``against``, also through that reference implementation, for comparison only."""
    started = time.perf_counter()
    result = estimate_llc(case.model, case.dataset, case_settings(case, precision), loss=case.loss, device=device, reporter=reporter)
    seconds = time.perf_counter() - started
    mean, std = result.llc_mean, result.llc_std
    standard_error, relative_error, passed = _judge(case, result, quick)
    calibrated = check_auto(case, device, precision, reporter, auto) if auto is not None else None
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
        family=case.family,
    )


def selftest_cases(
    quick: bool = False, families: Sequence[str] | str | None = None, per_family: int = 8, seed: int = 0, scale: bool = False
) -> list[KnownCase]:
    """The cases a selftest runs: the hand-listed suite, or generated families and/or the scale cases.

    Raises:
        SettingsError: an unknown family, or ``per_family`` below 1.
    """
    if families is None and not scale:
        return known_cases(quick=quick)
    try:
        names = parse_families(families) if families is not None else ()
    except ValueError as error:
        raise SettingsError(f"--families: {error}") from None
    if per_family < 1:
        raise SettingsError(f"--per-family must be at least 1, got {per_family}")
    cases = [case for name in names for case in family_cases(name, per_family, seed)]
    if scale:
        cases += scale_cases(seed=seed)
    return [quick_case(case) for case in cases] if quick else cases


@dataclass(frozen=True)
class Suite:
    """Which known cases a selftest runs (``selftest_cases``): by default the hand-listed suite at full size."""

    quick: bool = False  # CI size; its goal is the truth within 3 standard errors
    families: Sequence[str] | str | None = None  # generated families instead (names, a comma-separated string, or "all")
    per_family: int = 8
    seed: int = 0  # what the generated cases are drawn from
    scale: bool = False  # add the deep linear networks of about 10^4 and 10^5 weights


def run_selftest(
    suite: Suite = Suite(),
    device: str = "auto",
    precision: str = "fp32",
    reporter: Reporter = SILENT,
    auto: AutoCheck | None = None,
    against: str | None = None,
) -> list[SelftestRow]:
    """Estimate every known case of ``suite``; full size by default, CI size with ``suite.quick``.

    The suite is the hand-listed one of ``llcv.known_models.known_cases`` unless ``suite.families``
    (names from ``llcv.known_families.FAMILIES``, a comma-separated string, or ``"all"``) asks
    for ``suite.per_family`` cases of each drawn from ``suite.seed``, or ``suite.scale`` adds the
    deep linear networks of about 10^4 and 10^5 weights (``llcv.known_families.scale_cases``).

    With ``auto`` each case is also calibrated by ``calibrate_auto`` (its sampler and budget) and
    estimated with those settings; its verdict is then the calibrated estimate's, and both are
    reported. With
    ``against="devinterp"`` each case also runs through devinterp 1.3's sampler at the stored
    settings, so both are shown side by side (time and error); it does not change the verdict.

    Raises:
        SettingsError: an unknown ``against`` (or its package is not installed), an unknown
            family, or ``per_family`` below 1; all before any sampling.
    """
    if against is not None and against not in REFERENCES:
        raise SettingsError(f"--against {against!r}: the reference implementations are {', '.join(REFERENCES)}")
    cases = selftest_cases(suite.quick, suite.families, suite.per_family, suite.seed, suite.scale)
    reporter.start("selftest", "Known cases", len(cases))
    rows = []
    try:
        for case in cases:
            rows.append(check_case(case, suite.quick, device, precision, reporter, auto=auto, against=against))
            reporter.advance("selftest", 1)
    finally:
        reporter.finish("selftest")
    return rows


def _judged_error(row: SelftestRow) -> float | None:
    return row.auto.relative_error if row.auto is not None else row.relative_error


def _percentile(ordered: list[float], fraction: float) -> float:
    # Linear interpolation between order statistics, numpy's default ("linear").
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def family_summary(rows: Sequence[SelftestRow], tolerance: float = FULL_SIZE_TOLERANCE) -> list[FamilyErrors]:
    """Per family, in order of first appearance: how many cases, how many within ``tolerance``,
    and the median, 90th percentile and worst of the absolute relative errors (the worst signed too).

    The error of a row is its verdict's: the calibrated estimate's where the row has one
    (``--auto``), the stored settings' otherwise.
    """
    groups: dict[str, list[SelftestRow]] = {}
    for row in rows:
        groups.setdefault(row.family or "other", []).append(row)
    summaries = []
    for family, members in groups.items():
        errors = [error for error in map(_judged_error, members) if error is not None]
        vouched = [error for row in members if (error := _judged_error(row)) is not None and not (row.auto and row.auto.unhealthy)]
        ordered = sorted(abs(error) for error in errors)
        worst_signed = max(errors, key=abs) if errors else None
        summaries.append(
            FamilyErrors(
                family=family,
                count=len(members),
                within_tolerance=sum(abs(error) <= tolerance for error in vouched),
                no_estimate=len(members) - len(errors),
                median=statistics.median(ordered) if ordered else None,
                p90=_percentile(ordered, 0.9) if ordered else None,
                worst=ordered[-1] if ordered else None,
                worst_signed=worst_signed,
                seconds=sum(row.auto.seconds if row.auto is not None else row.seconds for row in members),
                unhealthy=len(errors) - len(vouched),
            )
        )
    return summaries
