"""The run report: one self-contained HTML page that tells the story of a run (``llcv report``).

The page is built from files only: the folders ``estimate-all`` writes, the calibrations of ``llcv
calibrate sweep`` and ``llcv calibrate auto``, and, for the model and dataset, the run's last
checkpoint where it can be reached. Figures come from ``llcv.figures.plotting`` as base64 PNG, the styles sit in the page and
nothing refers to the network, so the file opens from disk or as a mail attachment. The
template (``llcv/templates/report.html.j2``) escapes every value it is given, so a checkpoint
name or an error message read from a file cannot inject markup. ``read_figure`` writes the
paragraph that reads the LLC figure, on the page and at the end of ``llcv demo``.

Why one module: the page is one template, and each of its sections (the run, every checkpoint,
the calibrations, the chains, provenance) needs its own view of the files; the views share the
formatting helpers here.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined
from PIL import Image

from llcv.calibration import (
    CALIBRATION_FILE,
    SETTINGS_DEPENDENT,
    SWEEP_FORMAT,
    KNOB_CHANGES,
    AutoCalibration,
    figure_title,
    plot_calibration_traces,
    plot_calibration_trials,
    plot_sweep_heatmap,
    plot_sweep_traces,
    read_auto,
    recommended_row,
    relative_move_words,
    sensitivity_sentence,
    sensitivity_verdict,
    spent_words,
)
from llcv.checkpoints import read_checkpoint
from llcv.errors import LLCVError, SettingsError
from llcv.fileio import atomic_write_text
from llcv.health import HealthFailure
from llcv.figure_files import figure_bytes
from llcv.figures.plotting import plot_trace_thumbnail
from llcv.progress import SILENT, Reporter
from llcv.results import NBETA_RULE_WORDS, LLCRecord, RecordResult
from llcv.results import find_transitions, health_label, run_labels, summary_row
from llcv.figures.runs import Run, llc_figure_of, read_run
from llcv.settings import PlotSettings
from llcv.version import __version__

logger = logging.getLogger("llcv")

DEFAULT_OUT = Path("results/report.html")
TEMPLATE = "report.html.j2"
SWEEP_FILE = "sweep.json"
# Where a results folder's calibrations are looked for when none is named: beside it, as the
# defaults of estimate-all and calibrate lay them out (results/llc_estimations, results/calibration),
# and inside it, where `estimate-all --calibrate` and `llcv demo` put theirs
# (results/llc_estimations/calibration; llcv.estimation.run_calibration.CALIBRATION_FOLDER).
CALIBRATION_FOLDER = "calibration"
FIGURE_DPI = 110
THUMBNAIL_DPI = 130


@dataclass(frozen=True)
class ReportResult:
    """What ``write_report`` wrote: the page, the runs it covers and the calibration folders it shows
    (``sweeps`` of ``calibrate sweep``, ``autos`` of ``calibrate auto``)."""

    path: Path
    size_bytes: int
    runs: list[Run]
    sweeps: list[Path] = field(default_factory=list)
    autos: list[Path] = field(default_factory=list)


def _origin(records: Sequence[LLCRecord]) -> dict[str, Any] | None:
    """The model, dataset and training settings named by the last checkpoint that can be read here."""
    for record in sorted(records, key=LLCRecord.training_order, reverse=True):
        path = record.checkpoint_path
        if not path or not Path(path).is_file():
            continue
        try:
            payload = read_checkpoint(Path(path))
        except (LLCVError, OSError):
            continue
        if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
            return {key: payload.get(key) for key in ("model", "dataset", "settings", "created")}
        return None  # a foreign checkpoint (a plain state dict) does not name its model or data
    return None


def _origin_words(origin: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The model, the dataset and the training in words, from ``_origin``."""
    if not origin:
        return {"name": None, "model": None, "dataset": None, "training": None, "created": None}
    model, dataset = origin.get("model") or {}, origin.get("dataset") or {}
    train = (origin.get("settings") or {}).get("train") or {}
    details = [f"{model['num_classes']} classes" if model.get("num_classes") else None, f"{model['stem']} stem" if model.get("stem") else None]
    training = [
        f"{train['epochs']} epochs" if train.get("epochs") else None,
        f"batch {train['batch_size']}" if train.get("batch_size") else None,
        f"{train['optimizer']} at learning rate {train['lr']:g}" if train.get("optimizer") and train.get("lr") is not None else None,
        f"{train['schedule']} schedule" if train.get("schedule") else None,
        f"seed {train['seed']}" if train.get("seed") is not None else None,
    ]
    return {
        "name": str(model.get("name")),
        "model": f"{model.get('name')} ({', '.join(item for item in details if item)})" if any(details) else str(model.get("name")),
        "dataset": str(dataset["name"]) if dataset.get("name") else None,
        "training": ", ".join(item for item in training if item) or None,
        "created": origin.get("created"),
    }


def _is_calibration(folder: Path) -> bool:
    return (folder / SWEEP_FILE).is_file() or (folder / CALIBRATION_FILE).is_file()


def find_calibrations(folder: Path) -> list[Path]:
    """The calibration folders under ``folder`` (or ``folder`` itself) that hold a sweep.json or a calibration.json."""
    folder = Path(folder)
    if _is_calibration(folder):
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if _is_calibration(path))


def read_auto_folder(folder: Path) -> tuple[AutoCalibration, bool] | None:
    """A folder's calibration.json and whether its search finished, or None when it is unreadable (said in the log)."""
    path = Path(folder) / CALIBRATION_FILE
    try:
        return read_auto(path)
    except (OSError, ValueError) as error:
        logger.warning("leaving out the calibration %s: %s", path, error)
        return None


def read_sweep(folder: Path) -> dict[str, Any] | None:
    """A folder's sweep.json (docs/formats.md), or None when it is unreadable or not a sweep (said in the log)."""
    path = Path(folder) / SWEEP_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("leaving out the unreadable sweep %s: %s", path, error)
        return None
    if not isinstance(payload, dict) or payload.get("format") != SWEEP_FORMAT or not isinstance(payload.get("rows"), list):
        logger.warning("leaving out %s: not a sweep written by llcv calibrate sweep", path)
        return None
    return payload


def write_report(
    results_dirs: Sequence[Path],
    out: Path = DEFAULT_OUT,
    *,
    labels: Sequence[str] | None = None,
    settings_hash: str | None = None,
    calibration_dir: Path | None = None,
    plot: PlotSettings | None = None,
    reporter: Reporter = SILENT,
) -> ReportResult:
    """Write one self-contained HTML page on the runs in ``results_dirs``.

    Args:
        results_dirs: folders written by ``estimate-all``; several are compared side by side.
        out: the page; written atomically.
        labels: a name per results folder (default: the folders' names).
        settings_hash: which settings to read in every folder (a unique prefix); None: each
            folder's most recently used.
        calibration_dir: a calibration folder (``<results-dir>/<checkpoint-stem>/`` of ``llcv
            calibrate sweep`` or ``auto``, or the results dir above several); None: the
            ``calibration`` folders beside and inside each results folder, left out when there is none.
        plot: the LLC figure's ``x``, ``log_x`` and ``per_parameter`` (``[plot]``, as for ``llcv
            plot``); its ``out`` is not used, and candidate transitions are always marked.

    Returns:
        The page written, the runs and the calibrations it shows.

    Raises:
        SettingsError: no results, an unknown settings hash, labels that do not match the folders,
            a named calibration folder without a calibration, or ``out`` not ending in ``.html``.
        WriteError: the page could not be written.
    """
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise SettingsError(f"report {out}: the report is an HTML page; give --out a name ending in .html")
    if not results_dirs:
        raise SettingsError("no results folder given; name one with --results-dir")
    plot = plot or PlotSettings()
    runs = [read_run(folder, name, settings_hash, plot.x) for folder, name in zip(results_dirs, run_labels(results_dirs, labels))]
    if calibration_dir is not None:
        folders = find_calibrations(calibration_dir)
        if not folders:
            raise SettingsError(
                f"calibration folder {calibration_dir} holds no {SWEEP_FILE} or {CALIBRATION_FILE} (written by llcv calibrate sweep or auto)"
            )
    else:
        around = dict.fromkeys(place for run in runs for place in (run.folder.parent.parent, run.folder.parent))
        folders = list(dict.fromkeys(path for place in around for path in find_calibrations(place / CALIBRATION_FOLDER)))
    sweeps = [(folder, sweep) for folder in folders if (folder / SWEEP_FILE).is_file() and (sweep := read_sweep(folder)) is not None]
    autos = [(folder, *auto) for folder in folders if (folder / CALIBRATION_FILE).is_file() and (auto := read_auto_folder(folder)) is not None]
    html = render_report(runs, sweeps, autos=autos, plot=plot, reporter=reporter)
    atomic_write_text(out, html)
    return ReportResult(
        path=out, size_bytes=out.stat().st_size, runs=runs, sweeps=[folder for folder, _ in sweeps], autos=[folder for folder, *_ in autos]
    )


def render_report(
    runs: Sequence[Run],
    sweeps: Sequence[tuple[Path, dict[str, Any]]] = (),
    *,
    autos: Sequence[tuple[Path, AutoCalibration, bool]] = (),
    plot: PlotSettings | None = None,
    reporter: Reporter = SILENT,
) -> str:
    """The page's HTML: the template filled with the runs, the calibrations and their figures.

    Args:
        sweeps: (folder, sweep.json) of each ``calibrate sweep`` shown.
        autos: (folder, calibration, whether its search finished) of each ``calibrate auto`` shown.
        plot: see ``write_report``.
    """
    plot = plot or PlotSettings()
    thumbnails = sum(1 for run in runs for record in run.whole if _has_trace(record))
    reporter.start("report", "drawing the report's figures", 1 + 2 * len(sweeps) + 2 * len(autos) + thumbnails)
    try:
        figure = _png(llc_figure_of(runs, plot, mark_transitions=True), FIGURE_DPI)
        reporter.advance("report")
        run_views = [_run_view(index, run, reporter) for index, run in enumerate(runs)]
        sweep_views = [_sweep_view(folder, sweep, reporter) for folder, sweep in sweeps]
        auto_views = [_auto_view(folder, calibration, complete, reporter) for folder, calibration, complete in autos]
    finally:
        reporter.finish("report")
    return _environment().get_template(TEMPLATE).render(
        runs=run_views,
        sweeps=sweep_views,
        autos=auto_views,
        figure=figure,
        title=_title(run_views),
        written=_when(datetime.datetime.now(datetime.timezone.utc).isoformat()),
        llcv_version=__version__,
    )


# --- what the template is given ------------------------------------------------------------


def _title(run_views: Sequence[Mapping[str, Any]]) -> str:
    """One run: its model and dataset when known, else its label; several: their labels."""
    if len(run_views) == 1:
        origin = run_views[0]["origin"]
        if origin["name"] and origin["dataset"]:
            return f"{origin['name']} on {origin['dataset']}"
    return " vs ".join(view["label"] for view in run_views)


def _environment():
    environment = Environment(
        loader=PackageLoader("llcv", "templates"), autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    environment.filters["num"] = _number
    environment.filters["when"] = _when
    return environment


def _when(timestamp: Any) -> str:
    """An ISO-8601 timestamp to the minute in UTC (``2024-01-01 12:00 UTC``); other text as it is."""
    try:
        moment = datetime.datetime.fromisoformat(str(timestamp))
    except ValueError:
        return str(timestamp)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC" if moment.tzinfo is not None else "%Y-%m-%d %H:%M")


def _number(value: Any, spec: str = ".4g") -> str:
    """A number for a table cell: ``—`` when unknown or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def _png(figure, dpi: float) -> str:
    """A figure as a ``data:`` URI, for an ``<img>`` that needs no other file.

    The PNG is reduced to a 256-colour palette, which looks the same for these line plots and
    heatmaps and takes a third of the bytes: a run with a hundred checkpoints stays a page
    that can be mailed.
    """
    image = Image.open(io.BytesIO(figure_bytes(figure, "png", dpi))).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _has_trace(record: LLCRecord) -> bool:
    return record.result is not None and bool(record.result.llc_trace)


def _health(record: LLCRecord) -> dict[str, Any]:
    """``state`` (healthy, unhealthy, failed or unjudged) and the reasons in full, for a row or a cell."""
    healthy, failures = record.health
    state = "failed" if record.is_failed else {True: "healthy", False: "unhealthy", None: "unjudged"}[healthy]
    return {"state": state, "reasons": [failure.sentence for failure in failures]}


def _row(record: LLCRecord, transitions: Mapping[str, str]) -> dict[str, Any]:
    """A checkpoint's table row: its summary.csv columns, the candidate transition there, and its health."""
    return {**summary_row(record), "transition": transitions.get(record.checkpoint), **_health(record)}


def _distinct(values) -> list[Any]:
    return list(dict.fromkeys(value for value in values if value not in (None, "")))


def _run_view(index: int, run: Run, reporter: Reporter) -> dict[str, Any]:
    """Everything the template shows about one run, numbers still numbers, strings unescaped."""
    whole = run.whole
    results: list[RecordResult] = [record.result for record in run.records if record.result is not None]
    transitions = {item.checkpoint: item.kind for item in run.transitions}
    rows = [_row(record, transitions) for record in whole]
    thumbnails = []
    for row, record in zip(rows, whole):
        if _has_trace(record):
            thumbnails.append({**row, "image": _png(plot_trace_thumbnail(record.result), THUMBNAIL_DPI)})
            reporter.advance("report")
    versions = [result.versions for result in results]
    steps = [record.step for record in whole if record.step is not None]
    epochs = [record.epoch for record in whole if record.epoch is not None]
    finished = sorted(record.finished for record in run.records if record.finished)
    sampler = run.settings.get("sampler") or {}
    whole_results = [record.result for record in whole if record.result is not None]
    nbetas = _distinct(result.nbeta for result in whole_results)
    asked_nbeta = sampler.get("nbeta")
    # settings.json from before llcv 0.10 says null for the batch rule, then the default
    nbeta_rule = "batch" if asked_nbeta is None else asked_nbeta if isinstance(asked_nbeta, str) else "set"
    return {
        "anchor": f"run-{index + 1}",
        "label": run.label,
        "folder": str(run.folder),
        "settings_hash": run.settings_hash,
        "other_hashes": list(run.other_hashes),
        "origin": _origin_words(_origin(run.records)),
        "num_checkpoints": len(whole),
        "steps": (min(steps), max(steps)) if steps else None,
        "epochs": (min(epochs), max(epochs)) if epochs else None,
        "finished": (finished[0], finished[-1]) if finished else None,
        "sampler": sampler,
        "nbeta": asked_nbeta if isinstance(asked_nbeta, (int, float)) else (nbetas[0] if len(nbetas) == 1 else None),
        "nbeta_rule": NBETA_RULE_WORDS[nbeta_rule],
        "burnin": _burnin_words(sampler.get("num_burnin_steps"), whole_results),
        "hashed": run.settings.get("hashed") or {},
        "loss": run.settings.get("loss"),
        "calibration": _calibration_entry(run.settings.get("calibration")),
        "reading": " ".join(filter(None, [read_figure(run.records), calibration_reading(run.settings.get("calibration"))])),
        "rows": rows,
        "estimated": [row for row in rows if row["llc_mean"] is not None],
        "num_healthy": sum(record.health[0] is True for record in whole),
        "unhealthy": [health_label(record, record.health[1]) for record in run.unhealthy],
        "missing": run.missing,
        "thumbnails": thumbnails,
        "refined": _refined_tables(run.records),
        "failed": [
            {"checkpoint": record.checkpoint, "scope": record.scope, "step": record.step, "error": record.error or "failed",
             "worker": record.worker.to_dict() if record.worker is not None else {}}
            for record in run.failed
        ],  # fmt: skip
        "provenance": {
            **{name: _distinct(item.get(key) for item in versions) for name, key in (
                ("llcv", "llcv"), ("torch", "torch"), ("devinterp", "devinterp"), ("python", "python"), ("git commit", "git_commit"),
            )},  # fmt: skip
            "device": _distinct(result.device for result in results),
            "precision": _distinct(result.ran_in for result in results),
            "threads": _distinct(result.num_threads for result in results),
            "chains run": _distinct(result.chain_execution for result in results),
            "BatchNorm statistics": _distinct(result.batchnorm_statistics for result in results),
            "nβ": _distinct(
                format(result.nbeta, ".4g") + (f" ({NBETA_RULE_WORDS[result.nbeta_rule]})" if result.nbeta_rule else "")
                for result in results if result.nbeta is not None
            ),
            "burn-in steps": _distinct(f"{result.burnin_steps} ({result.burnin_rule})" for result in results if result.burnin_rule),
            "sampled parameters (whole model)": _distinct(record.num_parameters for record in whole),
            "hosts": _distinct(record.worker.host for record in run.records if record.worker is not None),
            "executor": _distinct(record.worker.executor for record in run.records if record.worker is not None),
        },
    }


def _burnin_words(asked: Any, results: Sequence[RecordResult]) -> str:
    """The run's burn-in in words: ``100 burn-in steps``, or the automatic one's steps and rule."""
    if asked != "auto":
        return f"{asked} burn-in steps"
    steps = _distinct(result.burnin_steps for result in results)
    capped = ", cut short by its cap" if any(result.burnin_rule == "auto-capped" for result in results) else ""
    if len(steps) == 1:
        return f"{steps[0]:,} burn-in steps (automatic, 2 / (ε γ){capped})"
    return f"an automatic burn-in of 2 / (ε γ) steps{capped}"


def _refined_tables(records: Sequence[LLCRecord]) -> list[dict[str, Any]]:
    """Per kind of refined scope (blocks, classes): a row per scope, a column per checkpoint."""
    refined = [record for record in records if record.kind != "model"]
    tables = []
    for kind in ("block", "class"):
        chosen = [record for record in refined if record.kind == kind]
        if not chosen:
            continue
        columns = list(dict.fromkeys(record.checkpoint for record in sorted(chosen, key=LLCRecord.training_order)))
        steps = {record.checkpoint: record.step for record in chosen}
        cells: dict[str, dict[str, dict[str, Any]]] = {}
        for record in sorted(chosen, key=LLCRecord.scope_order):
            cells.setdefault(record.scope, {})[record.checkpoint] = {
                "llc_mean": record.llc_mean, "llc_std": record.llc_std, "error": record.error, **_health(record),
            }  # fmt: skip
        tables.append({
            "kind": kind,
            "columns": [{"checkpoint": name, "step": steps[name]} for name in columns],
            "rows": [{"scope": scope, "cells": [by_checkpoint.get(name) for name in columns]} for scope, by_checkpoint in cells.items()],
        })  # fmt: skip
    return tables


def _calibration_entry(entry: Any) -> dict[str, Any] | None:
    """settings.json's ``calibration`` entry for the provenance: the checkpoint's name, the file, why, how it holds."""
    if not isinstance(entry, Mapping):
        return None
    return {
        "checkpoint": Path(str(entry.get("checkpoint") or "")).name or "an unnamed checkpoint",
        "recommended": entry.get("recommended"),
        "reason": entry.get("reason") or "",
        "settings_dependent": list(entry.get("settings_dependent") or []),
    }


def calibration_reading(entry: Mapping[str, Any] | None) -> str | None:
    """A sentence on where a run's settings came from and how its LLC depends on them, from
    settings.json's ``calibration`` entry (``llcv.estimation.run_calibration``); None without one."""
    if not isinstance(entry, Mapping):
        return None
    checkpoint = Path(str(entry.get("checkpoint") or "")).name or "a reference checkpoint"
    try:
        sensitivity = sensitivity_sentence(entry.get("sensitivity") or [])
    except (ValueError, TypeError):  # an entry edited by hand, or from a newer llcv
        return f"The settings came from llcv calibrate auto on {checkpoint}."
    return f"The settings came from llcv calibrate auto on {checkpoint}: {sensitivity}."


def _auto_view(folder: Path, calibration: AutoCalibration, complete: bool, reporter: Reporter) -> dict[str, Any]:
    """An automatic calibration: its spending, recommendation, sensitivity, trials and figures."""
    trials = [trial.model_dump(mode="json") for trial in calibration.trials]
    title = figure_title(calibration)
    trials_figure = traces_figure = None
    if trials:
        trials_figure = _png(plot_calibration_trials(trials, title, calibration.pick), FIGURE_DPI)
        reporter.advance("report")
        traces_figure = _png(plot_calibration_traces(trials, title, calibration.pick), FIGURE_DPI)
        reporter.advance("report")
    sensitivity = [
        {**entry.model_dump(mode="json"), "change": KNOB_CHANGES.get(entry.knob, entry.knob), "relative_words": relative_move_words(entry),
         "verdict": sensitivity_verdict(entry)}
        for entry in calibration.sensitivity
    ]  # fmt: skip
    return {
        "folder": str(folder),
        "checkpoint": Path(calibration.checkpoint or folder.name).name,
        "complete": complete,
        "recommended": calibration.recommended.model_dump(mode="json") if calibration.recommended is not None else None,
        "nbeta": calibration.nbeta,
        "reason": calibration.reason,
        "spent": spent_words(calibration.spent),
        "sensitivity": sensitivity,
        "sentence": sensitivity_sentence(calibration.sensitivity) if sensitivity else None,
        "dependent_share": SETTINGS_DEPENDENT,
        "trials": [{**trial, "number": index + 1, "pick": index == calibration.pick} for index, trial in enumerate(trials)],
        "trials_figure": trials_figure,
        "traces_figure": traces_figure,
    }


def _sweep_view(folder: Path, sweep: Mapping[str, Any], reporter: Reporter) -> dict[str, Any]:
    """A calibration sweep: its figures, its rows with the rule's verdict, and the recommendation."""
    rows = [dict(row) for row in sweep["rows"]]
    recommended = sweep.get("recommended")
    chosen = recommended_row(rows, recommended)
    for index, row in enumerate(rows):
        row["recommended"] = index == chosen
    checkpoint = Path(str(sweep.get("checkpoint") or folder.name)).name
    title = f"sweep of {checkpoint}"
    heatmap = traces = None
    if rows:
        heatmap = _png(plot_sweep_heatmap(rows, title, sweep.get("rule") or {}, chosen), FIGURE_DPI)
        reporter.advance("report")
        traces = sweep.get("traces") or []
        traces = _png(plot_sweep_traces(rows, traces, title), FIGURE_DPI) if len(traces) == len(rows) else None
        reporter.advance("report")
    return {
        "folder": str(folder),
        "checkpoint": checkpoint,
        "complete": bool(sweep.get("complete")),
        "rule": sweep.get("rule") or {},
        "rows": rows,
        "recommended": recommended,
        "reason": sweep.get("reason") or "",
        "heatmap": heatmap,
        "traces": traces,
    }


# --- the paragraph that reads the figure ---------------------------------------------------


def _std(record: LLCRecord) -> float:
    return record.llc_std or 0.0


_LISTED = 5  # unhealthy checkpoints named one by one; the rest are counted


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _with_reasons(judged: list[tuple[LLCRecord, list[HealthFailure]]]) -> str:
    """``step 12 (R-hat 1.42 > 1.1) and step 24 (2 of 4 chains diverged)``: each with its first reason."""
    named = [health_label(record, failures) for record, failures in judged[:_LISTED]]
    if len(judged) > _LISTED:
        named.append(f"{len(judged) - _LISTED} more")
    return _and(named)


def _not_read(unhealthy: list[tuple[LLCRecord, list[HealthFailure]]], failed: list[LLCRecord]) -> list[str]:
    """The sentences naming the estimates the paragraph leaves out, and the checkpoints without one."""
    sentences = []
    if unhealthy:
        many = len(unhealthy) > 1
        sentences.append(
            f"Not read: {_with_reasons(unhealthy)}, whose estimate{'s are' if many else ' is'} unhealthy; "
            f"{'they are' if many else 'it is'} hollow in the figure."
        )
    if failed:
        sentences.append(f"No estimate at {_with_reasons([(record, record.health[1]) for record in failed])}.")
    return sentences


def read_figure(records: Sequence[LLCRecord | Mapping[str, Any]]) -> str:
    """A plain-language paragraph on how the LLC moved against loss and accuracy.

    Only estimates that can be read at face value count (healthy ones, and those written before
    health verdicts, except where chains diverged); the others are named with their first reason.

    Args:
        records: a run's records (``LLCRecord`` objects or their JSON dicts).
    """
    whole = sorted(
        (record for record in map(LLCRecord.coerce, records) if record.is_whole_model),
        key=lambda record: (record.step is None, record.step or 0),
    )
    estimated = [record for record in whole if record.has_estimate]
    failed = [record for record in whole if record.is_failed]
    judged = [(record, *record.health) for record in estimated]
    done = [record for record, healthy, _ in judged if healthy is not False]
    unhealthy = [(record, failures) for record, healthy, failures in judged if healthy is False]
    if len(done) < 2:
        if not unhealthy:
            return " ".join(["Too few checkpoints were estimated to read a trend.", *_not_read([], failed)])
        if len(estimated) == 1:
            count = "the only estimate is unhealthy"
        else:
            count = f"{'only 1' if done else 'none'} of the {len(estimated)} estimates is healthy"
        return " ".join([f"Too few trustworthy estimates to read a trend: {count}.", *_not_read(unhealthy, failed)])
    first, last = done[0], done[-1]

    def llc(record: LLCRecord) -> float:
        return record.llc_mean

    def metric(record: LLCRecord, name: str) -> float | None:
        return getattr(record.metrics, name)

    steps = [record.step for record in done]
    rises = [(llc(b) - llc(a), a, b) for a, b in zip(done, done[1:])]
    biggest, start, end = max(rises, key=lambda item: abs(item[0]))
    sentences = [
        f"The LLC went from {llc(first):.2f} at step {steps[0]} to {llc(last):.2f} at step {steps[-1]}: "
        f"as training proceeded the model {'grew more' if llc(last) > llc(first) else 'became less'} complex "
        "in the sense of singular learning theory, i.e. its loss basin became "
        f"{'sharper in more directions' if llc(last) > llc(first) else 'flatter'}."
    ]
    first_loss, last_loss = metric(first, "val_loss"), metric(last, "val_loss")
    first_acc, last_acc = metric(first, "val_acc"), metric(last, "val_acc")
    if None not in (first_loss, last_loss, first_acc, last_acc):
        sentences.append(
            f"Meanwhile validation loss fell from {first_loss:.2f} to {last_loss:.2f} and accuracy rose from "
            f"{first_acc:.0%} to {last_acc:.0%} (lower panel)."
        )
    peak = max(done, key=llc)
    if peak is not first and peak is not last and llc(peak) > max(llc(first), llc(last)) + 2 * _std(peak):
        peak_loss = metric(peak, "val_loss")
        sentences.append(
            f"On the way it peaked at {llc(peak):.2f} at step {peak.step}"
            + (f" (validation loss {peak_loss:.2f} there)," if peak_loss is not None else ",")
            + " and came back down as the model settled: a rise and fall of complexity, the kind of"
            " developmental stage the LLC is tracked to find."
        )
    sentences.append(
        f"The largest change between neighbouring checkpoints came between steps {start.step} and "
        f"{end.step} ({biggest:+.2f})."
    )
    transitions = find_transitions(done)
    if transitions:
        listed = ", ".join(f"step {transition.step} ({transition.kind})" for transition in transitions)
        sentences.append(f"Candidate transitions, where the slope against log-step turns or peaks: {listed}; read them with the ± std band.")
    sentences.extend(_not_read(unhealthy, failed))
    return " ".join(sentences)
