"""What an estimate returns: ``LLCResult`` and its ``LLCDiagnostics``, and how the chains' loss
traces are summarised into one (the LLC, its diagnostics, health warnings and provenance).

Separate from ``llcv.sampling`` because the result is a data type: whoever reads or rebuilds one
(calibration, ``LLCResult.from_dict``) needs it without the chain machinery.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from llcv.sampling.batchnorm import BatchNormProvenance
from llcv.diagnostics import effective_sample_size, split_r_hat
from llcv.fileio import finite_or_none
from llcv.health import CHECKS_BY_NAME, Evidence, HealthFailure, HealthThresholds, failed_checks, trace_evidence
from llcv.settings import SamplerSettings
from llcv.version import __version__

if TYPE_CHECKING:
    from llcv.sampling.chains import _GroupTraces
    from llcv.sampling.execution import _ExecutionPlan


NbetaRule = Literal["data", "batch", "set"]
BurninRule = Literal["auto", "auto-capped", "set"]


@dataclass(frozen=True)
class BurnIn:
    """The burn-in an estimate runs, and how it was chosen (``resolve_burnin``)."""

    steps: int
    rule: BurninRule
    # "auto" and "auto-capped": what the automatic burn-in aims for, the chains' relaxation from
    # the checkpoint (llcv.relaxation.relaxation_steps; infinite at gamma 0). None when set.
    relaxation_steps: int | float | None = None


@dataclass(frozen=True)
class InitialLoss:
    """The loss at the checkpoint, ``L(w*)``, as the estimate measured it."""

    value: float
    batch_spread: float  # standard deviation of its losses over the chains' minibatches (0 for a single batch)
    # Its standard error as an estimate of the loss over all the sampled data: 0 when every sample
    # counted, None when one minibatch of a larger set gives no spread to judge it by.
    standard_error: float | None


class LLCDiagnostics(BaseModel):
    """How far to trust an estimate."""

    model_config = ConfigDict(extra="forbid")

    r_hat: float | None = None
    ess: float | None = None
    llc_mcse: float | None = None  # Monte Carlo standard error of llc_mean, from the ESS
    # The standard error of llc_mean: the larger of llc_mcse and the chains' spread, with
    # nbeta * init_loss_se (llcv.health.trace_evidence); None in results before llcv 0.9.
    llc_se: float | None = None
    drift_z: float | None = None  # Geweke: late minus early draws' mean LLC, in standard errors
    negative_chains: float | None = None  # share of healthy chains whose mean lies significantly below 0
    diverged_chains: int = 0
    nonfinite: bool = False
    warnings: list[str] = []


class LLCResult(BaseModel):
    """An LLC estimate with its traces, diagnostics and provenance (docs/formats.md)."""

    model_config = ConfigDict(extra="forbid")

    llc_mean: float | None
    llc_std: float | None
    llc_per_chain: list[float | None]
    loss_trace: list[list[float | None]]
    burnin_loss_trace: list[list[float | None]]
    llc_trace: list[list[float | None]]
    init_loss: float | None
    # init_loss's standard error as an estimate of the loss over all sampled data: 0 when it
    # counted every sample, None when unknown (a subset of one minibatch, or results before llcv 0.9).
    init_loss_se: float | None = None
    nbeta: float
    # How nbeta was chosen (SamplerSettings.nbeta): "data", n / ln(n) of the sampled data (a class
    # scope's: of the whole model's data); "batch", devinterp's batch_size / ln(batch_size); "set",
    # a number in the settings. None in results written before llcv 0.10.
    nbeta_rule: Literal["data", "batch", "set"] | None = None
    # The burn-in steps each chain ran, and how they were chosen (SamplerSettings.num_burnin_steps):
    # "auto", until the chains had relaxed from the checkpoint, 2 / (epsilon * gamma) steps;
    # "auto-capped", the automatic burn-in cut short by its cap (the estimate is then unhealthy);
    # "set", a number in the settings. None in results written before llcv 0.10.
    burnin_steps: int | None = None
    burnin_rule: Literal["auto", "auto-capped", "set"] | None = None
    # How eval-mode BatchNorm layers were normalised: "recomputed" for the checkpoint's weights on
    # ``batchnorm_samples`` samples, the "checkpoint"'s saved statistics, each "batch"'s own (train
    # mode), or "none" (no BatchNorm layer). None in results written before llcv 0.4.
    batchnorm_statistics: Literal["recomputed", "checkpoint", "batch", "none"] | None = None
    batchnorm_samples: int = 0
    mala_acceptance: float | None = None
    mala_acceptance_per_chain: list[float | None] | None = None
    diagnostics: LLCDiagnostics
    # Whether the number can be read at face value, and why not (llcv.health); None in results
    # written before llcv 0.4. health_failures holds the same failed checks, each in every form
    # its readers show (its sentence is the health_reasons entry); empty in results before llcv 0.12.
    healthy: bool | None = None
    health_reasons: list[str] = []
    health_failures: list[HealthFailure] = []
    settings: dict[str, Any]
    num_parameters: int
    num_samples_used: int
    chain_execution: Literal["batched", "sequential"]
    # What the chains ran in (``settings.precision`` may say "auto") and how that was chosen
    # (llcv.sampling.precision.PrecisionChoice); None in results written before llcv 0.5.
    precision: Literal["fp32", "bf16"] | None = None
    precision_choice: dict[str, Any] | None = None
    elapsed_seconds: float
    device: str
    num_threads: int
    versions: dict[str, str | None]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict; non-finite numbers become None."""
        return finite_or_none(self.model_dump(mode="python"))

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "LLCResult":
        """Rebuild a result from ``to_dict()`` output (or its JSON)."""
        return cls.model_validate(payload)


@dataclass(frozen=True)
class _EstimateSetup:
    """What an estimate resolved before its chains ran, which its result reports beside the traces."""

    settings: SamplerSettings  # as asked for ("auto" burn-in, "data" nbeta)
    nbeta: float
    nbeta_rule: NbetaRule
    burnin: BurnIn
    initial_loss: InitialLoss
    divergence_bound: float  # the per-draw LLC above which a chain counts as diverged
    num_parameters: int
    num_samples: int
    device: torch.device
    plan: _ExecutionPlan
    normalisation: BatchNormProvenance


def _summarise(traces: list[_GroupTraces], setup: _EstimateSetup, elapsed: float) -> LLCResult:
    """The estimate from its chains' loss traces: the LLC, its diagnostics, health and provenance."""
    losses, burnin_losses, diverged = _pooled_losses(traces)
    initial_loss, nbeta = setup.initial_loss, setup.nbeta
    llc_trace = nbeta * (losses - initial_loss.value)
    per_chain = [None if bad else float(trace.mean()) for bad, trace in zip(diverged, llc_trace)]
    healthy = [value for value in per_chain if value is not None]
    llc_mean = float(np.mean(healthy)) if healthy else None
    mala_mean, mala_per_chain = _mala_acceptance(traces, diverged) if setup.settings.mala else (None, None)
    diagnostics = _diagnostics(losses, llc_trace, diverged, setup)
    failed = failed_checks(result_evidence(diagnostics, len(per_chain), llc_mean, mala_mean, setup.burnin), HealthThresholds())
    diagnostics.warnings = _warnings(failed, setup.divergence_bound)
    return LLCResult(
        llc_mean=llc_mean,
        llc_std=float(np.std(healthy, ddof=1)) if len(healthy) > 1 else None,
        llc_per_chain=per_chain,
        loss_trace=losses.tolist(),
        burnin_loss_trace=burnin_losses.tolist(),
        llc_trace=llc_trace.tolist(),
        init_loss=initial_loss.value,
        init_loss_se=initial_loss.standard_error,
        nbeta=nbeta,
        nbeta_rule=setup.nbeta_rule,
        burnin_steps=setup.burnin.steps,
        burnin_rule=setup.burnin.rule,
        batchnorm_statistics=setup.normalisation.statistics,
        batchnorm_samples=setup.normalisation.samples,
        mala_acceptance=mala_mean,
        mala_acceptance_per_chain=mala_per_chain,
        diagnostics=diagnostics,
        healthy=not failed,
        health_reasons=[failure.sentence for failure in failed],
        health_failures=failed,
        settings=setup.settings.model_dump(mode="json"),
        num_parameters=setup.num_parameters,
        num_samples_used=setup.num_samples,
        chain_execution="batched" if setup.plan.batched else "sequential",
        precision=setup.plan.precision.precision,
        precision_choice=setup.plan.precision.provenance(),
        elapsed_seconds=elapsed,
        device=str(setup.device),
        num_threads=torch.get_num_threads(),
        versions=_versions(),
    )


def _pooled_losses(traces: list[_GroupTraces]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every chain's draws' and burn-in's losses (chains x steps) and whether it diverged (chains)."""
    losses = torch.cat([group.losses for group in traces]).cpu().double().numpy()
    burnin_losses = torch.cat([group.burnin_losses for group in traces]).cpu().double().numpy()
    diverged = torch.cat([group.diverged for group in traces]).cpu().numpy()
    # A diverged chain stops counting from the check that caught it; its later values are noise.
    losses[diverged] = np.where(np.isfinite(losses[diverged]), losses[diverged], np.nan)
    return losses, burnin_losses, diverged


def _mala_acceptance(traces: list[_GroupTraces], diverged: np.ndarray) -> tuple[float | None, list[float | None]]:
    """The mean MALA acceptance over the chains that did not diverge, and each chain's (None where undefined)."""
    mala = torch.cat([group.mala for group in traces]).cpu().double().numpy()
    per_chain = [None if bad or not np.isfinite(row).any() else float(np.nanmean(row)) for bad, row in zip(diverged, mala)]
    defined = [value for value in per_chain if value is not None]
    return (float(np.mean(defined)) if defined else None), per_chain


def _diagnostics(losses: np.ndarray, llc_trace: np.ndarray, diverged: np.ndarray, setup: _EstimateSetup) -> LLCDiagnostics:
    """Convergence and error of the chains that did not diverge (warnings are added once judged)."""
    initial_loss = setup.initial_loss
    init_loss_error = None if initial_loss.standard_error is None else setup.nbeta * initial_loss.standard_error
    healthy_losses = losses[~diverged]
    return LLCDiagnostics(
        r_hat=split_r_hat(healthy_losses),
        ess=effective_sample_size(healthy_losses) if len(healthy_losses) else None,
        **trace_evidence(llc_trace, ~diverged, init_loss_error),
        diverged_chains=int(diverged.sum()),
        nonfinite=bool(not np.isfinite(losses[~diverged]).all() or not np.isfinite(initial_loss.value)),
    )


def result_evidence(
    diagnostics: LLCDiagnostics, num_chains: int, llc_mean: float | None, mala: float | None, burnin: BurnIn | None = None
) -> Evidence:
    """What the health checks read from an estimate's diagnostics and its burn-in.

    Only the automatic burn-in is judged against the chains' relaxation: it fails where its cap
    cut it short. A burn-in set outright is the user's choice (the drift check still reads it).
    """
    automatic = burnin is not None and burnin.rule != "set"
    return Evidence(
        num_chains=num_chains,
        diverged_chains=diagnostics.diverged_chains,
        llc_mean=llc_mean,
        llc_mcse=diagnostics.llc_mcse,
        negative_chains=diagnostics.negative_chains,
        drift_z=diagnostics.drift_z,
        r_hat=diagnostics.r_hat,
        ess=diagnostics.ess,
        mala_acceptance=mala,
        burnin_steps=burnin.steps if automatic else None,
        relaxation_steps=burnin.relaxation_steps if automatic else None,
        burnin_capped=automatic and burnin.rule == "auto-capped",
    )


def _warnings(failed: list[HealthFailure], bound: float) -> list[str]:
    """The failed health checks as sentences: what was seen, then what to try."""
    messages = []
    for failure in failed:
        message = failure.sentence
        if failure.check == "diverged":
            message += f" (non-finite loss or a per-draw LLC above {bound:.4g}) and are left out"
        messages.append(f"{message}; {CHECKS_BY_NAME[failure.check].advice}")
    return messages


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {
        "llcv": __version__,
        "torch": torch.__version__,
        "devinterp": installed("devinterp"),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None
