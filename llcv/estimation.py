"""estimate_all: the LLC of every checkpoint of a run, resumable, crash-safe and shareable by workers.

For each selected checkpoint (and scope) a worker

1. skips it when a ``done`` record made from this very file exists (``--force`` redoes it);
2. claims it (``llcv.claims``): a claim file created exclusively in ``<hash>/.claims/`` holding
   the worker's host, pid and a heartbeat that a background thread refreshes. A claim whose
   heartbeat is older than ``claim_timeout_seconds``, or whose process is gone from this host,
   is taken over;
3. estimates it with ``run_job`` (``llcv.sampling.estimate_llc``; the model rebuilt per
   checkpoint, the data prepared once per process), in this process, a device worker or a Ray
   task (``llcv.executors``), and writes the record atomically, then releases the claim.

Records are whole files renamed into place, so a ``kill -9`` at any moment leaves only complete
records and, at worst, a claim that the next run takes over. Ctrl-C and SIGTERM release the
claims on the way out. Which checkpoints a worker takes (every K-th, steps, shards) is
``llcv.selection``; what a refined record measures (a block, a class) is ``llcv.scopes``.
``estimate_all`` takes the ``[sampler]`` and ``[estimate]`` settings, as ``llcv estimate-all`` resolves them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from llcv.checkpoints import CheckpointInfo, list_checkpoints
from llcv.claims import Claims
from llcv.devices import resolve_device
from llcv.errors import DataError, LLCVError, SettingsError
from llcv.executors import make_executor
from llcv.job_spec import JobSpec
from llcv.losses import LossSpec
from llcv.models import list_models, model_version
from llcv.precision import PrecisionChoice
from llcv.progress import SILENT, Reporter
from llcv.records import DEFAULT_SCOPE, RECORD_FORMAT, RECORD_FORMAT_VERSION, LLCRecord, RecordResult
from llcv.results import (
    CLAIMS_FOLDER,
    DEFAULT_LOSS,
    ResultsStore,
    fingerprint,
    is_done,
    record_stem,
    settings_hash,
    step_from_name,
)
from llcv.sampling import estimate_llc
from llcv.sampling_data import SamplingData
from llcv.scopes import WHOLE_MODEL, Scope, class_refinement, run_scopes, same_refinement, scope_result, scope_settings
from llcv.selection import parse_shard, select_checkpoints, shard_name, shard_of
from llcv.settings import EstimateSettings, SamplerSettings

logger = logging.getLogger("llcv")


# --- one checkpoint -------------------------------------------------------------------------


@dataclass(frozen=True)
class EstimateJob:
    """One unit of work: a checkpoint and the scope of its estimate (``part`` says what the scope measures)."""

    checkpoint: Path
    part: Scope = WHOLE_MODEL

    @property
    def scope(self) -> str:
        return self.part.name

    @property
    def key(self) -> str:
        return record_stem(self.checkpoint.name, self.scope)

    @property
    def label(self) -> str:
        return self.checkpoint.name if self.scope == DEFAULT_SCOPE else f"{self.checkpoint.name} [{self.scope}]"


# SamplingData per process: the dataset is read and moved to the device once, then reused for
# every checkpoint this process (or Ray worker) estimates. Kept small; keyed by dataset identity.
_SAMPLING_DATA: dict[tuple, tuple[Dataset, SamplingData]] = {}


def _sampling_data(dataset: Dataset, settings: SamplerSettings, device: torch.device) -> SamplingData:
    # params choose weights, not data: every block scope of a run shares the whole model's data
    key = (id(dataset), settings.model_dump_json(exclude={"params"}), str(device))
    cached = _SAMPLING_DATA.get(key)
    if cached is not None and cached[0] is dataset:
        return cached[1]
    if len(_SAMPLING_DATA) >= 2:
        _SAMPLING_DATA.clear()
    data = SamplingData(dataset, settings, device)
    _SAMPLING_DATA[key] = (dataset, data)
    return data


def _load(job: EstimateJob, spec: JobSpec) -> tuple[nn.Module, CheckpointInfo, Dataset]:
    """The checkpoint's model and the training split it is measured on."""
    from llcv.checkpoints import load_checkpoint
    from llcv.targets import DEFAULT_FOREIGN_DATASET, load_target, training_split

    if spec.model_factory is None and not isinstance(spec.dataset, Dataset):
        target = load_target(
            job.checkpoint, model_name=spec.model_name, stem=spec.stem, dataset=spec.dataset, data_dir=spec.data_dir,
            allow_version_mismatch=spec.allow_version_mismatch,
        )  # fmt: skip
        return target.model, target.checkpoint, target.dataset
    if spec.model_factory is not None:
        model, info = load_checkpoint(job.checkpoint, model=spec.model_factory())
    else:
        model, info = load_checkpoint(
            job.checkpoint, model_name=spec.model_name, stem=spec.stem, allow_version_mismatch=spec.allow_version_mismatch
        )
    if isinstance(spec.dataset, Dataset):
        return model, info, spec.dataset
    recorded = info.dataset
    name = spec.dataset or (recorded.name if recorded else DEFAULT_FOREIGN_DATASET)
    directory = spec.data_dir if spec.data_dir is not None else (recorded.data_dir if recorded and recorded.name == name else None)
    split, _ = training_split(name, str(directory) if directory is not None else None, recorded.seed if recorded else 0)
    return model, info, split


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _model_provenance(spec: JobSpec, info: CheckpointInfo | None) -> dict[str, Any] | None:
    """A record's ``model``: the model the weights were loaded into, the version it is registered
    with here (None for a ``model_factory`` model or an unregistered name), the version the checkpoint
    records (None when it records none), and whether that mismatch was allowed. None before loading."""
    if info is None:
        return None
    name = info.model.name
    registered = spec.model_factory is None and name in list_models()
    return {
        "name": name,
        "version": model_version(name) if registered else None,
        "checkpoint_version": info.model.version,
        "version_overridden": info.model_version_overridden,
    }


def make_record(
    job: EstimateJob,
    spec: JobSpec,
    *,
    status: str,
    checkpoint_fingerprint: dict[str, Any] | None,
    info: CheckpointInfo | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    elapsed_seconds: float = 0.0,
) -> LLCRecord:
    """A result record (docs/formats.md): status, checkpoint identity, metrics, and the result or error.

    Args:
        result: ``LLCResult.to_dict()``, or None when there is none.
    """
    step = info.step if info is not None else step_from_name(job.checkpoint.name)
    stored = RecordResult.model_validate(result) if result is not None else None
    healthy = status == "done" and bool(stored is not None and stored.healthy)
    reasons = list((stored.health_reasons if stored is not None else None) or []) if status == "done" else [error or "failed"]
    return LLCRecord.model_validate({
        "format": RECORD_FORMAT,
        "format_version": RECORD_FORMAT_VERSION,
        "status": status,
        "checkpoint": job.checkpoint.name,
        "checkpoint_path": str(job.checkpoint.resolve()),
        "fingerprint": checkpoint_fingerprint,
        "scope": job.scope,
        "scope_kind": job.part.kind,
        "scope_index": job.part.index,
        "step": step,
        "epoch": info.epoch if info is not None else None,
        "metrics": dict(info.metrics) if info is not None else {},
        "model": _model_provenance(spec, info),
        "settings_hash": spec.settings_hash,
        "healthy": healthy,
        "health_reasons": reasons,
        "result": stored,
        "error": error,
        "elapsed_seconds": elapsed_seconds,
        "finished": _now(),
        "worker": {"host": socket.gethostname(), "pid": os.getpid(), "executor": spec.executor},
    })


def failure_record(job: EstimateJob, spec: JobSpec, reason: str, elapsed_seconds: float) -> LLCRecord:
    """The ``failed`` record of a job whose worker died before it could return one (an executor
    makes it in the worker's place)."""
    return make_record(job, spec, status="failed", checkpoint_fingerprint=None, error=reason, elapsed_seconds=elapsed_seconds)


def run_job(job: EstimateJob, spec: JobSpec, reporter: Reporter = SILENT) -> LLCRecord:
    """Estimate one checkpoint and return its record; any failure becomes a ``failed`` record.

    Only interruptions (Ctrl-C, SIGTERM, ``SystemExit``) propagate. The ``job_function`` that
    ``estimate_all`` hands its executor (a top-level function, so device processes and Ray
    tasks receive it by reference).
    """
    started = time.perf_counter()
    info, stamp = None, None
    try:
        stamp = fingerprint(job.checkpoint)
        model, info, dataset = _load(job, spec)
        device = resolve_device(spec.device)
        settings = scope_settings(spec.settings, job.part, dataset)
        data = _sampling_data(dataset, settings, device)
        result = scope_result(
            estimate_llc(model, data, settings, loss=spec.loss, device=device, reporter=reporter, precision=spec.precision), spec.settings
        )
        del model
    except LLCVError as problem:
        return make_record(job, spec, status="failed", checkpoint_fingerprint=stamp, info=info, error=str(problem),
                           elapsed_seconds=time.perf_counter() - started)  # fmt: skip
    except Exception as problem:  # noqa: BLE001 - one bad checkpoint must not stop the run
        logger.debug("estimating %s failed", job.checkpoint, exc_info=True)
        return make_record(job, spec, status="failed", checkpoint_fingerprint=stamp, info=info,
                           error=f"{type(problem).__name__}: {problem}", elapsed_seconds=time.perf_counter() - started)  # fmt: skip
    payload = result.to_dict()
    if result.llc_mean is None:
        reason = "; ".join(result.diagnostics.warnings) or "no chain is healthy"
        return make_record(job, spec, status="failed", checkpoint_fingerprint=stamp, info=info, result=payload,
                           error=f"every chain diverged: {reason}", elapsed_seconds=time.perf_counter() - started)  # fmt: skip
    return make_record(job, spec, status="done", checkpoint_fingerprint=stamp, info=info, result=payload,
                       elapsed_seconds=time.perf_counter() - started)  # fmt: skip


# --- the run --------------------------------------------------------------------------------


@dataclass
class EstimateSummary:
    """What one ``estimate_all`` call did. Names are checkpoint file names (with ``[scope]`` for refined scopes)."""

    settings_hash: str
    folder: Path
    selected: list[str] = field(default_factory=list)  # this worker's share, in training order (scope by scope)
    scopes: list[str] = field(default_factory=lambda: [DEFAULT_SCOPE])  # every scope estimated per checkpoint
    already_done: list[str] = field(default_factory=list)  # done before this call
    computed: list[str] = field(default_factory=list)  # done by this call
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason
    elsewhere: list[str] = field(default_factory=list)  # claimed by another live worker
    left: list[str] = field(default_factory=list)  # not reached (the call was interrupted)
    interrupted: bool = False
    elapsed_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    @property
    def num_done(self) -> int:
        return len(self.already_done) + len(self.computed)


def estimate_all(
    checkpoints_dir: Path | str,
    sampler: SamplerSettings,
    options: EstimateSettings | None = None,
    *,
    model_factory: Callable[[], nn.Module] | None = None,
    dataset: Dataset | str | None = None,
    loss: LossSpec = DEFAULT_LOSS,
    model_name: str | None = None,
    stem: str | None = None,
    data_dir: Path | str | None = None,
    blocks: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    allow_version_mismatch: bool = False,
    calibration: Mapping[str, Any] | None = None,
    reporter: Reporter = SILENT,
) -> EstimateSummary:
    """Estimate the LLC of every checkpoint in ``checkpoints_dir``, one record file each.

    Safe to stop at any moment and to run as several workers on one results folder: a rerun
    skips what is done, and workers never estimate the same checkpoint at the same time.
    Every checkpoint uses the same settings and seed (common random numbers across checkpoints).

    Args:
        checkpoints_dir: a training run's checkpoints (``list_checkpoints`` order).
        sampler: the sampler settings (``[sampler]``).
        options: the run (``[estimate]``; None: ``EstimateSettings()``'s defaults):
            ``results_dir`` (where ``<settings-hash>/`` goes); ``device`` (``auto``, ``cpu``,
            ``cuda``, ``cuda:N`` or ``mps``), or ``devices`` (one worker process per device of
            this machine, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]``; ``["all"]``: every
            CUDA GPU here; local executor only, ``llcv.executors.DevicesExecutor``);
            ``every_nth`` and ``steps`` (a subset, see ``select_checkpoints``); ``shard``
            (``"K/N"``: only share K of N, by a stable hash of the file name); ``executor``
            (``"local"``: this process, one checkpoint at a time; ``"ray"``: one task per
            checkpoint) with ``ray_address`` (the Ray cluster to join; None starts a local
            instance unless Ray is already initialised) and ``cpus_per_task`` (Ray: CPUs, and
            torch threads, per task; default 1, or a GPU node's CPUs per GPU); ``force`` (redo
            checkpoints that already have a done record); ``claim_timeout_seconds`` (a claim
            whose heartbeat is older is taken over); ``per_layer``: also a weight-refined LLC per
            block of the model (scope = the block's name), each sampling only that block's
            parameters with the rest frozen; ``per_class``: also a data-refined LLC per class
            (scope ``class=7``), each measuring the loss on that class's samples only, for the
            classes in ``sampler.classes`` (every class when None), while the whole model, and
            the settings hash, keep all the data (``llcv.scopes.class_refinement``).
        model_factory: ``() -> nn.Module`` to load foreign weights into (your own architecture).
        dataset: the training data as a Dataset, or a dataset name; None: the one in the checkpoint.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(model, batch) -> loss``.
        model_name, stem, data_dir: for foreign checkpoints, as in ``llcv.targets.load_target``.
        blocks: with ``per_layer``, which blocks: None for every block of the model's
            registration (``register_model(name, blocks=...)``), a list of their names for
            some, or {block name: parameter-name glob patterns} in the order to plot them
            (needed with ``model_factory``, a model llcv has no registration for).
        allow_version_mismatch: load llcv checkpoints saved with another version of their model
            (``load_checkpoint``), in every executor; each record's ``model.version_overridden``
            says whether it was. Without it such a checkpoint gets a ``failed`` record naming
            both versions. It does not change the settings hash.
        calibration: how ``sampler`` was chosen, recorded as settings.json's ``calibration``
            entry (``llcv.run_calibration.RunCalibration.settings_entry()``, ``estimate-all --calibrate``).
        reporter: progress: ``checkpoints`` overall and one loop per chain (local executor and
            ``devices``, whose loops are keyed and labelled by device: ``cuda:1/chains-0``).

    Every scope of a checkpoint is its own record (``<stem>__<scope>.json``) in the same
    settings-hash folder as the whole model's, and is resumed, claimed and sharded on its own.
    The whole model is estimated first for every checkpoint, then each block or class in turn.
    ``results_folder(sampler, options, loss)`` is the folder, before the run.

    Returns:
        The summary. If interrupted (Ctrl-C, SIGTERM), the exception propagates after the claims
        are released, carrying the partial summary as its ``estimate_summary`` attribute.

    Raises:
        SettingsError: bad selection, device(s) or executor; no checkpoints to estimate; a
            refinement the model cannot take (no blocks declared, a block that matches no
            parameter, an unknown class), ``per_layer`` with ``sampler.params``, or ``blocks``
            without ``per_layer``. (``EstimateSettings`` itself refuses a malformed shard,
            device or executor when it is made: ``llcv.settings.validate_section("estimate",
            {...})`` raises those as ``SettingsError`` too.)
        CheckpointError: the checkpoints folder does not exist.
        DataError: an unknown ``dataset`` name, or ``data_dir`` does not exist (local executor).
        WriteError: the results folder cannot be written.
        EstimationError: with ``devices``, no device's worker could start.
    """
    if not isinstance(sampler, SamplerSettings) or not isinstance(options, (EstimateSettings, type(None))):
        raise TypeError(  # most likely a call written for the earlier estimate_all(checkpoints_dir, results_dir, settings, device=...)
            "estimate_all(checkpoints_dir, sampler: SamplerSettings, options: EstimateSettings | None = None, ...): "
            "results_dir, device and the run's other options are fields of llcv.settings.EstimateSettings"
        )
    options = options if options is not None else EstimateSettings()
    settings, per_class = class_refinement(sampler, options.per_class)
    executor, device, devices = options.executor, options.device, options.devices
    started = time.perf_counter()
    runner = make_executor(executor, ray_address=options.ray_address, cpus_per_task=options.cpus_per_task, device=device, devices=devices)
    if executor == "local":
        if devices is None:  # make_executor checked the devices
            resolve_device(device)  # a bad --device fails now, not once per checkpoint
        if data_dir is not None and not Path(data_dir).is_dir():  # likewise (Ray workers may see other folders)
            raise DataError(f"data directory {data_dir} does not exist or is not a folder")
    _check_names(dataset, model_name, stem)
    all_paths = list_checkpoints(Path(checkpoints_dir))
    if not all_paths:
        raise SettingsError(f"checkpoints directory {checkpoints_dir} holds no checkpoint files (.pt, .pth, .pth.tar, .ckpt)")
    paths = select_checkpoints(all_paths, every_nth=options.every_nth, steps=options.steps)
    spec = JobSpec(
        settings=settings, settings_hash=settings_hash(settings, loss), loss=loss, device=device,
        model_factory=model_factory, dataset=dataset, model_name=model_name, stem=stem,
        data_dir=str(data_dir) if data_dir is not None else None, executor=executor,
        allow_version_mismatch=bool(allow_version_mismatch),
    )  # fmt: skip
    scopes = run_scopes(paths, spec, options.per_layer, per_class, blocks)
    jobs = [EstimateJob(path, scope) for scope in scopes for path in paths]  # the whole-model curve first
    parsed = parse_shard(options.shard)
    if parsed is not None:  # by (checkpoint, scope): the whole model's share is its file name's
        jobs = [job for job in jobs if shard_of(shard_name(job.checkpoint.name, job.scope), parsed[1]) == parsed[0]]
    _check_unique_keys(jobs)

    digest = spec.settings_hash  # of the run's settings: a scope's own params/classes never enter it
    store = ResultsStore(Path(options.results_dir), digest)
    store.write_settings(settings, loss, calibration)
    summary = EstimateSummary(
        settings_hash=digest, folder=store.folder, selected=[job.label for job in jobs], scopes=[scope.name for scope in scopes]
    )
    run_started = _now()

    def done_already(job: EstimateJob, announce: bool = False) -> bool:
        record = store.read_record(job.checkpoint.name, job.scope)
        if record is None:
            return False
        try:
            current = fingerprint(job.checkpoint)
        except OSError:
            return False
        if not is_done(record, current):
            if announce and record.is_done:
                reporter.note(f"{job.label} changed since its record was written (or comes from another run); redoing it")
            return False
        if not same_refinement(record, job.part):
            if announce:
                reporter.note(f"{job.label} was estimated with other parameters or classes for this scope; redoing it")
            return False
        # --force redoes records from before this call, not those other forced workers just wrote
        return not options.force or (record.finished or "") >= run_started

    todo: list[EstimateJob] = []
    for job in jobs:
        if done_already(job, announce=True):
            summary.already_done.append(job.label)
        else:
            todo.append(job)
    finished: set[str] = set()
    first_started: list[float] = []  # when the first job was handed out, for the ETA
    done_before = len(summary.already_done)

    def on_result(job: EstimateJob, record: LLCRecord) -> None:
        store.write_record(record)
        claims.release(job.key)
        store.rebuild_summary()
        finished.add(job.label)
        if record.is_done:
            summary.computed.append(job.label)
            std, standard_error = record.llc_std, record.llc_se
            healthy, failures = record.health
            verdict = "" if healthy is not False else f", unhealthy: {'; '.join(failure.brief for failure in failures)}"
            reporter.note(
                f"{job.label}: LLC {record.llc_mean:.4g} ± {'—' if std is None else format(std, '.2g')} "
                f"(standard error {'—' if standard_error is None else format(standard_error, '.2g')}; "
                f"{record.elapsed_seconds or 0.0:.1f} s{verdict})"
            )
        else:
            summary.failed[job.label] = str(record.error)
            reporter.note(f"{job.label}: failed: {record.error}")
        # the ETA from the measured time per checkpoint (progress bars estimate speed over a
        # short window, too short for checkpoints that take minutes)
        each = (time.perf_counter() - first_started[0]) / len(finished)
        done_meanwhile = len(summary.already_done) - done_before  # by other workers
        unfinished = len(todo) - len(finished) - len(summary.elsewhere) - done_meanwhile
        reporter.advance("checkpoints", 1, each=f"{each:.1f} s", left=_duration(each * max(unfinished, 0)))

    def claimed_jobs() -> Iterator[EstimateJob]:
        """Claim just in time, so a worker holds only what it is working on."""
        busy = []
        for attempt, queue in enumerate((todo, busy)):
            for job in queue:
                if not claims.try_claim(job.key):
                    if attempt == 0:
                        busy.append(job)
                    else:
                        summary.elsewhere.append(job.label)
                        reporter.advance("checkpoints", 1)
                    continue
                if done_already(job):  # finished by another worker since we looked
                    claims.release(job.key)
                    summary.already_done.append(job.label)
                    reporter.advance("checkpoints", 1)
                    continue
                if not first_started:
                    first_started.append(time.perf_counter())
                yield job

    if settings.precision == "auto":
        spec = replace(spec, precision=_run_precision(store))
    reporter.start("checkpoints", f"Checkpoints ({len(summary.already_done)} already done)", len(todo))
    try:
        with Claims(store.folder / CLAIMS_FOLDER, options.claim_timeout_seconds) as claims:
            runner.run(claimed_jobs(), spec, on_result, reporter, job_function=run_job, failure_record=failure_record)
    except BaseException as error:
        if not isinstance(error, Exception):  # KeyboardInterrupt, console.Terminated, SystemExit
            summary.interrupted = True
            reachable = {*summary.already_done, *summary.elsewhere, *finished}
            summary.left = [job.label for job in todo if job.label not in reachable]
            summary.elapsed_seconds = time.perf_counter() - started
            error.estimate_summary = summary  # type: ignore[attr-defined]
        raise
    finally:
        reporter.finish("checkpoints")
    summary.elapsed_seconds = time.perf_counter() - started
    return summary


def results_folder(sampler: SamplerSettings, options: EstimateSettings | None = None, loss: LossSpec = DEFAULT_LOSS) -> Path:
    """The settings-hash folder ``estimate_all(checkpoints_dir, sampler, options, loss=loss)`` writes into."""
    options = options if options is not None else EstimateSettings()
    settings, _ = class_refinement(sampler, options.per_class)
    return Path(options.results_dir) / settings_hash(settings, loss)


def _run_precision(store: ResultsStore) -> PrecisionChoice | None:
    """For ``precision="auto"``: what the run's earlier records ran in, so a resumed or widened run
    keeps it; None before the first record (a process then decides at its first estimate, and
    ``DevicesExecutor`` hands the first checkpoint's choice to the others)."""
    for record in store.records():
        choice = record.precision_choice if record.is_done else None
        if choice:
            return PrecisionChoice.kept_from(choice)
    return None


def _check_names(dataset: Dataset | str | None, model_name: str | None, stem: str | None) -> None:
    """An unknown --dataset, --model or --stem fails before any work, not once per checkpoint."""
    from typing import get_args

    from llcv.data import list_datasets
    from llcv.models import Stem, list_models

    if isinstance(dataset, str) and dataset not in list_datasets():
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(list_datasets())}")
    if model_name is not None and model_name not in list_models():
        raise SettingsError(f"unknown model {model_name!r}; choose one of {', '.join(list_models())}")
    if stem is not None and stem not in get_args(Stem):
        raise SettingsError(f"stem {stem!r}: use {' or '.join(get_args(Stem))}")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _check_unique_keys(jobs: list[EstimateJob]) -> None:
    seen: dict[str, str] = {}
    for job in jobs:
        if job.key in seen:
            raise SettingsError(
                f"checkpoints {seen[job.key]} and {job.checkpoint.name} would share the result file {job.key}.json; rename one"
            )
        seen[job.key] = job.checkpoint.name
