"""estimate_all: the LLC of every checkpoint of a run, resumable, crash-safe and shareable by workers.

For each selected checkpoint (and scope) a worker

1. skips it when a ``done`` record made from this very file exists (``--force`` redoes it);
2. claims it (``llcv.estimation.claims``): a claim file created exclusively in ``<hash>/.claims/`` holding
   the worker's host, pid and a heartbeat that a background thread refreshes. A claim whose
   heartbeat is older than ``claim_timeout_seconds``, or whose process is gone from this host,
   is taken over;
3. estimates it with ``run_job`` (``llcv.sampling.estimate_llc``; the model rebuilt per
   checkpoint, the data prepared once per process), in this process, a device worker or a Ray
   task (``llcv.estimation.executors``), and writes the record atomically, then releases the claim.

Records are whole files renamed into place, so a ``kill -9`` at any moment leaves only complete
records and, at worst, a claim that the next run takes over. Ctrl-C and SIGTERM release the
claims on the way out. Which checkpoints a worker takes (every K-th, steps, shards) is
``llcv.estimation.selection``; what a refined record measures (a block, a class) is ``llcv.estimation.scopes``.
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
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from llcv.checkpoints import CheckpointInfo, list_checkpoints
from llcv.estimation.claims import Claims
from llcv.devices import resolve_device
from llcv.errors import LLCVError, SettingsError
from llcv.estimation.executors import make_executor
from llcv.estimation.job_spec import JobSpec
from llcv.sampling import LossSpec
from llcv.model_sources import library_version, registry_of
from llcv.models import list_models, model_version
from llcv.sampling import PrecisionChoice
from llcv.progress import SILENT, Reporter
from llcv.results import DEFAULT_SCOPE, RECORD_FORMAT, RECORD_FORMAT_VERSION, LLCRecord, RecordResult
from llcv.results import (
    DEFAULT_LOSS,
    ResultsStore,
    fingerprint,
    is_done,
    record_stem,
    settings_hash,
    step_from_name,
)
from llcv.sampling import estimate_llc
from llcv.sampling import SamplingData
from llcv.estimation.scopes import WHOLE_MODEL, Scope, class_refinement, run_scopes, same_refinement, scope_result, scope_settings
from llcv.estimation.selection import parse_shard, select_checkpoints, shard_name, shard_of
from llcv.settings import EstimateSettings, SamplerSettings
from llcv.targets import Target

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _model_provenance(spec: JobSpec, info: CheckpointInfo | None) -> dict[str, Any] | None:
    """A record's ``model``: the model the weights were loaded into, the version it is registered
    with here (None for a ``model_factory`` model or an unregistered name), the version the checkpoint
    records (None when it records none), whether that mismatch was allowed, and for a
    ``torchvision:``/``timm:`` model the library release here and the one the checkpoint records.
    None before loading."""
    if info is None:
        return None
    name = info.model.name
    registered = spec.target.model_factory is None and name in list_models()
    provenance = {
        "name": name,
        "version": model_version(name) if registered else None,
        "checkpoint_version": info.model.version,
        "version_overridden": info.model_version_overridden,
    }
    registry = registry_of(name) if spec.target.model_factory is None else None
    if registry is not None:  # only these: every other record stays as it was written before
        provenance.update(library_version=library_version(registry), checkpoint_library_version=info.model.library_version)
    return provenance


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
        loaded = spec.target.at(job.checkpoint).load()
        model, info, dataset = loaded.model, loaded.checkpoint, loaded.dataset
        del loaded
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
    target: Target | None = None,
    loss: LossSpec = DEFAULT_LOSS,
    blocks: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
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
            CUDA GPU here; local executor only, ``llcv.estimation.executors.DevicesExecutor``);
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
            the settings hash, keep all the data (``llcv.estimation.scopes.class_refinement``).
        target: what the checkpoints hold and are measured on (``llcv.targets.Target``, its
            ``checkpoint`` unset): the model of foreign weights (``model_name``/``stem``, or
            ``model_factory`` for your own architecture), the data (a dataset name or a Dataset,
            ``data_dir``; None: the one each checkpoint records) and ``allow_version_mismatch``
            (load llcv checkpoints saved with another version of their model, in every executor;
            each record's ``model.version_overridden`` says whether it was; without it such a
            checkpoint gets a ``failed`` record naming both versions; it does not change the
            settings hash). None: ``Target()``, everything as the checkpoints record it.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(model, batch) -> loss``.
        blocks: with ``per_layer``, which blocks: None for every block of the model's
            registration (``register_model(name, blocks=...)``), a list of their names for
            some, or {block name: parameter-name glob patterns} in the order to plot them
            (needed with ``model_factory``, a model llcv has no registration for).
        calibration: how ``sampler`` was chosen, recorded as settings.json's ``calibration``
            entry (``llcv.estimation.RunCalibration.settings_entry()``, ``estimate-all --calibrate``).
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
        DataError: an unknown dataset name, or the target's ``data_dir`` does not exist (local executor).
        WriteError: the results folder cannot be written.
        EstimationError: with ``devices``, no device's worker could start.
    """
    _refuse_the_old_signature(sampler, options)
    options = options if options is not None else EstimateSettings()
    started = time.perf_counter()
    runner = make_executor(
        options.executor, ray_address=options.ray_address, cpus_per_task=options.cpus_per_task, device=options.device, devices=options.devices
    )  # fmt: skip
    plan = plan_run(checkpoints_dir, sampler, options, target if target is not None else Target(), loss, blocks)
    store = ResultsStore(Path(options.results_dir), plan.spec.settings_hash)
    store.write_settings(plan.spec.settings, loss, calibration)
    summary = EstimateSummary(
        settings_hash=store.settings_hash, folder=store.folder, selected=[job.label for job in plan.jobs], scopes=[scope.name for scope in plan.scopes]
    )  # fmt: skip
    claims = Claims(store.claims_folder, options.claim_timeout_seconds)
    worker = _Worker(store, claims, summary, force=options.force, reporter=reporter)
    worker.set_aside_done(plan.jobs)
    spec = replace(plan.spec, precision=_run_precision(store)) if plan.spec.settings.precision == "auto" else plan.spec
    reporter.start("checkpoints", f"Checkpoints ({len(summary.already_done)} already done)", len(worker.todo))
    try:
        with claims:
            runner.run(worker.claimed_jobs(), spec, worker.on_result, reporter, job_function=run_job, failure_record=failure_record)
    except BaseException as error:
        if not isinstance(error, Exception):  # KeyboardInterrupt, console.Terminated, SystemExit
            error.estimate_summary = worker.interrupted(time.perf_counter() - started)  # type: ignore[attr-defined]
        raise
    finally:
        reporter.finish("checkpoints")
    summary.elapsed_seconds = time.perf_counter() - started
    return summary


def _refuse_the_old_signature(sampler: Any, options: Any) -> None:
    if not isinstance(sampler, SamplerSettings) or not isinstance(options, (EstimateSettings, type(None))):
        raise TypeError(  # most likely a call written for the earlier estimate_all(checkpoints_dir, results_dir, settings, device=...)
            "estimate_all(checkpoints_dir, sampler: SamplerSettings, options: EstimateSettings | None = None, ...): "
            "results_dir, device and the run's other options are fields of llcv.settings.EstimateSettings"
        )


@dataclass(frozen=True)
class RunPlan:
    """What one ``estimate_all`` call is to do: what its jobs share, the scopes, and this worker's jobs."""

    spec: JobSpec
    scopes: list[Scope]
    jobs: list[EstimateJob]  # the whole-model curve first, then each refined scope; this worker's shard


def plan_run(
    checkpoints_dir: Path | str,
    sampler: SamplerSettings,
    options: EstimateSettings,
    target: Target,
    loss: LossSpec = DEFAULT_LOSS,
    blocks: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
) -> RunPlan:
    """Check the request and list the jobs, before anything is written: a bad device, name,
    selection or refinement fails here rather than once per checkpoint.

    Raises:
        SettingsError, CheckpointError, DataError: as ``estimate_all``.
    """
    settings, per_class = class_refinement(sampler, options.per_class)
    local = options.executor == "local"
    if local and options.devices is None:  # make_executor checked the devices
        resolve_device(options.device)
    target.check(data_dir_here=local)  # Ray workers may see other folders
    all_paths = list_checkpoints(Path(checkpoints_dir))
    if not all_paths:
        raise SettingsError(f"checkpoints directory {checkpoints_dir} holds no checkpoint files (.pt, .pth, .pth.tar, .ckpt)")
    paths = select_checkpoints(all_paths, every_nth=options.every_nth, steps=options.steps)
    spec = JobSpec(
        settings=settings, settings_hash=settings_hash(settings, loss), loss=loss, device=options.device, target=target, executor=options.executor
    )  # fmt: skip
    _check_model_builds(paths, spec)
    scopes = run_scopes(paths, spec, options.per_layer, per_class, blocks, options.block_depth)
    jobs = [EstimateJob(path, scope) for scope in scopes for path in paths]
    shard = parse_shard(options.shard)
    if shard is not None:  # by (checkpoint, scope): the whole model's share is its file name's
        jobs = [job for job in jobs if shard_of(shard_name(job.checkpoint.name, job.scope), shard[1]) == shard[0]]
    _check_unique_keys(jobs)
    return RunPlan(spec, scopes, jobs)


def _check_model_builds(paths: Sequence[Path], spec: JobSpec) -> None:
    """Build the first checkpoint's model before any work, so that what concerns the whole run
    fails once, as a settings error: a checkpoint recording a factory with none given, a factory
    that does not build a module, a registry model whose library is missing. A checkpoint that
    does not load (``CheckpointError``) is left to its own failed record."""
    if not paths:
        return
    try:
        spec.target.at(paths[0]).load_model()
    except SettingsError:
        raise
    except LLCVError:
        pass


class _Worker:
    """This worker's pass over a run's jobs: set aside what is done, claim just in time, write
    each record as it comes back, and keep the summary and the ETA."""

    def __init__(self, store: ResultsStore, claims: Claims, summary: EstimateSummary, *, force: bool, reporter: Reporter):
        self.store, self.claims, self.summary, self.force, self.reporter = store, claims, summary, force, reporter
        self.started_at = _now()  # --force redoes records from before this call only
        self.todo: list[EstimateJob] = []
        self.finished: set[str] = set()
        self.first_handed_out: float | None = None  # for the ETA
        self.done_before = 0

    def set_aside_done(self, jobs: list[EstimateJob]) -> None:
        """Split ``jobs`` into those already done and ``todo``."""
        for job in jobs:
            if self.done_already(job, announce=True):
                self.summary.already_done.append(job.label)
            else:
                self.todo.append(job)
        self.done_before = len(self.summary.already_done)

    def done_already(self, job: EstimateJob, announce: bool = False) -> bool:
        """Whether ``job`` has a done record made from this very file, for this scope's refinement."""
        record = self.store.read_record(job.checkpoint.name, job.scope)
        if record is None:
            return False
        try:
            current = fingerprint(job.checkpoint)
        except OSError:
            return False
        if not is_done(record, current):
            if announce and record.is_done:
                self.reporter.note(f"{job.label} changed since its record was written (or comes from another run); redoing it")
            return False
        if not same_refinement(record, job.part):
            if announce:
                self.reporter.note(f"{job.label} was estimated with other parameters or classes for this scope; redoing it")
            return False
        # --force redoes records from before this call, not those other forced workers just wrote
        return not self.force or (record.finished or "") >= self.started_at

    def claimed_jobs(self) -> Iterator[EstimateJob]:
        """The jobs to run, each claimed as it is handed out, so a worker holds only what it is
        working on; jobs another worker holds are retried once at the end."""
        busy = []
        for attempt, queue in enumerate((self.todo, busy)):
            for job in queue:
                if not self.claims.try_claim(job.key):
                    if attempt == 0:
                        busy.append(job)
                    else:
                        self.summary.elsewhere.append(job.label)
                        self.reporter.advance("checkpoints", 1)
                    continue
                if self.done_already(job):  # finished by another worker since we looked
                    self.claims.release(job.key)
                    self.summary.already_done.append(job.label)
                    self.reporter.advance("checkpoints", 1)
                    continue
                if self.first_handed_out is None:
                    self.first_handed_out = time.perf_counter()
                yield job

    def on_result(self, job: EstimateJob, record: LLCRecord) -> None:
        """Write ``record``, release its claim, and say how it went."""
        self.store.write_record(record)
        self.claims.release(job.key)
        self.store.rebuild_summary()
        self.finished.add(job.label)
        if record.is_done:
            self.summary.computed.append(job.label)
            self.reporter.note(_result_line(job, record))
        else:
            self.summary.failed[job.label] = str(record.error)
            self.reporter.note(f"{job.label}: failed: {record.error}")
        # the ETA from the measured time per checkpoint (progress bars estimate speed over a
        # short window, too short for checkpoints that take minutes)
        each = (time.perf_counter() - (self.first_handed_out or time.perf_counter())) / len(self.finished)
        done_meanwhile = len(self.summary.already_done) - self.done_before  # by other workers
        unfinished = len(self.todo) - len(self.finished) - len(self.summary.elsewhere) - done_meanwhile
        self.reporter.advance("checkpoints", 1, each=f"{each:.1f} s", left=_duration(each * max(unfinished, 0)))

    def interrupted(self, elapsed_seconds: float) -> EstimateSummary:
        """The summary of a run stopped by Ctrl-C or SIGTERM: what was left unreached."""
        summary = self.summary
        summary.interrupted = True
        reachable = {*summary.already_done, *summary.elsewhere, *self.finished}
        summary.left = [job.label for job in self.todo if job.label not in reachable]
        summary.elapsed_seconds = elapsed_seconds
        return summary


def _result_line(job: EstimateJob, record: LLCRecord) -> str:
    std, standard_error = record.llc_std, record.llc_se
    healthy, failures = record.health
    verdict = "" if healthy is not False else f", unhealthy: {'; '.join(failure.brief for failure in failures)}"
    return (
        f"{job.label}: LLC {record.llc_mean:.4g} ± {'—' if std is None else format(std, '.2g')} "
        f"(standard error {'—' if standard_error is None else format(standard_error, '.2g')}; "
        f"{record.elapsed_seconds or 0.0:.1f} s{verdict})"
    )


def results_folder(sampler: SamplerSettings, options: EstimateSettings | None = None, loss: LossSpec = DEFAULT_LOSS) -> Path:
    """The settings-hash folder ``estimate_all(checkpoints_dir, sampler, options, loss=loss)`` writes into."""
    options = options if options is not None else EstimateSettings()
    settings, _ = class_refinement(sampler, options.per_class)
    return ResultsStore(Path(options.results_dir), settings_hash(settings, loss)).folder


def _run_precision(store: ResultsStore) -> PrecisionChoice | None:
    """For ``precision="auto"``: what the run's earlier records ran in, so a resumed or widened run
    keeps it; None before the first record (a process then decides at its first estimate, and
    ``DevicesExecutor`` hands the first checkpoint's choice to the others)."""
    for record in store.records():
        choice = record.precision_choice if record.is_done else None
        if choice:
            return PrecisionChoice.kept_from(choice)
    return None


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
