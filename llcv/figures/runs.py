"""The runs an LLC figure shows: which settings of each results folder, what is missing, what not to read.

A ``Run`` is one results folder as ``llcv plot``, the LLC figure and ``llcv report`` all read it:
``read_run`` picks one settings-hash folder (the one asked for, else the most recently used),
reads its records, lists the checkpoints that have no estimate yet and finds the candidate
transitions. ``Run.unhealthy`` names the estimates not to read by each record's own verdict
(``LLCRecord.health``), the one the figure draws hollow. ``llc_figure_of`` draws runs with
``llcv.figures.plotting.llc_figure`` for the plot and the report alike, and ``plot_runs`` is what ``llcv
plot`` does. Nothing here prints; the commands render what is returned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from llcv.figures import plotting
from llcv.figure_files import save_figure
from llcv.results import LLCRecord
from llcv.results import (
    ResultsStore,
    Transition,
    choose_settings,
    find_transitions,
    list_settings,
    missing_checkpoints,
    run_labels,
    scope_order,
)
from llcv.settings import PlotSettings


@dataclass(frozen=True)
class Run:
    """One results folder as the figure, ``llcv plot`` and the report show it.

    Attributes:
        label: its name in the legend and on the report's page.
        folder: the settings-hash folder read; ``settings_hash`` its name, ``settings`` its
            settings.json. ``asked`` says whether that hash was named (``--settings``);
            ``other_hashes`` lists the results folder's other settings, not shown.
        records: every record of those settings, whole model and refined scopes, in training order.
        missing: checkpoints without a whole-model record yet; None when their folder is not reachable here.
        transitions: candidate transitions on the whole-model curve.
    """

    label: str
    folder: Path
    settings_hash: str
    settings: dict[str, Any]
    asked: bool
    other_hashes: tuple[str, ...]
    records: list[LLCRecord]
    missing: list[str] | None
    transitions: list[Transition]

    @property
    def whole(self) -> list[LLCRecord]:
        """The whole-model records, in training order."""
        return [record for record in self.records if record.is_whole_model]

    @property
    def refined_scopes(self) -> list[str]:
        """The blocks and classes with records of their own, in plotting order."""
        return list(dict.fromkeys(record.scope for record in sorted(self.records, key=scope_order) if not record.is_whole_model))

    @property
    def failed(self) -> list[LLCRecord]:
        """Every failed record, whole model and refined scopes."""
        return [record for record in self.records if record.is_failed]

    @property
    def unhealthy(self) -> list[LLCRecord]:
        """Whole-model records not to be read (``LLCRecord.is_unhealthy``: failed ones included); the
        figure draws those with an estimate hollow, and ``record.health`` says why."""
        return [record for record in self.whole if record.is_unhealthy]


@dataclass(frozen=True)
class PlotResult:
    """What ``plot_runs`` drew: the figure file and the runs in it."""

    path: Path
    runs: list[Run]

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


def read_run(results_dir: Path, label: str, settings_hash: str | None = None, x: str = "step") -> Run:
    """Read one results folder: the settings ``settings_hash`` names (a prefix will do), else the most recently used.

    Args:
        label: the run's name in the legend and on the page.
        x: ``step`` or ``epoch``, the axis the transitions are found along.

    Raises:
        SettingsError: the folder is missing, holds no results, or lacks ``settings_hash``.
    """
    chosen = choose_settings(results_dir, settings_hash)
    records = ResultsStore(chosen.path.parent, chosen.settings_hash).records()
    return Run(
        label=label,
        folder=chosen.path,
        settings_hash=chosen.settings_hash,
        settings=chosen.settings,
        asked=settings_hash is not None,
        other_hashes=tuple(entry.settings_hash for entry in list_settings(results_dir) if entry.settings_hash != chosen.settings_hash),
        records=records,
        missing=missing_checkpoints(records),
        transitions=find_transitions(records, x),
    )


def llc_figure_of(runs: Sequence[Run], settings: PlotSettings, *, mark_transitions: bool) -> Figure:
    """The LLC-over-training figure of ``runs`` (``llcv.figures.plotting.llc_figure``), with the axes of
    ``settings``, each run's missing checkpoints counted, and its transitions marked if asked."""
    return plotting.llc_figure(
        {run.label: run.records for run in runs}, x=settings.x, log_x=settings.log_x, per_parameter=settings.per_parameter,
        transitions={run.label: run.transitions for run in runs} if mark_transitions else None,
        missing={run.label: None if run.missing is None else len(run.missing) for run in runs},
    )  # fmt: skip


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
    path = save_figure(llc_figure_of(runs, settings, mark_transitions=settings.mark_transitions), settings.out)
    return PlotResult(Path(path), runs)
