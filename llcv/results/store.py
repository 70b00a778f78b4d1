"""The results store: one JSON record per (checkpoint, scope), in a folder per sampler-settings hash.

Layout (docs/formats.md, "LLC results")::

    <results-dir>/<settings-hash>/settings.json                     the sampler settings
    <results-dir>/<settings-hash>/<checkpoint-stem>.json            scope "model"
    <results-dir>/<settings-hash>/<checkpoint-stem>__<scope>.json   any other scope
    <results-dir>/<settings-hash>/summary.csv                       one row per record, rebuilt
    <results-dir>/<settings-hash>/.claims/                          workers' claims (llcv.estimation.claims)

Every file is written atomically, so readers (``load_results``, ``llcv plot``, a notebook) may
run while workers write. Records are ``llcv.results.records.LLCRecord`` objects; a file that is not a
readable record is skipped with one warning naming it. The settings hash names a folder by the sampler fields that change
results, leaving out fields at their default value, so adding a setting with a default later
does not orphan existing results.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from llcv.checkpoints import CHECKPOINT_SUFFIXES, list_checkpoints
from llcv.errors import LLCVError, SettingsError
from llcv.fileio import atomic_write_json, atomic_write_text
from llcv.health import HealthFailure
# The record's format constants live in llcv.results.records; importing them from here still works.
from llcv.results.records import DEFAULT_SCOPE, RECORD_FORMAT, RECORD_FORMAT_VERSION, LLCRecord, RecordError, Status  # noqa: F401
from llcv.settings import SamplerSettings

logger = logging.getLogger("llcv")
SETTINGS_FILE = "settings.json"
SUMMARY_FILE = "summary.csv"
CLAIMS_FOLDER = ".claims"
DEFAULT_LOSS = "cross_entropy"
HASH_LENGTH = 12
FINGERPRINT_BYTES = 1024 * 1024  # the fingerprint hashes the first and the last MiB
SUMMARY_COLUMNS = (
    "checkpoint", "step", "epoch", "scope", "status", "llc_mean", "llc_std", "llc_se", "healthy", "health_reasons",
    "mala_acceptance", "r_hat", "ess", "diverged_chains", "train_loss", "val_loss", "val_acc", "elapsed_seconds", "error",
)  # fmt: skip
_SCOPE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=,+-]*$")
_STEP_NAME = re.compile(r"^step_(\d+)\.pt$")


# --- the settings hash ----------------------------------------------------------------------


def loss_name(loss: str | Callable) -> str:
    """How a loss is named in the settings hash: its name, or a callable's qualified name."""
    if isinstance(loss, str):
        return loss
    return f"{getattr(loss, '__module__', '?')}.{getattr(loss, '__qualname__', type(loss).__name__)}"


# Fields whose default changed after results were first hashed, with the value that older hashes
# stand for. A field is hashed whenever it differs from this baseline, so an older folder keeps
# naming the results it computed, and results computed the new way get a new folder.
# nbeta's baseline is "batch", which settings from before llcv 0.10 say as null (the validator
# reads it so), and the burn-in's is 0: their folders keep their names.
HASH_BASELINE = {"bn_stats": "checkpoint", "mala": True, "bn_mode": "eval", "nbeta": "batch", "num_burnin_steps": 0}


def hashed_settings(settings: SamplerSettings, loss: str | Callable = DEFAULT_LOSS) -> dict[str, Any]:
    """The fields the settings hash covers: every sampler field not at its baseline (its default,
    or ``HASH_BASELINE``), plus a non-default loss. ``bn_samples`` counts only where statistics are
    recomputed; with batch statistics (``bn_mode="batch"``) neither it nor ``bn_stats`` means anything."""
    baseline = {**type(settings)().model_dump(mode="json"), **HASH_BASELINE}
    values = settings.model_dump(mode="json")
    if values.get("bn_mode") == "batch":
        values.pop("bn_stats", None)
    if values.get("bn_stats") != "recompute":
        values.pop("bn_samples", None)
    hashed = {key: value for key, value in values.items() if key not in baseline or value != baseline[key]}
    if values.get("bn_stats") == "recompute":
        hashed["bn_samples"] = values["bn_samples"]
    name = loss_name(loss)
    if name != DEFAULT_LOSS:
        hashed["loss"] = name
    return hashed


def canonical_json(payload: Any) -> str:
    """Sorted keys, no whitespace: equal payloads give equal strings."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def settings_hash(settings: SamplerSettings, loss: str | Callable = DEFAULT_LOSS) -> str:
    """The first 12 hex digits of sha256 over the canonical JSON of ``hashed_settings``."""
    digest = hashlib.sha256(canonical_json(hashed_settings(settings, loss)).encode("utf-8")).hexdigest()
    return digest[:HASH_LENGTH]


# --- names and fingerprints -----------------------------------------------------------------


def checkpoint_stem(name: str) -> str:
    """A checkpoint's file name without its checkpoint suffix (``.pth.tar`` counts as one)."""
    for suffix in sorted(CHECKPOINT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def check_scope(scope: str) -> str:
    """A scope names a record next to its checkpoint: ``model``, ``layer3``, ``class=7``.

    Raises:
        SettingsError: the scope is empty or holds characters unsafe in a file name.
    """
    if not _SCOPE_PATTERN.match(scope) or "__" in scope:
        raise SettingsError(f"scope {scope!r}: use letters, digits and _ . = , + - (no '__')")
    return scope


def record_stem(checkpoint: str, scope: str = DEFAULT_SCOPE) -> str:
    """``<checkpoint-stem>`` for the whole model, ``<checkpoint-stem>__<scope>`` otherwise."""
    stem = checkpoint_stem(checkpoint)
    return stem if scope == DEFAULT_SCOPE else f"{stem}__{check_scope(scope)}"


def step_from_name(name: str) -> int | None:
    """The step in an llcv checkpoint name ``step_00001234.pt``; None for other names."""
    match = _STEP_NAME.match(name)
    return int(match.group(1)) if match else None


def fingerprint(path: Path) -> dict[str, Any]:
    """Size, modification time and a sha256 of the first and last MiB: cheap, and changes with the file.

    Raises:
        OSError: the file cannot be read.
    """
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, stat.st_size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ends_sha256": digest.hexdigest()}


# --- records --------------------------------------------------------------------------------


# The functions below take an LLCRecord, or a record's JSON object (validated on use: a dict that
# is not a record raises RecordError).


def scope_kind(record: LLCRecord | Mapping[str, Any]) -> str:
    """``model``, ``block`` or ``class``: ``LLCRecord.kind``."""
    return LLCRecord.coerce(record).kind


def scope_order(record: LLCRecord | Mapping[str, Any]) -> tuple:
    """The whole model, then blocks in the model's declared order, then classes by label (``LLCRecord.scope_order``)."""
    return LLCRecord.coerce(record).scope_order()


def record_order(record: LLCRecord | Mapping[str, Any]) -> tuple:
    """Training order: by step, then by epoch, then by name; the whole model before other scopes."""
    return LLCRecord.coerce(record).training_order()


def health_label(record: LLCRecord | Mapping[str, Any], failures: Sequence[HealthFailure]) -> str:
    """``step 12 (R-hat 1.422 > 1.1)``: where a record is, with its first failed check in brief."""
    return f"{LLCRecord.coerce(record).where} ({failures[0].brief if failures else 'no reason recorded'})"


def summary_row(record: LLCRecord | Mapping[str, Any]) -> dict[str, Any]:
    """The summary.csv columns of one record (None where unknown)."""
    record = LLCRecord.coerce(record)
    result = record.result
    diagnostics = result.diagnostics if result is not None else None
    healthy, failures = record.health
    return {
        "checkpoint": record.checkpoint,
        "step": record.step,
        "epoch": record.epoch,
        "scope": record.scope,
        "status": record.status,
        "llc_mean": record.llc_mean,
        "llc_std": record.llc_std,
        "llc_se": record.llc_se,
        "healthy": healthy,
        "health_reasons": "; ".join(failure.sentence for failure in failures),
        "mala_acceptance": result.mala_acceptance if result is not None else None,
        "r_hat": diagnostics.r_hat if diagnostics is not None else None,
        "ess": diagnostics.ess if diagnostics is not None else None,
        "diverged_chains": diagnostics.diverged_chains if diagnostics is not None else None,
        "train_loss": record.metrics.train_loss,
        "val_loss": record.metrics.val_loss,
        "val_acc": record.metrics.val_acc,
        "elapsed_seconds": record.elapsed_seconds,
        "error": record.error,
    }


def summary_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """summary.csv text: a header, then one line per row; None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()


def _read_json(path: Path) -> Any:
    """Parsed JSON, or None when the file is gone or unreadable (reported once in the log)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("ignoring unreadable result file %s: %s", path, error)
        return None


# (path, mtime_ns, size) of the record files already warned about in this process: a bad file is
# reported once per version, not at every summary rebuild of a run.
_WARNED: set[tuple[str, int, int]] = set()


def _read_record(path: Path) -> LLCRecord | None:
    """The record in ``path``, or None when the file is gone or is not a readable record; the
    latter is reported in the log (once per version of the file), naming the file and the problem."""
    try:
        return LLCRecord.read(path)
    except FileNotFoundError:
        return None
    except RecordError as problem:
        try:
            stat = path.stat()
            version = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            version = (str(path), 0, 0)
        if version not in _WARNED:
            _WARNED.add(version)
            logger.warning("ignoring result file %s", problem)
        return None


class ResultsStore:
    """One settings-hash folder: its settings, its records and its summary.

    Args:
        results_dir: the folder given to ``estimate-all`` (it holds one folder per settings hash).
        settings_hash: the folder's name, from ``settings_hash``.
    """

    def __init__(self, results_dir: Path, settings_hash: str):
        self.results_dir = Path(results_dir)
        self.settings_hash = settings_hash
        self.folder = self.results_dir / settings_hash
        self.claims_folder = self.folder / CLAIMS_FOLDER
        # summary rows by file name, kept with the (mtime, size) they were read at, so a rebuild
        # re-reads only records that changed; None for a file that is not a readable record.
        self._rows: dict[str, tuple[tuple[int, int], dict[str, Any] | None, tuple]] = {}

    def record_path(self, checkpoint: str, scope: str = DEFAULT_SCOPE) -> Path:
        return self.folder / f"{record_stem(checkpoint, scope)}.json"

    def write_settings(
        self, settings: SamplerSettings, loss: str | Callable = DEFAULT_LOSS, calibration: Mapping[str, Any] | None = None
    ) -> Path:
        """Write settings.json unless it exists; refresh its time so ``plot`` sees these settings as recent.

        Args:
            calibration: how the settings were chosen, its ``calibration`` entry
                (``llcv.estimation.RunCalibration.settings_entry``); an existing file gains
                it, or has it replaced, when it differs; None keeps what the file says.

        Raises:
            SettingsError: the folder holds settings.json for other settings (a hash collision or an edited file).
            WriteError: the file could not be written.
        """
        path = self.folder / SETTINGS_FILE
        existing = _read_json(path)
        entry = None if calibration is None else json.loads(json.dumps(dict(calibration)))  # as the file would hold it
        if isinstance(existing, dict) and existing.get("settings_hash") == self.settings_hash:
            if entry is not None and existing.get("calibration") != entry:
                return atomic_write_json(path, {**existing, "calibration": entry})
            try:
                os.utime(path)
            except OSError:
                pass
            return path
        if isinstance(existing, dict):
            raise SettingsError(f"{path} belongs to settings {existing.get('settings_hash')!r}, not {self.settings_hash!r}")
        from llcv.version import __version__

        payload = {
            "format": "llcv-llc-settings",
            "format_version": 1,
            "settings_hash": self.settings_hash,
            "hashed": hashed_settings(settings, loss),
            "sampler": settings.model_dump(mode="json"),
            "loss": loss_name(loss),
            "llcv_version": __version__,
            **({} if entry is None else {"calibration": entry}),
        }
        return atomic_write_json(path, payload)

    def read_settings(self) -> dict[str, Any] | None:
        payload = _read_json(self.folder / SETTINGS_FILE)
        return payload if isinstance(payload, dict) else None

    def read_record(self, checkpoint: str, scope: str = DEFAULT_SCOPE) -> LLCRecord | None:
        """The record of ``(checkpoint, scope)``; None when there is none or it is not a readable record (warned)."""
        return _read_record(self.record_path(checkpoint, scope))

    def write_record(self, record: LLCRecord | Mapping[str, Any]) -> Path:
        """Atomically write a record (or a record's JSON object, validated first) to its file,
        named by its checkpoint and scope: ``record.to_dict()``, indented JSON.

        Raises:
            RecordError: a dict that is not a valid record.
            WriteError: the file could not be written.
        """
        record = LLCRecord.coerce(record)
        return atomic_write_json(self.record_path(record.checkpoint, record.scope), record.to_dict())

    def record_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [
            path
            for path in self.folder.iterdir()
            if path.suffix == ".json" and path.name != SETTINGS_FILE and not path.name.startswith(".")
        ]

    def records(self) -> list[LLCRecord]:
        """Every readable record in the folder, in training order (other files are skipped with a warning)."""
        records = [record for path in self.record_files() if (record := _read_record(path)) is not None]
        return sorted(records, key=LLCRecord.training_order)

    def summary_rows(self) -> list[dict[str, Any]]:
        """The summary rows of every record, in training order; unchanged files are not re-read."""
        seen = set()
        for path in self.record_files():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            seen.add(path.name)
            version = (stat.st_mtime_ns, stat.st_size)
            cached = self._rows.get(path.name)
            if cached is not None and cached[0] == version:
                continue
            record = _read_record(path)
            if record is not None:
                self._rows[path.name] = (version, summary_row(record), record.training_order())
            else:
                self._rows[path.name] = (version, None, ())
        for name in set(self._rows) - seen:
            del self._rows[name]
        rows = [entry for entry in self._rows.values() if entry[1] is not None]
        return [row for _, row, _ in sorted(rows, key=lambda entry: entry[2])]

    def rebuild_summary(self) -> Path:
        """Rewrite summary.csv from the record files.

        Concurrent workers take a lock around read-then-write, so the last writer has seen every
        record written before it; if the lock is unavailable the summary is written anyway (the
        records, not the summary, are the source of truth).
        """
        from filelock import FileLock, Timeout

        path = self.folder / SUMMARY_FILE
        lock = FileLock(self.claims_folder / "summary.lock", timeout=30)
        try:
            self.claims_folder.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except (Timeout, OSError) as error:
            logger.info("summary lock unavailable (%s); writing %s without it", error, path)
            return atomic_write_text(path, summary_csv(self.summary_rows()))
        try:
            return atomic_write_text(path, summary_csv(self.summary_rows()))
        finally:
            lock.release()


def is_done(record: LLCRecord | Mapping[str, Any] | None, current_fingerprint: Mapping[str, Any] | None) -> bool:
    """A record counts as done when its status is done and it was made from this very file."""
    if record is None:
        return False
    record = LLCRecord.coerce(record)
    stamp = record.fingerprint.to_dict() if record.fingerprint is not None else None
    return record.is_done and stamp == (dict(current_fingerprint) if current_fingerprint is not None else None)


# --- reading results back -------------------------------------------------------------------


@dataclass(frozen=True)
class SettingsFolder:
    """One settings-hash folder inside a results dir."""

    settings_hash: str
    path: Path
    modified: float  # the newest modification time of its settings and records
    num_records: int
    settings: dict[str, Any]


def list_settings(results_dir: Path) -> list[SettingsFolder]:
    """The settings-hash folders in ``results_dir``, most recently used first.

    ``results_dir`` may also be one settings-hash folder itself.

    Raises:
        SettingsError: the folder does not exist.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise SettingsError(f"results directory {results_dir} does not exist or is not a directory")
    candidates = [results_dir] if (results_dir / SETTINGS_FILE).is_file() else sorted(results_dir.iterdir())
    folders = []
    for folder in candidates:
        settings = _read_json(folder / SETTINGS_FILE) if folder.is_dir() else None
        if not isinstance(settings, dict) or "settings_hash" not in settings:
            continue
        store = ResultsStore(folder.parent, folder.name)
        files = [folder / SETTINGS_FILE, *store.record_files()]
        modified = max((path.stat().st_mtime for path in files if path.exists()), default=0.0)
        folders.append(SettingsFolder(folder.name, folder, modified, len(files) - 1, settings))
    return sorted(folders, key=lambda entry: entry.modified, reverse=True)


def choose_settings(results_dir: Path, settings_hash: str | None = None) -> SettingsFolder:
    """The settings folder to read: ``settings_hash`` if given, else the most recently used.

    Raises:
        SettingsError: no results at all, or no folder for ``settings_hash``.
    """
    folders = list_settings(results_dir)
    if not folders:
        raise SettingsError(f"results directory {results_dir} holds no LLC results (no <settings-hash>/settings.json)")
    if settings_hash is None:
        return folders[0]
    matches = [folder for folder in folders if folder.settings_hash.startswith(settings_hash)]
    if len(matches) != 1:
        available = ", ".join(folder.settings_hash for folder in folders)
        problem = "no" if not matches else "more than one"
        raise SettingsError(f"results directory {results_dir} has {problem} settings {settings_hash!r}; it has {available}")
    return matches[0]


def run_labels(folders: Sequence[Path], labels: Sequence[str] | None = None) -> list[str]:
    """One name per results folder: ``labels`` if given, else the folders' names (their paths if two coincide).

    Raises:
        SettingsError: the number of labels differs from the number of folders.
    """
    if labels and len(labels) != len(folders):
        raise SettingsError(f"{len(labels)} --label for {len(folders)} --results-dir; give one label per results folder")
    names = list(labels) if labels else [Path(folder).name or str(folder) for folder in folders]
    return names if len(set(names)) == len(names) else [str(folder) for folder in folders]


def load_results(results_dir: Path, settings_hash: str | None = None) -> list[LLCRecord]:
    """The result records of one settings hash, in training order.

    Args:
        results_dir: a folder written by ``estimate-all`` (or one settings-hash folder in it).
        settings_hash: which settings (a unique prefix is enough); None: the most recently used.

    Returns:
        One ``LLCRecord`` per (checkpoint, scope), as in docs/formats.md; done records hold the
        ``LLCResult`` under ``result``, failed ones the reason under ``error``. A file that is not
        a readable record (not JSON, the wrong types, a newer format) is left out with a warning
        in the log naming it and the problem.

    Raises:
        SettingsError: the folder is missing, holds no results, or lacks ``settings_hash``.
    """
    chosen = choose_settings(results_dir, settings_hash)
    return ResultsStore(chosen.path.parent, chosen.settings_hash).records()


def results_dataframe(rows: Sequence[LLCRecord | Mapping[str, Any]]):
    """A pandas DataFrame with one row per record: the summary.csv columns plus provenance."""
    import pandas as pd

    table = []
    for record in map(LLCRecord.coerce, rows):
        result = record.result
        table.append(
            {
                **summary_row(record),
                "settings_hash": record.settings_hash,
                "scope_kind": record.kind,
                "nbeta": result.nbeta if result is not None else None,
                "nbeta_rule": result.nbeta_rule if result is not None else None,
                "burnin_steps": result.burnin_steps if result is not None else None,
                "burnin_rule": result.burnin_rule if result is not None else None,
                "init_loss": result.init_loss if result is not None else None,
                "num_parameters": record.num_parameters,
                "device": result.device if result is not None else None,
                "num_threads": result.num_threads if result is not None else None,
            }
        )
    columns = [
        *SUMMARY_COLUMNS, "settings_hash", "scope_kind", "nbeta", "nbeta_rule", "burnin_steps", "burnin_rule",
        "init_loss", "num_parameters", "device", "num_threads",
    ]  # fmt: skip
    return pd.DataFrame(table, columns=columns)


def missing_checkpoints(records: Sequence[LLCRecord | Mapping[str, Any]]) -> list[str] | None:
    """Checkpoints in the records' checkpoint folders that have no whole-model record yet.

    Returns:
        Their names in training order, or None when none of those folders can be listed here
        (the results were copied without the checkpoints).
    """
    records = [LLCRecord.coerce(record) for record in records]
    folders = {Path(record.checkpoint_path).parent for record in records if record.checkpoint_path}
    recorded = {record.checkpoint for record in records if record.is_whole_model}
    listed, missing = False, []
    for folder in sorted(folders):
        try:
            paths = list_checkpoints(folder)
        except (LLCVError, OSError):  # an unreachable folder only means "unknown"
            continue
        listed = True
        missing.extend(path.name for path in paths if path.name not in recorded)
    return missing if listed else None


# --- candidate transitions ------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """A candidate developmental transition: where the LLC curve turns or changes fastest."""

    checkpoint: str
    step: int | None
    epoch: float | None
    llc: float
    train_loss: float | None
    val_loss: float | None
    kind: Literal["LLC peak", "LLC trough", "fastest rise", "fastest fall"]


def find_transitions(records: Sequence[LLCRecord | Mapping[str, Any]], x: Literal["step", "epoch"] = "step") -> list[Transition]:
    """Candidate transitions along one run's whole-model LLC curve.

    The slope is taken against log(x) between consecutive done checkpoints (x > 0). A point is a
    candidate where the slope changes sign (an LLC peak or trough) or where its magnitude peaks
    (the fastest rise or fall in its neighbourhood). These are candidates to look at, not tests:
    sampling noise makes spurious ones, so read them with the ± std band. Unhealthy estimates
    (``LLCRecord.health``) are left out, so the figure, the command's list and the demo's paragraph
    name the same candidates, none of them resting on an estimate that should not be read.
    """
    points = []
    for record in map(LLCRecord.coerce, records):
        if not record.is_whole_model or not record.is_done or record.is_unhealthy:
            continue
        position = record.position(x) if record.position(x) is not None else record.epoch
        llc = record.llc_mean
        if position is None or llc is None or position <= 0:
            continue
        points.append((math.log(position), llc, record))
    points.sort(key=lambda point: point[0])
    if len(points) < 3:
        return []
    slopes = [
        (b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else 0.0 for a, b in zip(points, points[1:])
    ]  # slopes[i] is between points i and i+1
    found: dict[int, str] = {}
    for i in range(1, len(slopes)):
        before, after = slopes[i - 1], slopes[i]
        if before > 0 > after:
            found[i] = "LLC peak"
        elif before < 0 < after:
            found[i] = "LLC trough"
    for i in range(len(slopes)):
        magnitude = abs(slopes[i])
        left = abs(slopes[i - 1]) if i > 0 else -1.0
        right = abs(slopes[i + 1]) if i + 1 < len(slopes) else -1.0
        if magnitude > left and magnitude > right and magnitude > 0:
            # the steepest segment; mark its end, the checkpoint where the change has happened
            found.setdefault(i + 1, "fastest rise" if slopes[i] > 0 else "fastest fall")
    transitions = []
    for index in sorted(found):
        record = points[index][2]
        transitions.append(
            Transition(
                checkpoint=record.checkpoint,
                step=record.step,
                epoch=record.epoch,
                llc=points[index][1],
                train_loss=record.metrics.train_loss,
                val_loss=record.metrics.val_loss,
                kind=found[index],  # type: ignore[arg-type]
            )
        )
    return transitions
