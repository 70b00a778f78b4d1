"""Calibration: choose SGLD settings (epsilon, gamma, nbeta) by a stated rule, and show why.

Three steps, as researchers do them by hand (docs/calibration.md):

1. ``calibrate_sweep`` runs a short estimate for every (epsilon, gamma, nbeta) of a grid and
   summarises each as one row; ``apply_rule`` marks which rows qualify and recommends one.
2. ``calibrate_curve`` runs one chain for the chosen settings and judges its LLC-over-draws
   curve: stable, peaks or drift.
3. ``calibrate_chains`` runs several chains and reports their agreement.

``recommend_settings`` does step 1 on a grid sized to the model and data and returns settings
for a final estimate. Library functions here return results and write files only where asked
(``sweep_file`` and the ``save_*`` functions); the terminal belongs to ``llcv.cli``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llcv.devices import resolve_device
from llcv.diagnostics import trace_drift
from llcv.errors import EstimationError, SettingsError
from llcv.fileio import atomic_write_json, atomic_write_text, finite_or_none
from llcv.health import CHECKS, Evidence, HealthThresholds, failed_checks
from llcv.progress import SILENT, Reporter
from llcv.sampling import LLCResult, LossSpec, SamplingData, default_nbeta, estimate_llc, resolve_loss, working_copy
from llcv.results import checkpoint_stem
from llcv.settings import CALIBRATION_FIELDS, CalibrateSettings, SamplerSettings

SWEEP_FORMAT = "llcv-sweep"  # sweep.json's "format"
SWEEP_FORMAT_VERSION = 2  # 2: llc_mcse, negative_chains and drift_z in every row (llcv 0.4)
MAX_GRID_VALUES = 1000  # per grid flag; every combination is a full LLC estimate
# The columns of a sweep row, in table order (docs/formats.md).
ROW_FIELDS = (
    "epsilon",
    "gamma",
    "nbeta",
    "mala_acceptance",
    "llc_mean",
    "llc_std",
    "llc_mcse",
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
)
# The thresholds of the rule; their defaults are CalibrateSettings' defaults.
RULE_FIELDS = ("target_acceptance", "max_negative_fraction", "max_drift_z", "max_r_hat")
_RULE_DEFAULTS = CalibrateSettings()
# Two LLCs agree when they differ by at most this many combined Monte Carlo standard errors.
AGREEMENT = 2.0
# llc_final is the mean of this last share of the draws.
FINAL_FRACTION = 0.1
# A per-draw LLC more than this many robust standard deviations above the median is a peak.
PEAK_THRESHOLD = 6.0
# `llcv calibrate chains` runs this many chains unless the config or a flag says otherwise.
CHAINS_DEFAULT_NUM_CHAINS = 5
# recommend_settings: the final estimate aims for this many effective samples over all chains.
TARGET_ESS = 400
FINAL_NUM_CHAINS = 4
# recommend_settings' grid, in units of the stiffest curvature nbeta * h (see its docstring);
# each further round adds the wider values and doubles the chains' length.
RECOMMEND_EPSILON_FACTORS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
RECOMMEND_GAMMA_FACTORS = (1e-3, 1e-2, 1e-1, 1.0)
RECOMMEND_WIDER_EPSILON_FACTORS = (1e-4, 3e-4)
RECOMMEND_WIDER_GAMMA_FACTORS = (1e-4, 10.0)
RECOMMEND_ROUNDS = 2
RECOMMEND_MAX_SAMPLES = 2048


# The rule.


def rule_labels(limits: HealthThresholds) -> dict[str, str]:
    """Each check's name as a row's ``reason``: the rule it failed, with its threshold."""
    return {
        "diverged": "diverged",
        "llc_mean < 0": "llc_mean < 0",
        "negative_chains": f"negative_chains > {limits.max_negative_fraction:g}",
        "drift": f"|drift_z| > {limits.max_drift_z:g}",
        "r_hat": f"r_hat > {limits.max_r_hat:g}",
        "ess": f"ess < {limits.min_ess:g}" if limits.min_ess is not None else "ess",
        "mala_acceptance": f"mala_acceptance < {limits.target_acceptance:g}",
    }


def row_evidence(row: dict[str, Any], num_chains: int = 2) -> Evidence:
    """What the health checks read from a sweep row."""
    return Evidence(
        num_chains=num_chains,
        diverged_chains=int(bool(row.get("diverged"))),
        llc_mean=None if row.get("diverged") else row.get("llc_mean"),
        llc_mcse=row.get("llc_mcse"),
        negative_chains=row.get("negative_chains"),
        drift_z=row.get("drift_z"),
        r_hat=row.get("r_hat"),
        ess=row.get("ess"),
        mala_acceptance=row.get("mala_acceptance"),
    )


def apply_rule(
    rows: Sequence[dict[str, Any]],
    *,
    target_acceptance: float = _RULE_DEFAULTS.target_acceptance,
    max_negative_fraction: float = _RULE_DEFAULTS.max_negative_fraction,
    max_drift_z: float = _RULE_DEFAULTS.max_drift_z,
    max_r_hat: float = _RULE_DEFAULTS.max_r_hat,
) -> tuple[list[dict[str, Any]], int | None, str]:
    """The calibration rule: which rows qualify, and which one is recommended.

    A row qualifies if it passes the health checks of ``llcv.health``, in this order: it did not
    diverge; ``llc_mean`` is not below 0 by more than 2 MCSE; at most ``max_negative_fraction``
    of its chains have a mean significantly below 0; ``|drift_z| <= max_drift_z`` (Geweke);
    ``r_hat <= max_r_hat`` (skipped where null: one chain); ``mala_acceptance >= target_acceptance``.

    Among qualifying rows, per (gamma, nbeta), the pick is the largest epsilon whose LLC agrees
    within ``AGREEMENT`` combined MCSE with that of the next smaller qualifying epsilon: a
    plateau in epsilon, so the step size is not biasing the estimate. Where no two neighbours
    agree, the smallest qualifying epsilon (least discretisation bias). Across gammas, picks on
    an epsilon plateau come first, then those whose LLC also agrees with the pick at a
    neighbouring gamma (a plateau in gamma), then the smallest gamma (least localization bias),
    then the largest epsilon.

    Args:
        rows: sweep rows (``ROW_FIELDS``); ``qualifies`` and ``reason`` are ignored.

    Returns:
        New rows with ``qualifies`` and ``reason`` (the first rule failed, or ""), the index
        of the recommended row (None if none qualifies), and a sentence saying why: which
        row won and on what evidence, or which rule failed most and which way to move the grid.
        "Failed most" counts every rule a row fails, except that a diverged row counts only as diverged.
    """
    limits = HealthThresholds(
        max_negative_fraction=max_negative_fraction, max_drift_z=max_drift_z, max_r_hat=max_r_hat,
        min_ess=None, target_acceptance=target_acceptance,
    )  # fmt: skip
    labels = rule_labels(limits)
    judged, failures = [], {check.name: 0 for check in CHECKS}
    for row in rows:
        failed = failed_checks(row_evidence(row), limits, require_acceptance=True)
        for check, _ in failed:
            failures[check.name] += 1
        judged.append({**row, "qualifies": not failed, "reason": labels[failed[0][0].name] if failed else ""})
    qualifying = [index for index, row in enumerate(judged) if row["qualifies"]]
    if qualifying:
        best, why = _pick(judged, qualifying)
        row = judged[best]
        reason = (
            f"epsilon={row['epsilon']:g}, gamma={row['gamma']:g}, nbeta={row['nbeta']:.4g}: {why} "
            f"({len(qualifying)} of {len(judged)} combinations qualify), MALA acceptance "
            f"{row['mala_acceptance']:.3f}, LLC {row['llc_mean']:.4g} ± {row['llc_mcse'] or 0:.2g} (MCSE)"
        )
        return judged, best, reason
    if not judged:
        return judged, None, "the grid is empty"
    worst = max(CHECKS, key=lambda check: failures[check.name])
    reason = (
        f"no combination qualifies: '{labels[worst.name]}' failed most ({failures[worst.name]} of {len(judged)} "
        f"combinations); {worst.advice}"
    )
    return judged, None, reason


def _agree(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether two rows' LLCs differ by at most ``AGREEMENT`` combined MCSE."""
    spread = math.hypot(first["llc_mcse"] or 0.0, second["llc_mcse"] or 0.0)
    return abs(first["llc_mean"] - second["llc_mean"]) <= AGREEMENT * spread


def _pick(rows: list[dict[str, Any]], qualifying: list[int]) -> tuple[int, str]:
    """The recommended row among qualifying ones (``apply_rule``'s docstring), and why in words."""
    by_gamma: dict[tuple[float, float], list[int]] = {}
    for index in qualifying:
        by_gamma.setdefault((rows[index]["nbeta"], rows[index]["gamma"]), []).append(index)
    picks = {}  # (nbeta, gamma) -> (index, on an epsilon plateau)
    for key, indices in by_gamma.items():
        ordered = sorted(indices, key=lambda index: rows[index]["epsilon"])
        plateau = [upper for lower, upper in zip(ordered, ordered[1:]) if _agree(rows[lower], rows[upper])]
        picks[key] = (plateau[-1], True) if plateau else (ordered[0], False)

    def gamma_plateau(key: tuple[float, float]) -> bool:
        same_nbeta = sorted(other for other in picks if other[0] == key[0])
        position = same_nbeta.index(key)
        neighbours = same_nbeta[max(position - 1, 0) : position] + same_nbeta[position + 1 : position + 2]
        return any(_agree(rows[picks[key][0]], rows[picks[other][0]]) for other in neighbours)

    best_key = max(picks, key=lambda key: (picks[key][1], gamma_plateau(key), -key[1], rows[picks[key][0]]["epsilon"]))
    index, on_plateau = picks[best_key]
    if on_plateau:
        why = "the largest epsilon whose LLC agrees with the next smaller qualifying epsilon's within the combined MCSE"
    else:
        why = "the smallest qualifying epsilon (no two qualifying epsilons agree at this gamma, so no step-size plateau was seen)"
    if len(picks) > 1:
        why += "; its LLC agrees with a neighbouring gamma's" if gamma_plateau(best_key) else "; the smallest such gamma"
    return index, why


def short_reason(reason: str) -> str:
    """A row's reason with the rule names abbreviated, for table cells and figures."""
    for name, label in (("mala_acceptance", "MALA"), ("negative_chains", "neg"), ("|drift_z|", "drift z"), ("r_hat", "R-hat"), ("llc_mean", "LLC")):
        reason = reason.replace(name, label)
    return reason


def rule_thresholds(settings: CalibrateSettings) -> dict[str, float]:
    """The rule's thresholds from the ``[calibrate]`` settings, as keyword arguments."""
    return {field: getattr(settings, field) for field in RULE_FIELDS}


# Grids.


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
    """The base settings of a sweep: ``[sampler]`` with the chains, draws and burn-in of ``[calibrate]``."""
    return sampler.model_copy(
        update={
            "num_chains": calibrate.num_chains,
            "num_draws": calibrate.num_draws,
            "num_burnin_steps": calibrate.num_burnin_steps,
        }
    )


def output_dir(results_dir: Path, checkpoint: Path) -> Path:
    """``<results-dir>/<checkpoint-stem>/``; the stem drops every checkpoint suffix (``.pth.tar``)."""
    return Path(results_dir) / checkpoint_stem(Path(checkpoint).name)


# The sweep.

def recommended_row(rows: Sequence[Mapping[str, Any]], recommended: Mapping[str, Any] | None) -> int | None:
    """The index of the qualifying row with the recommended (epsilon, gamma, nbeta), or None.

    Args:
        recommended: the recommendation as in ``recommended.json`` or sweep.json's ``recommended``.
    """
    if not recommended:
        return None
    key = (recommended.get("epsilon"), recommended.get("gamma"), recommended.get("nbeta"))
    return next(
        (index for index, row in enumerate(rows) if row.get("qualifies") and (row.get("epsilon"), row.get("gamma"), row.get("nbeta")) == key),
        None,
    )


class SweepResult(BaseModel):
    """A sweep over (epsilon, gamma, nbeta): one row per combination and the recommendation.

    Attributes:
        rows: one dict per combination with ``ROW_FIELDS``, in grid order (nbeta, gamma, epsilon).
        traces: per row, the per-draw LLC averaged over the healthy chains (over all chains,
            up to where they diverged, when none is healthy); null where undefined.
        recommended: the base settings with the recommended epsilon, gamma and nbeta, or None.
        reason: why that row was recommended, or why none was.
        base: the settings every combination shared (MALA always on).
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


def calibrate_sweep(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    epsilons: Sequence[float],
    gammas: Sequence[float],
    nbetas: Sequence[float] | None = None,
    base: SamplerSettings = SamplerSettings(num_chains=2, num_draws=200),
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    target_acceptance: float = _RULE_DEFAULTS.target_acceptance,
    *,
    max_negative_fraction: float = _RULE_DEFAULTS.max_negative_fraction,
    max_drift_z: float = _RULE_DEFAULTS.max_drift_z,
    max_r_hat: float = _RULE_DEFAULTS.max_r_hat,
    sweep_file: Path | None = None,
    checkpoint: str | None = None,
    reporter: Reporter = SILENT,
) -> SweepResult:
    """Estimate the LLC for every (epsilon, gamma, nbeta) and recommend one by ``apply_rule``.

    Args:
        model: the model at the checkpoint; never modified.
        data: the training data (read once for the whole grid).
        epsilons, gammas: the step sizes and localization strengths to try.
        nbetas: the inverse temperatures to try; None: ``base.nbeta``, or its default
            ``batch_size / ln(batch_size)`` (the resolved number is what rows record).
        base: everything else: chains, draws, burn-in, batch size, seed, sampler. MALA
            acceptance is always computed, since the rule needs it.
        loss, device: as for ``estimate_llc``.
        target_acceptance, max_negative_fraction, max_drift_z, max_r_hat: the rule's thresholds.
        sweep_file: a ``sweep.json`` to keep finished combinations in as they finish, and to
            resume from: a stored row made with the same model weights, data size, loss and
            base settings is reused instead of recomputed.
        checkpoint: recorded in the sweep file, for the reader.
        reporter: receives the grid's progress ("sweep") and each chain's.

    Raises:
        SettingsError: an empty grid or a value out of range.
    """
    device = resolve_device(device)
    base = base.model_copy(update={"mala": True})
    sampling = data if isinstance(data, SamplingData) else SamplingData(data, base, device)
    if nbetas is None:
        nbetas = [base.nbeta if base.nbeta is not None else default_nbeta(sampling.batch_size)]
    combinations = _grid(epsilons, gammas, nbetas)
    rule = {
        "target_acceptance": target_acceptance,
        "max_negative_fraction": max_negative_fraction,
        "max_drift_z": max_drift_z,
        "max_r_hat": max_r_hat,
    }
    fingerprint = {
        "model_sha256": _model_sha256(model),
        "num_samples": sampling.num_samples,
        "loss": loss if isinstance(loss, str) else f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', repr(loss))}",
        "base": base.model_dump(mode="json", exclude={"epsilon", "gamma", "nbeta"}),
    }
    done = _stored_rows(sweep_file, fingerprint, reporter)
    finished = {key: done[key] for key in combinations if key in done}
    if finished:
        reporter.note(f"resuming the sweep: {len(finished)} of {len(combinations)} combinations already done")

    def snapshot(complete: bool) -> SweepResult:
        ordered = [key for key in combinations if key in finished]
        rows, index, reason = apply_rule([finished[key][0] for key in ordered], **rule)
        if not complete:
            index, reason = None, f"in progress: {len(ordered)} of {len(combinations)} combinations done"
        recommended = None
        if index is not None:
            epsilon, gamma, nbeta = ordered[index]
            recommended = base.model_copy(update={"epsilon": epsilon, "gamma": gamma, "nbeta": nbeta})
        return SweepResult(
            rows=rows,
            traces=[finished[key][1] for key in ordered],
            recommended=recommended,
            reason=reason,
            base=base,
            rule=rule,
            fingerprint=fingerprint,
            checkpoint=checkpoint,
        )

    reporter.start("sweep", f"Sweep ({len(combinations)} combinations)", len(combinations))
    reporter.advance("sweep", len(finished))
    try:
        for epsilon, gamma, nbeta in combinations:
            if (epsilon, gamma, nbeta) in finished:
                continue
            settings = SamplerSettings.model_validate(
                {**base.model_dump(), "epsilon": epsilon, "gamma": gamma, "nbeta": nbeta}
            )
            result = estimate_llc(model, sampling, settings, loss=loss, device=device, reporter=reporter)
            finished[(epsilon, gamma, nbeta)] = sweep_row(result)
            if sweep_file is not None:
                atomic_write_json(sweep_file, snapshot(complete=False).to_dict(complete=False))
            reporter.advance("sweep", 1, epsilon=f"{epsilon:g}", gamma=f"{gamma:g}")
    finally:
        reporter.finish("sweep")
    result = snapshot(complete=True)
    if sweep_file is not None:
        atomic_write_json(sweep_file, result.to_dict())
    return result


def _grid(epsilons: Sequence[float], gammas: Sequence[float], nbetas: Sequence[float]) -> list[tuple[float, float, float]]:
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


def _stored_rows(
    sweep_file: Path | None, fingerprint: dict[str, Any], reporter: Reporter
) -> dict[tuple[float, float, float], tuple[dict[str, Any], list[float | None]]]:
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
    llc = _array(result.llc_trace)
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
        "mala_acceptance": result.mala_acceptance,
        "llc_mean": result.llc_mean,
        "llc_std": result.llc_std,
        "llc_mcse": result.diagnostics.llc_mcse,
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


def _array(nested: Sequence[Sequence[float | None]]) -> np.ndarray:
    return np.array([[np.nan if value is None else value for value in row] for row in nested], dtype=float).reshape(
        len(nested), -1
    )


def save_sweep(result: SweepResult, directory: Path, fmt: str = "png") -> list[Path]:
    """Write ``sweep.json``, ``sweep.csv``, the two figures and, if any, ``recommended.json``.

    A ``recommended.json`` left by an earlier sweep is removed when nothing qualifies now, so
    the folder never recommends settings its own sweep rejected.

    Returns:
        The files written.
    """
    from llcv.plotting import plot_sweep_heatmap, plot_sweep_traces, save_figure

    directory = Path(directory)
    written = [atomic_write_json(directory / "sweep.json", result.to_dict())]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({field: "" if row[field] is None else row[field] for field in ROW_FIELDS})
    written.append(atomic_write_text(directory / "sweep.csv", buffer.getvalue()))
    title = _title("sweep", result.checkpoint, result.base)
    written.append(save_figure(plot_sweep_heatmap(result.rows, title, result.recommended_index), directory / f"sweep_heatmap.{fmt}"))
    written.append(save_figure(plot_sweep_traces(result.rows, result.traces, title), directory / f"sweep_traces.{fmt}"))
    recommended = directory / "recommended.json"
    if result.recommended is not None:
        written.append(atomic_write_json(recommended, result.recommended_dict()))
    else:
        recommended.unlink(missing_ok=True)
    return written


def _title(what: str, checkpoint: str | None, settings: SamplerSettings, *, grid: bool = True) -> str:
    where = Path(checkpoint).name if checkpoint else "model"
    head = f"{what} of {where}"
    if not grid:
        nbeta = "default" if settings.nbeta is None else f"{settings.nbeta:.4g}"
        head += f": epsilon={settings.epsilon:g}, gamma={settings.gamma:g}, nbeta={nbeta}"
    detail = (
        f"{settings.num_chains} chain{'s' if settings.num_chains != 1 else ''} x {settings.num_draws} draws, "
        f"{settings.num_burnin_steps} burn-in, batch {settings.batch_size}, {settings.sampler}, seed {settings.seed}"
    )
    return f"{head}\n{detail}"


# One curve.


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
    max_trace_drift: float = _RULE_DEFAULTS.max_trace_drift,
    peak_threshold: float = PEAK_THRESHOLD,
    checkpoint: str | None = None,
    reporter: Reporter = SILENT,
) -> CurveResult:
    """Run one chain with ``settings`` (its ``num_chains`` is ignored) and judge its LLC curve.

    The verdict is ``diverged`` if the chain diverged, else ``peaks`` if ``peak_score`` exceeds
    ``peak_threshold``, else ``drift`` if ``|trace_drift|`` exceeds ``max_trace_drift``, else
    ``stable``.
    """
    settings = settings.model_copy(update={"num_chains": 1})
    result = estimate_llc(model, data, settings, loss=loss, device=device, reporter=reporter)
    return curve_from_result(result, settings, max_trace_drift=max_trace_drift, peak_threshold=peak_threshold, checkpoint=checkpoint)


def curve_from_result(
    result: LLCResult,
    settings: SamplerSettings,
    *,
    max_trace_drift: float = _RULE_DEFAULTS.max_trace_drift,
    peak_threshold: float = PEAK_THRESHOLD,
    checkpoint: str | None = None,
) -> CurveResult:
    """The curve and verdict of the first chain of ``result``."""
    llc = _array(result.llc_trace)[0]
    init_loss = result.init_loss if result.init_loss is not None else float("nan")
    burnin = result.nbeta * (_array(result.burnin_loss_trace)[0] - init_loss)
    finite = llc[np.isfinite(llc)]
    running = np.cumsum(llc) / np.arange(1, len(llc) + 1)
    drift = trace_drift(llc) if np.isfinite(llc).all() else None
    peak_score, peak_draw = _peak(llc)
    tail = finite[-max(1, math.ceil(FINAL_FRACTION * len(finite))) :] if len(finite) else finite
    every = settings.num_steps_bw_draws
    draw_steps = [settings.num_burnin_steps + (draw + 1) * every for draw in range(len(llc))]

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
    from llcv.plotting import plot_curve, save_figure

    directory = Path(directory)
    title = _title("LLC curve", curve.checkpoint, curve.settings, grid=False)
    return [
        atomic_write_json(directory / "curve.json", curve.to_dict()),
        save_figure(plot_curve(curve, title), directory / f"curve.{fmt}"),
    ]


# Several chains.


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
    result = estimate_llc(model, data, settings, loss=loss, device=device, reporter=reporter)
    return chains_from_result(result, checkpoint=checkpoint)


def chains_from_result(result: LLCResult, *, checkpoint: str | None = None) -> ChainsResult:
    """The running traces and their band, from an estimate."""
    llc = _array(result.llc_trace)
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
    from llcv.plotting import plot_chains, save_figure

    directory = Path(directory)
    title = _title("LLC chains", chains.checkpoint, chains.settings, grid=False)
    return [
        atomic_write_json(directory / "chains.json", chains.to_dict()),
        save_figure(plot_chains(chains, title), directory / f"chains.{fmt}"),
    ]


# Recommended settings without a hand-made grid.


def recommend_settings(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    *,
    base: SamplerSettings | None = None,
    num_draws: int = 200,
    reporter: Reporter = SILENT,
) -> SamplerSettings:
    """Sweep a grid sized to the model and data, and return settings for a final estimate.

    The grid is scaled by the stiffest direction of the posterior, ``s = nbeta * h``, where
    ``h`` is the largest Hessian eigenvalue of the loss at the checkpoint (power iteration on
    one minibatch); SGLD is stable for ``epsilon * (s + gamma) < 2``. The epsilons are
    ``RECOMMEND_EPSILON_FACTORS / s``. Localization pulls the chains toward the checkpoint and
    so biases the LLC down, so gammas are tried from weak to strong, ``RECOMMEND_GAMMA_FACTORS * s``,
    one sweep each (2 chains, ``num_draws`` burn-in steps and draws; repeated once with twice
    as many when most combinations fail only because the chains have not mixed), stopping at
    the first gamma where a combination qualifies; ``apply_rule`` picks the epsilon (a plateau
    in epsilon). When no gamma qualifies, the search is repeated ``RECOMMEND_ROUNDS - 1`` more
    times, each round with the grid widened (``RECOMMEND_WIDER_*_FACTORS``) and chains twice as
    long. nbeta is ``base.nbeta`` or its default.

    The returned settings are the recommended (epsilon, gamma, nbeta, sampler) with
    ``FINAL_NUM_CHAINS`` chains, the qualifying sweep's burn-in steps, and enough draws for an
    effective sample size of about ``TARGET_ESS`` at the sweep's mixing rate (between that
    sweep's draws and ``10 * num_draws``); the rest comes from ``base``.

    Args:
        base: batch size, samples, seed and sampler. Default: full batches of the data, or of a
            seeded subset of ``RECOMMEND_MAX_SAMPLES`` samples for larger data, so that the MALA
            acceptance and the losses are those of one fixed potential (docs/calibration.md).
        num_draws: burn-in steps and draws per chain in the first round's sweeps.

    Raises:
        EstimationError: no combination qualifies in any round; the message gives each sweep's reason.
    """
    device = resolve_device(device)
    if base is None and isinstance(data, SamplingData):
        base = SamplerSettings(batch_size=data.batch_size, num_samples=data.num_samples)
    elif base is None:
        size = min(len(data.dataset) if isinstance(data, DataLoader) else len(data), RECOMMEND_MAX_SAMPLES)
        base = SamplerSettings(batch_size=size, num_samples=size)
    sampling = data if isinstance(data, SamplingData) else SamplingData(data, base, device)
    nbeta = base.nbeta if base.nbeta is not None else default_nbeta(sampling.batch_size)
    stiffness = nbeta * top_hessian_eigenvalue(model, sampling, loss, base)
    reasons = []
    for round_index in range(RECOMMEND_ROUNDS):
        epsilon_factors, gamma_factors = RECOMMEND_EPSILON_FACTORS, RECOMMEND_GAMMA_FACTORS
        if round_index:
            epsilon_factors = sorted({*RECOMMEND_WIDER_EPSILON_FACTORS, *epsilon_factors})
            gamma_factors = sorted({*RECOMMEND_WIDER_GAMMA_FACTORS, *gamma_factors})
        epsilons = [float(f"{factor / stiffness:.3g}") for factor in epsilon_factors]
        for factor in gamma_factors:
            gamma = float(f"{factor * stiffness:.3g}")
            for draws in (num_draws * 2**round_index, num_draws * 2 ** (round_index + 1)):
                sweep_settings = base.model_copy(update={"num_chains": 2, "num_draws": draws, "num_burnin_steps": draws})
                sweep = calibrate_sweep(
                    model, sampling, epsilons, [gamma], [nbeta], base=sweep_settings, loss=loss, device=device, reporter=reporter
                )
                if sweep.recommended is not None or not _mostly_unmixed(sweep.rows):
                    break
            index = sweep.recommended_index
            if sweep.recommended is not None and index is not None:
                return _final_settings(sweep, index, base, draws, num_draws)
            reasons.append(f"gamma={gamma:g}, {draws} draws: {sweep.reason}")
    raise EstimationError("recommend_settings found no usable SGLD settings; " + "; ".join(reasons))


def _final_settings(sweep: SweepResult, index: int, base: SamplerSettings, draws: int, num_draws: int) -> SamplerSettings:
    """The recommended row as settings for a final estimate: its mixing rate sets the draws."""
    row = sweep.rows[index]
    ess_per_draw = (row["ess"] or 0.0) / (sweep.base.num_chains * draws)
    needed = math.ceil(TARGET_ESS / (FINAL_NUM_CHAINS * ess_per_draw)) if ess_per_draw > 0 else 10 * num_draws
    return sweep.recommended.model_copy(
        update={
            "num_chains": FINAL_NUM_CHAINS,
            "num_draws": min(max(needed, draws), 10 * num_draws),
            "num_burnin_steps": draws,
            "mala": base.mala,
        }
    )


def _mostly_unmixed(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether most rows failed a mixing rule first (trace drift or R-hat): longer chains may qualify."""
    unmixed = sum(row["reason"].startswith(("|drift_z|", "r_hat")) for row in rows)
    return unmixed > len(rows) / 2


def top_hessian_eigenvalue(
    model: nn.Module, data: SamplingData, loss: LossSpec, settings: SamplerSettings, iterations: int = 20
) -> float:
    """The largest |eigenvalue| of the loss Hessian at the model's weights, on one minibatch.

    Power iteration with Hessian-vector products, on the chains' working copy of the model
    (their BatchNorm mode and statistics). Falls back to 1.0 where the model does not support
    double backward or the value is not a positive finite number.
    """
    work, _ = working_copy(model, data, resolve_loss(loss), settings)
    parameters = [parameter for parameter in work.parameters() if parameter.requires_grad]
    batch = next(data.batches(settings.seed))
    generator = torch.Generator().manual_seed(settings.seed)
    try:
        gradients = torch.autograd.grad(resolve_loss(loss)(work, batch), parameters, create_graph=True)
        vector = [torch.randn(parameter.shape, generator=generator).to(parameter.device) for parameter in parameters]
        eigenvalue = 0.0
        for _ in range(iterations):
            norm = torch.sqrt(sum((part**2).sum() for part in vector))
            vector = [part / norm for part in vector]
            product = torch.autograd.grad(gradients, parameters, grad_outputs=vector, retain_graph=True)
            eigenvalue = float(sum((p * v).sum() for p, v in zip(product, vector)))
            vector = [part.detach() for part in product]
    except RuntimeError:
        return 1.0
    eigenvalue = abs(eigenvalue)
    return eigenvalue if math.isfinite(eigenvalue) and eigenvalue > 0 else 1.0
