"""The runs an LLC figure shows: which settings of each results folder, what is missing, what not to read.

``plot_runs`` is what ``llcv plot`` does: for each results folder it picks one settings-hash
folder (the one asked for, else the most recently used), reads its records, lists the
checkpoints that have no estimate yet, and draws them all with ``llcv.plotting.plot_llc``.
Nothing here prints; the command renders the returned ``PlotResult``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llcv import plotting
from llcv.health import HealthFailure
from llcv.records import LLCRecord
from llcv.results import (
    ResultsStore,
    SettingsFolder,
    Transition,
    choose_settings,
    find_transitions,
    list_settings,
    missing_checkpoints,
    record_health,
    record_order,
    run_labels,
    scope_order,
)
from llcv.settings import PlotSettings


@dataclass(frozen=True)
class PlottedRun:
    """One results folder as the figure shows it.

    Attributes:
        label: its name in the legend.
        settings_hash: the settings-hash folder read; ``asked`` says whether it was named
            (``--settings``), ``other_hashes`` lists the folder's other settings.
        records: every record of those settings, whole model and refined scopes.
        missing: checkpoints without a whole-model record yet; None when their folder is not reachable here.
        transitions: candidate transitions on the whole-model curve.
    """

    label: str
    settings_hash: str
    asked: bool
    other_hashes: tuple[str, ...]
    records: list[LLCRecord]
    missing: list[str] | None
    transitions: list[Transition]

    @property
    def refined_scopes(self) -> list[str]:
        """The blocks and classes with records of their own, in plotting order."""
        return list(dict.fromkeys(record.scope for record in sorted(self.records, key=scope_order) if not record.is_whole_model))

    @property
    def whole(self) -> list[LLCRecord]:
        """The whole-model records, in training order."""
        return sorted((record for record in self.records if record.is_whole_model), key=record_order)

    @property
    def unhealthy(self) -> list[tuple[LLCRecord, list[HealthFailure]]]:
        """Whole-model records the figure marks as not to be read (failed ones included), with their failed checks."""
        judged = [(record, *record_health(record)) for record in self.whole]
        return [(record, failures) for record, healthy, failures in judged if healthy is False]


@dataclass(frozen=True)
class PlotResult:
    """What ``plot_runs`` drew: the figure file and the runs in it."""

    path: Path
    runs: list[PlottedRun]

    def to_dict(self) -> dict[str, Any]:
        """``llcv plot --json``: the figure and, per run, its settings, records, missing checkpoints and transitions."""
        return {
            "figure": str(self.path),
            "runs": {
                run.label: {
                    "settings_hash": run.settings_hash,
                    "num_records": len(run.records),
                    "missing_checkpoints": None if run.missing is None else len(run.missing),
                    "transitions": [dataclasses.asdict(item) for item in run.transitions],
                }
                for run in self.runs
            },
        }


def read_settings_folder(results_dir: Path, settings_hash: str | None = None) -> tuple[SettingsFolder, tuple[str, ...], list[LLCRecord]]:
    """The settings ``settings_hash`` names in a results folder (a prefix will do, else the most
    recently used), the other settings hashes there, and the chosen settings' records.

    Raises:
        SettingsError: the folder is missing, holds no results, or lacks ``settings_hash``.
    """
    chosen = choose_settings(results_dir, settings_hash)
    others = tuple(entry.settings_hash for entry in list_settings(results_dir) if entry.settings_hash != chosen.settings_hash)
    return chosen, others, ResultsStore(chosen.path.parent, chosen.settings_hash).records()


def read_run(results_dir: Path, label: str, settings_hash: str | None = None, x: str = "step") -> PlottedRun:
    """Read one results folder: the settings ``settings_hash`` names (a prefix will do), else the most recently used.

    Raises:
        SettingsError: the folder is missing, holds no results, or lacks ``settings_hash``.
    """
    chosen, others, records = read_settings_folder(results_dir, settings_hash)
    return PlottedRun(
        label=label,
        settings_hash=chosen.settings_hash,
        asked=settings_hash is not None,
        other_hashes=others,
        records=records,
        missing=missing_checkpoints(records),
        transitions=find_transitions(records, x),
    )


def plot_runs(
    results_dirs: Sequence[Path], settings: PlotSettings, labels: Sequence[str] | None = None, settings_hash: str | None = None
) -> PlotResult:
    """Draw the LLC over training of one or several results folders into ``settings.out``.

    Args:
        results_dirs: folders written by ``estimate_all``, one run each.
        settings: the figure's file and axes (``[plot]``).
        labels: each run's name in the legend, in the order of ``results_dirs``; default: the folders' names.
        settings_hash: the settings to read in every folder; default: each folder's most recently used.

    Raises:
        SettingsError: a folder is missing or holds no results, no such settings, labels that
            do not match the folders, or an unsupported figure suffix.
        WriteError: the figure could not be written.
    """
    names = run_labels(results_dirs, labels)
    runs = [read_run(folder, name, settings_hash, settings.x) for folder, name in zip(results_dirs, names)]
    path = plotting.plot_llc(
        {run.label: run.records for run in runs}, settings.out, x=settings.x, log_x=settings.log_x,
        mark_transitions=settings.mark_transitions, per_parameter=settings.per_parameter,
        missing={run.label: None if run.missing is None else len(run.missing) for run in runs},
    )  # fmt: skip
    return PlotResult(Path(path), runs)
