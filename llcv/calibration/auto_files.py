"""The files of an automatic calibration, and the words that read it (``llcv calibrate auto``).

``calibrate_and_save`` runs ``calibrate_auto`` with its store in the output folder, so that an
interrupted run resumes where it stopped, and ``save_auto`` writes beside the store
(docs/formats.md, "Calibration"):

    calibration.json          the store: every trial, the pick, the sensitivity, what was spent
    recommended.json          the sampler fields the search decided, with its reason and sensitivity
    trials.csv                one row per trial (its fields but the trace)
    calibration_trials.<fmt>  each trial's LLC against epsilon (``llcv.figures.plotting``)
    calibration_traces.<fmt>  each trial's chain-mean LLC over its steps

``spent_words``, ``sensitivity_verdict``, ``relative_move_words`` and ``sensitivity_sentence``
say what a search spent and how its pick's LLC depends on the settings, in the same words on
the terminal, in the report and in the demo's reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from llcv.calibration.auto import TRIAL_CHAINS, calibrate_auto
from llcv.calibration.auto_store import AUTO_FORMAT, AUTO_FORMAT_VERSION, payload_dict
from llcv.calibration.outcome import SETTINGS_DEPENDENT, AutoCalibration, Budget, Sensitivity, Spent
from llcv.calibration.trials import Trial
from llcv.errors import EstimationError
from llcv.fileio import atomic_write_json, atomic_write_text, csv_text, finite_or_none
from llcv.sampling import LossSpec
from llcv.calibration.figures import plot_calibration_traces, plot_calibration_trials
from llcv.figure_files import save_figure
from llcv.progress import SILENT, Reporter
from llcv.settings import AUTO_CALIBRATION_FIELDS, CalibrateSettings, SamplerSettings
from llcv.targets import LoadedTarget

CALIBRATION_FILE = "calibration.json"
RECOMMENDED_FILE = "recommended.json"
TRIALS_FILE = "trials.csv"
TRIALS_FIGURE = "calibration_trials"
TRACES_FIGURE = "calibration_traces"
AUTO_SOURCE = "calibrate auto"  # recommended.json's "source"
# trials.csv's columns: a trial's fields, without its trace (the traces figure draws it).
TRIAL_FIELDS = tuple(name for name in Trial.model_fields if name != "trace")
# What each knob of the sensitivity check changed, in words, and its short name for a table.
KNOB_CHANGES = {"gamma": "halving gamma", "epsilon": "halving epsilon", "batch_size": "doubling the batch"}
KNOB_NAMES = {"gamma": "gamma", "epsilon": "epsilon", "batch_size": "batch"}


def auto_budget(options: CalibrateSettings) -> Budget:
    """The search's budget from ``[calibrate]`` ``budget_steps`` and ``budget_seconds``."""
    return Budget(chain_steps=options.budget_steps, seconds=options.budget_seconds)


def calibrate_and_save(
    directory: Path,
    loaded: LoadedTarget,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    *,
    base: SamplerSettings,
    budget: Budget = Budget(),
    figure_format: str = "png",
    reporter: Reporter = SILENT,
) -> AutoCalibration:
    """``calibrate_auto`` on a loaded checkpoint with its store in ``directory/calibration.json``, then its files (``save_auto``).

    A rerun with the same model, data and base settings reuses the stored trials, so an
    interrupted calibration resumes and a finished one runs no new trial.

    Args:
        directory: the output folder, ``<results-dir>/<checkpoint-stem>/`` (``llcv.calibration.output_dir``).
        loaded: the checkpoint's model and data (``llcv.targets.Target(path).load()``); the files
            name its path.
        base, budget, loss, device, reporter: as for ``calibrate_auto``.
        figure_format: png, pdf or svg.

    Returns:
        The calibration. A search that found no usable settings is returned too, with
        ``recommended`` None and the reason: its trials and figures are written all the same.

    Raises:
        EstimationError: the search stopped before it could store its outcome.
        WriteError: a file could not be written.
    """
    directory = Path(directory)
    store = directory / CALIBRATION_FILE
    try:
        result = calibrate_auto(
            loaded.model, loaded.dataset, loss, device, base=base, budget=budget, store=store, checkpoint=loaded.checkpoint.path, reporter=reporter
        )  # fmt: skip
    except EstimationError:
        result = _given_up(store)  # the search stores its outcome before it gives up: its trials say why
        if result is None:
            raise
    save_auto(result, directory, figure_format)
    return result


def _given_up(store: Path) -> AutoCalibration | None:
    """The stored outcome of a search that ended without a recommendation; None when there is none."""
    try:
        result, complete = read_auto(store)
    except (OSError, ValueError):
        return None
    return result if complete and result.recommended is None else None


def save_auto(result: AutoCalibration, directory: Path, fmt: str = "png") -> list[Path]:
    """Write ``calibration.json``, ``recommended.json`` (if any), ``trials.csv`` and the two figures.

    A ``recommended.json`` left by an earlier calibration is removed when this one recommends
    nothing, so the folder never recommends settings its own search did not find.

    Returns:
        The files written.
    """
    directory = Path(directory)
    written = [atomic_write_json(directory / CALIBRATION_FILE, payload_dict(result))]
    recommended = directory / RECOMMENDED_FILE
    if result.recommended is not None:
        written.append(atomic_write_json(recommended, recommended_dict(result)))
    else:
        recommended.unlink(missing_ok=True)
    written.append(atomic_write_text(directory / TRIALS_FILE, trials_csv(result.trials)))
    trials = [trial.model_dump(mode="json") for trial in result.trials]
    written.append(save_figure(plot_calibration_trials(trials, figure_title(result), result.pick), directory / f"{TRIALS_FIGURE}.{fmt}"))
    written.append(save_figure(plot_calibration_traces(trials, figure_title(result), result.pick), directory / f"{TRACES_FIGURE}.{fmt}"))
    return written


def read_auto(path: Path) -> tuple[AutoCalibration, bool]:
    """A ``calibration.json`` read back: the calibration and whether its search finished.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not JSON, not written by ``calibrate auto``, of another format version,
            or its fields do not validate.
    """
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or payload.get("format") != AUTO_FORMAT:
        raise ValueError("not a calibration written by llcv calibrate auto")
    if payload.get("format_version") != AUTO_FORMAT_VERSION:
        raise ValueError(f"format_version {payload.get('format_version')!r}; this llcv reads {AUTO_FORMAT_VERSION}")
    fields = {key: value for key, value in payload.items() if key not in ("format", "format_version", "complete")}
    return AutoCalibration.model_validate(fields), bool(payload.get("complete"))


def recommended_dict(result: AutoCalibration) -> dict[str, Any] | None:
    """The content of ``recommended.json``: the decided sampler fields (``AUTO_CALIBRATION_FIELDS``,
    nbeta as the base had it: a rule or a number) and the notes on why; None without a recommendation."""
    if result.recommended is None:
        return None
    settings = result.recommended.model_dump(mode="json")
    return finite_or_none({
        **{field: settings[field] for field in AUTO_CALIBRATION_FIELDS},
        "source": AUTO_SOURCE,
        "reason": result.reason,
        "sensitivity": [entry.model_dump(mode="json") for entry in result.sensitivity],
        "settings_dependent": result.settings_dependent,
        "checkpoint": result.checkpoint,
    })  # fmt: skip


def trials_csv(trials: Sequence[Trial]) -> str:
    """``trials.csv``: one row per trial, columns ``TRIAL_FIELDS``."""
    return csv_text(TRIAL_FIELDS, (trial.model_dump(mode="json") for trial in trials))


def figure_title(result: AutoCalibration) -> str:
    """The figures' title: which checkpoint, the temperature and the base the trials shared, and what was spent."""
    where = Path(result.checkpoint).name if result.checkpoint else "model"
    base = result.fingerprint.get("base") or {}  # the base settings every trial shared
    rule = base.get("nbeta")
    shared = [f"nbeta {result.nbeta:.4g}" + (f" ({rule})" if isinstance(rule, str) else ""), f"{TRIAL_CHAINS} chains per trial"]
    shared += [f"{name}{base[key]}" for name, key in (("batch ", "batch_size"), ("", "sampler"), ("seed ", "seed")) if key in base]
    return f"calibrate auto of {where}: {', '.join(shared)}\n{spent_words(result.spent)}"


# --- words --------------------------------------------------------------------------------------


def duration_words(seconds: float) -> str:
    """``12 s``, ``3 min 12 s``, ``2 h 5 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def spent_words(spent: Spent | Mapping[str, Any]) -> str:
    """What a search spent against its budget:
    ``7 trials, 96,000 steps (chains x steps), 3 min 12 s, of a budget of 400,000 steps``."""
    spent = Spent.model_validate(spent) if isinstance(spent, Mapping) else spent
    limits = []
    if spent.budget.chain_steps is not None:
        limits.append(f"{spent.budget.chain_steps:,} steps")
    if spent.budget.seconds is not None:
        limits.append(duration_words(spent.budget.seconds))
    budget = f"of a budget of {' and '.join(limits)}" if limits else "with no budget"
    words = (
        f"{spent.trials} trial{'' if spent.trials == 1 else 's'}, {spent.chain_steps:,} steps (chains x steps), "
        f"{duration_words(spent.seconds)}, {budget}"
    )
    return words + ("; the budget is spent" if spent.exhausted and limits else "")


def _as_sensitivity(entry: Sensitivity | Mapping[str, Any]) -> Sensitivity:
    return Sensitivity.model_validate(entry) if isinstance(entry, Mapping) else entry


def percent_words(share: float, signed: bool = False) -> str:
    """A share as a percentage, one decimal below 10%: ``3.2%``, ``40%``; with ``signed``, ``+3.2%``."""
    words = format(share, ".1%" if abs(share) < 0.1 else ".0%")
    return f"+{words}" if signed and share >= 0 else words


def relative_move_words(entry: Sensitivity | Mapping[str, Any]) -> str:
    """The move of the LLC with its standard error, relative to the pick's LLC where it has one:
    ``+3% ± 4%``, else ``+0.012 ± 0.02``, ``at least +49% ± 2%`` for a lower bound (a changed
    trial that had not relaxed); a dash where it was not measured."""
    entry = _as_sensitivity(entry)
    if entry.move is None or entry.move_se is None:
        return "—"
    bound = "at least " if entry.at_least else ""
    if entry.relative is None or not entry.llc:
        return f"{bound}{entry.move:+.3g} ± {entry.move_se:.2g}"
    return f"{bound}{percent_words(entry.relative, signed=True)} ± {percent_words(entry.move_se / abs(entry.llc))}"


def sensitivity_verdict(entry: Sensitivity | Mapping[str, Any]) -> str:
    """``settings-dependent``, ``holds``, ``unresolved`` (its noise could hide a settings-dependent
    move), or ``not measured: <why>``."""
    entry = _as_sensitivity(entry)
    if entry.settings_dependent is None:
        return f"not measured: {entry.note}" if entry.note else "not measured"
    if entry.settings_dependent:
        return "settings-dependent"
    return "unresolved" if entry.unresolved else "holds"


def sensitivity_sentence(sensitivity: Sequence[Sensitivity | Mapping[str, Any]]) -> str:
    """The pick's sensitivity in one sentence: ``halving gamma moves the LLC by +3% ± 4%, halving
    epsilon by -1% ± 2%, doubling the batch by +0.5% ± 3%; none is settings-dependent``."""
    entries = [_as_sensitivity(entry) for entry in sensitivity]
    if not entries:
        return "its sensitivity to the settings was not measured"
    clauses, moved = [], False
    for entry in entries:
        change = KNOB_CHANGES.get(entry.knob, entry.knob)
        if entry.settings_dependent is None:
            clauses.append(f"{change} was not measured ({entry.note or 'no trial'})")
        else:
            clauses.append(f"{change} {'by' if moved else 'moves the LLC by'} {relative_move_words(entry)}")
            moved = True
    dependent = [entry.knob for entry in entries if entry.settings_dependent]
    if dependent:
        verdict = (
            f"settings-dependent: {', '.join(dependent)} (the LLC moves by more than {SETTINGS_DEPENDENT:.0%} of itself "
            "beyond two standard errors)"
        )
    else:
        verdict = "none is settings-dependent" if all(entry.settings_dependent is not None for entry in entries) else "none measured is settings-dependent"
    unresolved = [entry.knob for entry in entries if entry.unresolved]
    if unresolved:
        verdict += (
            f", but the move of {', '.join(unresolved)} is unresolved (two standard errors of it exceed "
            f"{SETTINGS_DEPENDENT:.0%} of the LLC, so a settings-dependent move could hide in its noise)"
        )
    return f"{', '.join(clauses)}; {verdict}"
