"""``calibrate curve`` and ``calibrate chains``: one chain's LLC over draws, judged for peaks and
drift, and several chains' agreement."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llcv import sampling
from llcv.calibration.rule import RULE_DEFAULTS
from llcv.calibration.sweep import FINAL_FRACTION, burnin_words, figure_title
from llcv.calibration.trials import trace_array
from llcv.diagnostics import trace_drift
from llcv.fileio import atomic_write_json, finite_or_none
from llcv.sampling import LLCResult
from llcv.sampling import LossSpec
from llcv.calibration.figures import plot_chains, plot_curve
from llcv.figure_files import save_figure
from llcv.progress import SILENT, Reporter
from llcv.sampling import SamplingData
from llcv.settings import SamplerSettings

# A per-draw LLC more than this many robust standard deviations above the median is a peak.
PEAK_THRESHOLD = 6.0
# `llcv calibrate chains` runs this many chains unless the config or a flag says otherwise.
CHAINS_DEFAULT_NUM_CHAINS = 5


class CurveResult(BaseModel):
    """One chain's LLC over SGLD steps, and a verdict on whether its settings are usable.

    Attributes:
        burnin_llc: ``nbeta * (loss - init_loss)`` at each burn-in step.
        llc: the same at each draw; ``running_llc`` is its running mean.
        draw_steps: the SGLD step (1-based, burn-in included) of each draw.
        verdict: ``stable``, ``peaks`` (a per-draw LLC far above the rest), ``drift`` (the
            running LLC still moving over the second half) or ``diverged``.
        verdict_reason: the numbers behind the verdict.
        peak_score: the largest per-draw LLC, in robust standard deviations (1.4826 MAD)
            above the median; ``peak_draw`` is where it happened (0-based).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str | None
    settings: SamplerSettings
    init_loss: float | None
    nbeta: float
    burnin_llc: list[float | None]
    llc: list[float | None]
    running_llc: list[float | None]
    draw_steps: list[int]
    verdict: Literal["stable", "peaks", "drift", "diverged"]
    verdict_reason: str
    llc_mean: float | None
    llc_final: float | None
    trace_drift: float | None
    peak_score: float | None
    peak_draw: int | None
    negative_fraction: float | None
    mala_acceptance: float | None
    max_trace_drift: float
    peak_threshold: float

    def to_dict(self) -> dict[str, Any]:
        """The content of ``curve.json`` (docs/formats.md)."""
        return finite_or_none(self.model_dump(mode="json"))


def calibrate_curve(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    settings: SamplerSettings,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    *,
    max_trace_drift: float = RULE_DEFAULTS.max_trace_drift,
    checkpoint: str | None = None,
    reporter: Reporter = SILENT,
) -> CurveResult:
    """Run one chain with ``settings`` (its ``num_chains`` is ignored) and judge its LLC curve.

    The verdict is ``diverged`` if the chain diverged, else ``peaks`` if ``peak_score`` exceeds
    ``PEAK_THRESHOLD``, else ``drift`` if ``|trace_drift|`` exceeds ``max_trace_drift``, else
    ``stable`` (``curve_from_result`` judges a finished run with other thresholds).
    """
    settings = settings.model_copy(update={"num_chains": 1})
    result = sampling.estimate_llc(model, data, settings, loss=loss, device=device, reporter=reporter)
    return curve_from_result(result, settings, max_trace_drift=max_trace_drift, checkpoint=checkpoint)


def curve_from_result(
    result: LLCResult,
    settings: SamplerSettings,
    *,
    max_trace_drift: float = RULE_DEFAULTS.max_trace_drift,
    peak_threshold: float = PEAK_THRESHOLD,
    checkpoint: str | None = None,
) -> CurveResult:
    """The curve and verdict of the first chain of ``result``."""
    llc = trace_array(result.llc_trace)[0]
    init_loss = result.init_loss if result.init_loss is not None else float("nan")
    burnin = result.nbeta * (trace_array(result.burnin_loss_trace)[0] - init_loss)
    finite = llc[np.isfinite(llc)]
    running = np.cumsum(llc) / np.arange(1, len(llc) + 1)
    drift = trace_drift(llc) if np.isfinite(llc).all() else None
    peak_score, peak_draw = _peak(llc)
    tail = finite[-max(1, math.ceil(FINAL_FRACTION * len(finite))) :] if len(finite) else finite
    every = settings.num_steps_bw_draws
    draw_steps = [len(burnin) + (draw + 1) * every for draw in range(len(llc))]  # burnin: one value per burn-in step

    drift_text = "undefined" if drift is None else f"{drift:+.1%}"
    peak_text = "undefined" if peak_score is None else f"{peak_score:.1f}"
    numbers = (
        f"largest per-draw LLC {peak_text} robust standard deviations above the median (limit {peak_threshold:g})"
        + ("" if peak_draw is None else f" at draw {peak_draw}")
        + f"; running LLC changed by {drift_text} over the second half (limit {max_trace_drift:.0%})"
    )
    diverged = bool(result.diagnostics.diverged_chains or result.diagnostics.nonfinite or result.llc_mean is None)
    if diverged:
        verdict, reason = "diverged", "the chain diverged (non-finite loss or a per-draw LLC above the bound); lower epsilon or raise gamma"
    elif peak_score is not None and peak_score > peak_threshold:
        verdict, reason = "peaks", numbers + "; lower epsilon or raise gamma"
    elif drift is None or abs(drift) > max_trace_drift:
        verdict, reason = "drift", numbers + "; take more draws or burn-in steps, or raise epsilon"
    else:
        verdict, reason = "stable", numbers
    return CurveResult(
        checkpoint=checkpoint,
        settings=settings,
        init_loss=result.init_loss,
        nbeta=result.nbeta,
        burnin_llc=finite_or_none(burnin.tolist()),
        llc=finite_or_none(llc.tolist()),
        running_llc=finite_or_none(running.tolist()),
        draw_steps=draw_steps,
        verdict=verdict,
        verdict_reason=reason,
        llc_mean=result.llc_mean,
        llc_final=float(tail.mean()) if len(tail) else None,
        trace_drift=drift,
        peak_score=peak_score,
        peak_draw=peak_draw,
        negative_fraction=float((finite < 0).mean()) if len(finite) else None,
        mala_acceptance=result.mala_acceptance,
        max_trace_drift=max_trace_drift,
        peak_threshold=peak_threshold,
    )


def _peak(trace: np.ndarray) -> tuple[float | None, int | None]:
    """The largest value in robust standard deviations above the median, and where it is."""
    if len(trace) < 4 or not np.isfinite(trace).all():
        return None, None
    median = float(np.median(trace))
    spread = 1.4826 * float(np.median(np.abs(trace - median))) or float(np.std(trace))
    draw = int(np.argmax(trace))
    if spread == 0:
        return 0.0, draw
    return float((trace[draw] - median) / spread), draw


def save_curve(curve: CurveResult, directory: Path, fmt: str = "png") -> list[Path]:
    """Write ``curve.json`` and ``curve.<fmt>``; returns the files written."""
    directory = Path(directory)
    title = figure_title("LLC curve", curve.checkpoint, curve.settings, nbeta=curve.nbeta, burnin=burnin_words(curve.settings, len(curve.burnin_llc)))
    return [
        atomic_write_json(directory / "curve.json", curve.to_dict()),
        save_figure(plot_curve(curve, title), directory / f"curve.{fmt}"),
    ]


class ChainsResult(BaseModel):
    """Several chains for one setting: their running LLC, their agreement, and the estimate.

    Attributes:
        running_llc: chains x draws, each chain's running mean of the per-draw LLC.
        running_mean, running_std: across the healthy chains at each draw (std with ddof 1).
        result: the full estimate (docs/formats.md, LLC result).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str | None
    llc_mean: float | None
    llc_std: float | None
    r_hat: float | None
    ess: float | None
    mala_acceptance: float | None
    diverged_chains: int
    running_llc: list[list[float | None]]
    running_mean: list[float | None]
    running_std: list[float | None]
    result: LLCResult

    @property
    def settings(self) -> SamplerSettings:
        """The sampler settings of the chains."""
        return SamplerSettings.model_validate(self.result.settings)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``chains.json`` (docs/formats.md)."""
        payload = self.model_dump(mode="json", exclude={"result"})
        return finite_or_none({**payload, "result": self.result.to_dict()})


def calibrate_chains(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    settings: SamplerSettings,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    *,
    checkpoint: str | None = None,
    reporter: Reporter = SILENT,
) -> ChainsResult:
    """Run ``settings.num_chains`` chains and summarise how well they agree."""
    result = sampling.estimate_llc(model, data, settings, loss=loss, device=device, reporter=reporter)
    return chains_from_result(result, checkpoint=checkpoint)


def chains_from_result(result: LLCResult, *, checkpoint: str | None = None) -> ChainsResult:
    """The running traces and their band, from an estimate."""
    llc = trace_array(result.llc_trace)
    running = np.cumsum(llc, axis=1) / np.arange(1, llc.shape[1] + 1)
    healthy = running[[value is not None for value in result.llc_per_chain]]
    with np.errstate(all="ignore"):
        mean = healthy.mean(axis=0) if len(healthy) else np.full(llc.shape[1], np.nan)
        std = healthy.std(axis=0, ddof=1) if len(healthy) > 1 else np.full(llc.shape[1], np.nan)
    return ChainsResult(
        checkpoint=checkpoint,
        llc_mean=result.llc_mean,
        llc_std=result.llc_std,
        r_hat=result.diagnostics.r_hat,
        ess=result.diagnostics.ess,
        mala_acceptance=result.mala_acceptance,
        diverged_chains=result.diagnostics.diverged_chains,
        running_llc=finite_or_none(running.tolist()),
        running_mean=finite_or_none(mean.tolist()),
        running_std=finite_or_none(std.tolist()),
        result=result,
    )


def save_chains(chains: ChainsResult, directory: Path, fmt: str = "png") -> list[Path]:
    """Write ``chains.json`` and ``chains.<fmt>``; returns the files written."""
    directory = Path(directory)
    result = chains.result
    title = figure_title("LLC chains", chains.checkpoint, chains.settings, nbeta=result.nbeta, burnin=burnin_words(chains.settings, result.burnin_steps))
    return [
        atomic_write_json(directory / "chains.json", chains.to_dict()),
        save_figure(plot_chains(chains, title), directory / f"chains.{fmt}"),
    ]
