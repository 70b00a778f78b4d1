"""``calibrate_sweep``: a short estimate for every (epsilon, gamma, nbeta) of a grid, one row each.

Rows are judged by ``llcv.calibration.rule``; the sweep is resumable through ``sweep.json`` and
drawn as a heatmap and traces by ``save_sweep``.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llcv import sampling
from llcv.calibration.rule import RULE_DEFAULTS, apply_rule, recommended_row, rule_thresholds
from llcv.calibration.trials import trace_array
from llcv.devices import resolve_device
from llcv.diagnostics import trace_drift
from llcv.errors import SettingsError
from llcv.fileio import atomic_write_json, atomic_write_text, csv_text, finite_or_none
from llcv.relaxation import AUTO_BURNIN_DRAW_FACTOR, relaxation_steps
from llcv.sampling import LLCResult
from llcv.sampling import LossSpec
from llcv.calibration.figures import plot_sweep_heatmap, plot_sweep_traces
from llcv.figure_files import save_figure
from llcv.progress import SILENT, Reporter
from llcv.results import checkpoint_stem
from llcv.sampling import resolve_burnin, resolve_nbeta
from llcv.sampling import SamplingData
from llcv.settings import CALIBRATION_FIELDS, CalibrateSettings, SamplerSettings

SWEEP_FORMAT = "llcv-sweep"  # sweep.json's "format"
# 2: llc_mcse, negative_chains and drift_z in every row (llcv 0.4); 3: num_burnin_steps per row (llcv 0.7);
# 4: llc_se per row (llcv 0.9)
SWEEP_FORMAT_VERSION = 4
MAX_GRID_VALUES = 1000  # per grid flag; every combination is a full LLC estimate
# The columns of a sweep row, in table order (docs/formats.md).
ROW_FIELDS = (
    "epsilon",
    "gamma",
    "nbeta",
    "num_burnin_steps",
    "mala_acceptance",
    "llc_mean",
    "llc_std",
    "llc_mcse",
    "llc_se",
    "llc_final",
    "diverged",
    "negative_fraction",
    "negative_chains",
    "trace_drift",
    "drift_z",
    "r_hat",
    "ess",
    "qualifies",
    "reason",
    "failed_check",
)
# llc_final is the mean of this last share of the draws.
FINAL_FRACTION = 0.1
_Combination = tuple[float, float, float]  # (epsilon, gamma, nbeta)
_Row = tuple[dict[str, Any], list[float | None]]  # a sweep row and its mean LLC trace (sweep_row)


def parse_grid(text: str, flag: str, *, allow_zero: bool = False) -> list[float]:
    """Parse a grid flag: a comma-separated list (``1e-6,1e-5``) or a log range ``start:stop:count``.

    Raises:
        SettingsError: naming ``flag``, for bad syntax or a value out of range.
    """
    usage = (
        f"{flag}: expected a comma-separated list such as 1e-6,1e-5,1e-4 or a log range "
        f"start:stop:count such as 1e-6:1e-2:5; got {text!r}"
    )
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            start, stop, count = float(start), float(stop), int(count)
            if start <= 0 or stop <= 0 or count < 1:
                raise SettingsError(f"{flag}: a log range needs positive ends and a count of at least 1; got {text!r}")
            if count > MAX_GRID_VALUES:  # a typo such as 1e-6:1e-2:50000000 would otherwise exhaust memory
                raise SettingsError(f"{flag}: a log range of {count} values is more than the {MAX_GRID_VALUES} a grid may hold; got {text!r}")
            values = [float(f"{value:.12g}") for value in np.geomspace(start, stop, count)]
        else:
            values = [float(part) for part in text.split(",")]
    except ValueError:
        raise SettingsError(usage) from None
    for value in values:
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = "non-negative" if allow_zero else "positive"
            raise SettingsError(f"{flag}: every value must be finite and {bound}; got {value:g} in {text!r}")
    return values


def sweep_base(sampler: SamplerSettings, calibrate: CalibrateSettings) -> SamplerSettings:
    """The base settings of a sweep: ``[sampler]`` with the chains, draws and burn-in of ``[calibrate]``
    (no burn-in where ``[calibrate]`` leaves it to each row: ``relax_burnin`` of ``calibrate_sweep``)."""
    return sampler.model_copy(
        update={
            "num_chains": calibrate.num_chains,
            "num_draws": calibrate.num_draws,
            "num_burnin_steps": calibrate.num_burnin_steps or 0,
        }
    )


def row_burnin_steps(epsilon: float, gamma: float, num_draws: int) -> int:
    """A row's own burn-in (``relax_burnin``): until its chains have relaxed from the checkpoint
    (``llcv.relaxation.relaxation_steps``) where that takes at most ``AUTO_BURNIN_DRAW_FACTOR`` times
    its draws, the automatic burn-in's cap, so that no row costs more than five times its draws;
    else none (gamma 0: none). Unlike an estimate's automatic burn-in, a row that cannot relax
    within the cap is not burnt in to it: the rule rejects it either way, so burn-in is spent only
    where it can let a row qualify."""
    needed = relaxation_steps(epsilon, gamma)
    return int(needed) if needed <= AUTO_BURNIN_DRAW_FACTOR * num_draws else 0


def output_dir(results_dir: Path, checkpoint: Path) -> Path:
    """``<results-dir>/<checkpoint-stem>/``; the stem drops every checkpoint suffix (``.pth.tar``)."""
    return Path(results_dir) / checkpoint_stem(Path(checkpoint).name)


class SweepResult(BaseModel):
    """A sweep over (epsilon, gamma, nbeta): one row per combination and the recommendation.

    Attributes:
        rows: one dict per combination with ``ROW_FIELDS``, in grid order (nbeta, gamma, epsilon).
        traces: per row, the per-draw LLC averaged over the healthy chains (over all chains,
            up to where they diverged, when none is healthy); null where undefined.
        recommended: the base settings (with the caller's ``mala``) with the recommended epsilon, gamma and nbeta
            and its row's burn-in, or None.
        reason: why that row was recommended, or why none was.
        base: the settings every combination shared (MALA always on); with ``relax_burnin``
            each row's burn-in is its own, in its ``num_burnin_steps``.
        rule: the thresholds the rows were judged by.
        fingerprint: what a stored row must match to be reused on resume.
        checkpoint: the checkpoint the sweep ran on, when known.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: list[dict[str, Any]]
    traces: list[list[float | None]]
    recommended: SamplerSettings | None
    reason: str
    base: SamplerSettings
    rule: dict[str, float]
    fingerprint: dict[str, Any] = {}
    checkpoint: str | None = None

    @property
    def burnin_label(self) -> str:
        """The rows' burn-in in words: the shared number, or each row's own (``relax_burnin``)."""
        if self.fingerprint.get("relax_burnin"):
            return f"burn-in 2/(epsilon*gamma) where at most {AUTO_BURNIN_DRAW_FACTOR * self.base.num_draws}"
        return burnin_words(self.base)

    @property
    def recommended_index(self) -> int | None:
        """The index of the recommended row, or None."""
        return recommended_row(self.rows, self.recommended_dict())

    def recommended_dict(self) -> dict[str, Any] | None:
        """The content of ``recommended.json``: exactly ``CALIBRATION_FIELDS``."""
        if self.recommended is None:
            return None
        return self.recommended.model_dump(mode="json", include=set(CALIBRATION_FIELDS))

    def to_dict(self, complete: bool = True) -> dict[str, Any]:
        """The content of ``sweep.json`` (docs/formats.md)."""
        return finite_or_none(
            {
                "format": SWEEP_FORMAT,
                "format_version": SWEEP_FORMAT_VERSION,
                "complete": complete,
                "checkpoint": self.checkpoint,
                "fingerprint": self.fingerprint,
                "rule": self.rule,
                "rows": self.rows,
                "traces": self.traces,
                "recommended": self.recommended_dict(),
                "reason": self.reason,
            }
        )


@dataclass(frozen=True)
class SweepGrid:
    """What a sweep tries and how it judges the rows: the (epsilon, gamma, nbeta) grid, each
    row's burn-in, and the rule's thresholds (``apply_rule``; their defaults are ``[calibrate]``'s).

    Attributes:
        epsilons, gammas: the step sizes and localization strengths to try.
        nbetas: the inverse temperatures to try; None: the base settings' nbeta resolved on the
            data (``llcv.sampling.resolve_nbeta``: n / ln n by default; rows record the number).
        relax_burnin: each row burns in for ``row_burnin_steps(epsilon, gamma, num_draws)``
            instead of the base settings' burn-in: chains start at the checkpoint, and a row
            judged on chains still relaxing from it reads a transient (lower MALA acceptance,
            R-hat and drift out of range) instead of the posterior.
        target_acceptance, max_negative_fraction, max_drift_z, max_r_hat: the rule's thresholds.
    """

    epsilons: Sequence[float]
    gammas: Sequence[float]
    nbetas: Sequence[float] | None = None
    relax_burnin: bool = False
    target_acceptance: float = RULE_DEFAULTS.target_acceptance
    max_negative_fraction: float = RULE_DEFAULTS.max_negative_fraction
    max_drift_z: float = RULE_DEFAULTS.max_drift_z
    max_r_hat: float = RULE_DEFAULTS.max_r_hat

    @classmethod
    def from_settings(cls, calibrate: CalibrateSettings) -> SweepGrid:
        """The grid and rule of ``[calibrate]``, as ``llcv calibrate sweep`` runs them: rows relax
        their own burn-in unless ``num_burnin_steps`` sets one (``sweep_base`` puts it in the base)."""
        return cls(
            calibrate.epsilons, calibrate.gammas, calibrate.nbetas, relax_burnin=calibrate.num_burnin_steps is None, **rule_thresholds(calibrate)
        )

    @property
    def rule(self) -> dict[str, float]:
        """The thresholds by name, as a sweep records them."""
        return rule_thresholds(self)


def calibrate_sweep(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    grid: SweepGrid,
    base: SamplerSettings = SamplerSettings(num_chains=2, num_draws=200),
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    *,
    sweep_file: Path | None = None,
    checkpoint: str | None = None,
    reporter: Reporter = SILENT,
) -> SweepResult:
    """Estimate the LLC for every (epsilon, gamma, nbeta) and recommend one by ``apply_rule``.

    Args:
        model: the model at the checkpoint; never modified.
        data: the training data (read once for the whole grid).
        grid: the grid, each row's burn-in and the rule's thresholds (``SweepGrid``;
            ``SweepGrid.from_settings`` reads them from ``[calibrate]``).
        base: everything else: chains, draws, burn-in, batch size, seed, sampler. MALA
            acceptance is always computed, since the rule needs it. An ``"auto"`` burn-in is
            resolved per row (``llcv.sampling.resolve_burnin``), and rows record the number.
        loss, device: as for ``estimate_llc``.
        sweep_file: a ``sweep.json`` to keep finished combinations in as they finish, and to
            resume from: a stored row made with the same model weights, data size, loss and
            base settings is reused instead of recomputed.
        checkpoint: recorded in the sweep file, for the reader.
        reporter: receives the grid's progress ("sweep") and each chain's.

    Raises:
        SettingsError: an empty grid or a value out of range.

    Why these parameters: ``estimate_llc``'s (model, data, settings as ``base``, loss, device,
    reporter), the grid with its rule (one settings object, ``SweepGrid``), and the file it
    resumes from with the checkpoint that file names (``sweep_file``, ``checkpoint``).
    """
    device = resolve_device(device)
    # the rule needs the acceptance, but the recommendation keeps the caller's choice: minibatch
    # MALA costs an estimate about half as much again (docs/performance.md)
    measured = base.model_copy(update={"mala": True})
    prepared = data if isinstance(data, SamplingData) else SamplingData(data, measured, device)
    nbetas = grid.nbetas if grid.nbetas is not None else [resolve_nbeta(measured.nbeta, prepared.num_samples, prepared.batch_size)]
    sweep = _Sweep(
        base=measured,
        requested_mala=base.mala,
        combinations=_grid(grid.epsilons, grid.gammas, nbetas),
        rule=grid.rule,
        fingerprint=_fingerprint(model, prepared, loss, measured, grid.relax_burnin),
        relax_burnin=grid.relax_burnin,
        checkpoint=checkpoint,
    )
    sweep.reuse(_stored_rows(sweep_file, sweep.fingerprint, reporter), reporter)
    _run_rows(sweep, model, prepared, loss, device, sweep_file, reporter)
    result = sweep.result(complete=True)
    if sweep_file is not None:
        atomic_write_json(sweep_file, result.to_dict())
    return result


@dataclass
class _Sweep:
    """A sweep under way: its grid, what every row shares, and the rows finished so far."""

    base: SamplerSettings  # MALA on: the rule needs the acceptance
    requested_mala: bool  # the caller's MALA, which the recommendation keeps
    combinations: list[_Combination]  # in grid order
    rule: dict[str, float]
    fingerprint: dict[str, Any]
    relax_burnin: bool
    checkpoint: str | None
    finished: dict[_Combination, _Row] = field(default_factory=dict)

    def burnin(self, epsilon: float, gamma: float) -> int:
        """A row's burn-in: its own relaxation (``row_burnin_steps``) or the base's, resolved."""
        if self.relax_burnin:
            return row_burnin_steps(epsilon, gamma, self.base.num_draws)
        return resolve_burnin(self.base.model_copy(update={"epsilon": epsilon, "gamma": gamma})).steps

    def row_settings(self, epsilon: float, gamma: float, nbeta: float) -> SamplerSettings:
        """What one combination's estimate runs."""
        return SamplerSettings.model_validate(
            {**self.base.model_dump(), "epsilon": epsilon, "gamma": gamma, "nbeta": nbeta, "num_burnin_steps": self.burnin(epsilon, gamma)}
        )

    def reuse(self, stored: dict[_Combination, _Row], reporter: Reporter) -> None:
        """Take the rows of an earlier run of this sweep as finished."""
        # a stored row is reused only if it ran the burn-in this sweep would give it
        self.finished = {
            key: stored[key] for key in self.combinations if key in stored and stored[key][0]["num_burnin_steps"] == self.burnin(*key[:2])
        }
        if self.finished:
            reporter.note(f"resuming the sweep: {len(self.finished)} of {len(self.combinations)} combinations already done")

    def result(self, complete: bool) -> SweepResult:
        """The finished rows in grid order, judged by the rule, and its recommendation: none
        while the sweep is ``complete`` False, whose reason says how far it has come."""
        ordered = [key for key in self.combinations if key in self.finished]
        rows, index, reason = apply_rule([self.finished[key][0] for key in ordered], **self.rule)
        if not complete:
            index, reason = None, f"in progress: {len(ordered)} of {len(self.combinations)} combinations done"
        recommended = None
        if index is not None:
            epsilon, gamma, nbeta = ordered[index]
            recommended = self.base.model_copy(
                update={
                    "epsilon": epsilon, "gamma": gamma, "nbeta": nbeta,
                    "num_burnin_steps": rows[index]["num_burnin_steps"], "mala": self.requested_mala,
                }
            )
        return SweepResult(
            rows=rows,
            traces=[self.finished[key][1] for key in ordered],
            recommended=recommended,
            reason=reason,
            base=self.base,
            rule=self.rule,
            fingerprint=self.fingerprint,
            checkpoint=self.checkpoint,
        )


def _run_rows(
    sweep: _Sweep,
    model: nn.Module,
    data: SamplingData,
    loss: LossSpec,
    device: torch.device,
    sweep_file: Path | None,
    reporter: Reporter,
) -> None:
    """Estimate every combination not yet finished, in grid order, keeping the sweep so far in
    ``sweep_file`` after each."""
    total = len(sweep.combinations)
    reporter.start("sweep", f"Sweep ({total} combinations)", total)
    reporter.advance("sweep", len(sweep.finished))
    try:
        for epsilon, gamma, nbeta in sweep.combinations:
            if (epsilon, gamma, nbeta) in sweep.finished:
                continue
            settings = sweep.row_settings(epsilon, gamma, nbeta)
            result = sampling.estimate_llc(model, data, settings, loss=loss, device=device, reporter=reporter)
            sweep.finished[(epsilon, gamma, nbeta)] = sweep_row(result)
            if sweep_file is not None:
                atomic_write_json(sweep_file, sweep.result(complete=False).to_dict(complete=False))
            reporter.advance("sweep", 1, epsilon=f"{epsilon:g}", gamma=f"{gamma:g}")
    finally:
        reporter.finish("sweep")


def _fingerprint(model: nn.Module, data: SamplingData, loss: LossSpec, base: SamplerSettings, relax_burnin: bool) -> dict[str, Any]:
    """What a stored row must have been made with to be reused: the same model weights, data
    size, loss, base settings and burn-in rule."""
    return {
        "model_sha256": _model_sha256(model),
        "num_samples": data.num_samples,
        "loss": loss if isinstance(loss, str) else f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', repr(loss))}",
        "base": base.model_dump(mode="json", exclude={"epsilon", "gamma", "nbeta"}),
        "relax_burnin": relax_burnin,
    }


def _grid(epsilons: Sequence[float], gammas: Sequence[float], nbetas: Sequence[float]) -> list[_Combination]:
    for name, values in (("epsilons", epsilons), ("gammas", gammas), ("nbetas", nbetas)):
        if not values:
            raise SettingsError(f"calibrate.{name}: the grid needs at least one value")
    combinations = [(float(e), float(g), float(b)) for b in nbetas for g in gammas for e in epsilons]
    return list(dict.fromkeys(combinations))  # duplicates once, order kept


def _model_sha256(model: nn.Module) -> str:
    """sha256 over the module's structure (its repr: layers, strides, ...) and its state dict."""
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _stored_rows(sweep_file: Path | None, fingerprint: dict[str, Any], reporter: Reporter) -> dict[_Combination, _Row]:
    """The finished rows of an earlier run of the same sweep, by (epsilon, gamma, nbeta)."""
    if sweep_file is None or not Path(sweep_file).exists():
        return {}
    try:
        stored = json.loads(Path(sweep_file).read_text())
        if stored.get("format") != SWEEP_FORMAT or stored.get("format_version") != SWEEP_FORMAT_VERSION:
            raise ValueError("not a sweep file of this version")
        same = json.loads(json.dumps(fingerprint)) == stored.get("fingerprint")
        rows = {
            (float(row["epsilon"]), float(row["gamma"]), float(row["nbeta"])): (
                {field: row[field] for field in ROW_FIELDS},
                trace,
            )
            for row, trace in zip(stored["rows"], stored["traces"], strict=True)
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        reporter.note(f"{sweep_file} is not a readable sweep file; starting the sweep afresh")
        return {}
    if not same:
        if rows:
            reporter.note(
                f"{sweep_file} was made with a different model, data or base settings; recomputing every combination"
            )
        return {}
    return rows


def sweep_row(result: LLCResult) -> tuple[dict[str, Any], list[float | None]]:
    """One sweep row (without ``qualifies``/``reason``) and the mean LLC trace, from an estimate."""
    settings = result.settings
    llc = trace_array(result.llc_trace)
    healthy_mask = np.array([value is not None for value in result.llc_per_chain], dtype=bool)
    healthy = llc[healthy_mask]
    if healthy.size:
        trace = healthy.mean(axis=0)
    elif llc.size:  # no healthy chain: the mean of what the chains recorded before they diverged
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # draws after every chain diverged are all NaN
            trace = np.nanmean(llc, axis=0)
    else:
        trace = np.array([])
    diverged = bool(result.diagnostics.diverged_chains or result.diagnostics.nonfinite or result.llc_mean is None)
    finite = trace[np.isfinite(trace)] if healthy.size else np.array([])
    tail = finite[-max(1, math.ceil(FINAL_FRACTION * len(finite))) :] if len(finite) else finite
    row = {
        "epsilon": settings["epsilon"],
        "gamma": settings["gamma"],
        "nbeta": result.nbeta,
        "num_burnin_steps": settings["num_burnin_steps"],  # a number: calibrate_sweep resolves "auto" per row
        "mala_acceptance": result.mala_acceptance,
        "llc_mean": result.llc_mean,
        "llc_std": result.llc_std,
        "llc_mcse": result.diagnostics.llc_mcse,
        "llc_se": result.diagnostics.llc_se,
        "llc_final": float(tail.mean()) if len(tail) else None,
        "diverged": diverged,
        "negative_fraction": float((healthy < 0).mean()) if healthy.size else None,
        "negative_chains": result.diagnostics.negative_chains,
        "trace_drift": trace_drift(healthy) if healthy.size else None,
        "drift_z": result.diagnostics.drift_z,
        "r_hat": result.diagnostics.r_hat,
        "ess": result.diagnostics.ess,
    }
    return finite_or_none(row), finite_or_none(trace.tolist())


def save_sweep(result: SweepResult, directory: Path, fmt: str = "png") -> list[Path]:
    """Write ``sweep.json``, ``sweep.csv``, the two figures and, if any, ``recommended.json``.

    A ``recommended.json`` left by an earlier sweep is removed when nothing qualifies now, so
    the folder never recommends settings its own sweep rejected.

    Returns:
        The files written.
    """
    directory = Path(directory)
    written = [atomic_write_json(directory / "sweep.json", result.to_dict())]
    written.append(atomic_write_text(directory / "sweep.csv", csv_text(ROW_FIELDS, result.rows)))
    title = figure_title("sweep", result.checkpoint, result.base, burnin=result.burnin_label)
    written.append(save_figure(plot_sweep_heatmap(result.rows, title, result.rule, result.recommended_index), directory / f"sweep_heatmap.{fmt}"))
    written.append(save_figure(plot_sweep_traces(result.rows, result.traces, title), directory / f"sweep_traces.{fmt}"))
    recommended = directory / "recommended.json"
    if result.recommended is not None:
        written.append(atomic_write_json(recommended, result.recommended_dict()))
    else:
        recommended.unlink(missing_ok=True)
    return written


def burnin_words(settings: SamplerSettings, steps: int | None = None) -> str:
    """``settings``' burn-in for a figure's title: ``200 burn-in``, or the automatic one's rule, with
    the ``steps`` it resolved to where known (``burn-in 200 (auto, 2/(epsilon*gamma) capped at 800)``)."""
    if settings.num_burnin_steps != "auto":
        return f"{settings.num_burnin_steps} burn-in"
    rule = f"2/(epsilon*gamma) capped at {AUTO_BURNIN_DRAW_FACTOR * settings.num_draws * settings.num_steps_bw_draws}"
    return f"burn-in {rule}" if steps is None else f"burn-in {steps} (auto, {rule})"


def figure_title(
    what: str, checkpoint: str | None, settings: SamplerSettings, *, nbeta: float | None = None, burnin: str | None = None
) -> str:
    """A calibration figure's title: what, of which checkpoint, and the settings it ran.

    Args:
        nbeta: the temperature of a figure of one setting (a curve, chains), shown with its
            epsilon and gamma; None for a sweep, whose grid varies them.
        burnin: the burn-in in words; None: ``burnin_words(settings)``.
    """
    where = Path(checkpoint).name if checkpoint else "model"
    head = f"{what} of {where}"
    if nbeta is not None:
        head += f": epsilon={settings.epsilon:g}, gamma={settings.gamma:g}, nbeta={nbeta:.4g}"
    detail = (
        f"{settings.num_chains} chain{'s' if settings.num_chains != 1 else ''} x {settings.num_draws} draws, "
        f"{burnin or burnin_words(settings)}, batch {settings.batch_size}, {settings.sampler}, seed {settings.seed}"
    )
    return f"{head}\n{detail}"
