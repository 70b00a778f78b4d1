"""estimate_all: the LLC of every checkpoint of a run, resumable, crash-safe and shareable by workers.

For each selected checkpoint (and scope) a worker

1. skips it when a ``done`` record made from this very file exists (``--force`` redoes it);
2. claims it: a claim file created exclusively in ``<hash>/.claims/`` holding the worker's host,
   pid and a heartbeat that a background thread refreshes. A claim whose heartbeat is older
   than ``claim_timeout_seconds``, or whose process is gone from this host, is taken over;
3. estimates it with ``llcv.sampling.estimate_llc`` (the model rebuilt per checkpoint, the
   data prepared once per process) and writes the record atomically, then releases the claim.

Records are whole files renamed into place, so a ``kill -9`` at any moment leaves only complete
records and, at worst, a claim that the next run takes over. Ctrl-C and SIGTERM release the
claims on the way out. Claims are exclusive file creations (``os.link``), which hold on NFS and
other cluster filesystems; ``filelock`` only serialises the rarer takeover and heartbeat, where
a filesystem without working ``flock`` costs at most a duplicated estimate, never a corrupt file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from llcv.checkpoints import CheckpointInfo, list_checkpoints
from llcv.devices import resolve_device
from llcv.errors import DataError, LLCVError, SettingsError
from llcv.fileio import WriteError
from llcv.health import brief_reason
from llcv.precision import PrecisionChoice
from llcv.progress import SILENT, Reporter
from llcv.results import (
    CLAIMS_FOLDER,
    DEFAULT_LOSS,
    DEFAULT_SCOPE,
    RECORD_FORMAT,
    RECORD_FORMAT_VERSION,
    ResultsStore,
    check_scope,
    fingerprint,
    is_done,
    record_health,
    record_stem,
    settings_hash,
    step_from_name,
)
from llcv.sampling import LossSpec, SamplingData, default_nbeta, estimate_llc, select_parameters
from llcv.settings import SamplerSettings

logger = logging.getLogger("llcv")

HEARTBEAT_MAX_INTERVAL = 60.0  # seconds; a heartbeat every timeout/5, at least this often


# --- choosing checkpoints -------------------------------------------------------------------


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` or ``(K, N)`` as ``(K, N)``, with 0 <= K < N.

    Raises:
        SettingsError: malformed, or K outside 0..N-1.
    """
    if shard is None:
        return None
    if isinstance(shard, str):
        parts = shard.split("/")
        if len(parts) != 2 or not all(part.strip().isdecimal() for part in parts):  # isdigit() admits "²", which int() refuses
            raise SettingsError(f"shard {shard!r}: use K/N with 0 <= K < N, e.g. 0/4")
        shard = (int(parts[0]), int(parts[1]))
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise SettingsError(f"shard {index}/{count}: use K/N with 0 <= K < N, e.g. 0/4")
    return index, count


def shard_of(name: str, count: int) -> int:
    """The share a checkpoint belongs to: a stable hash of its file name, so shares never reshuffle."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % count


def select_checkpoints(
    paths: Sequence[Path],
    *,
    every_nth: int = 1,
    steps: Sequence[int] | None = None,
    shard: str | tuple[int, int] | None = None,
) -> list[Path]:
    """The checkpoints one worker estimates, in training order.

    Args:
        paths: all checkpoints, in training order (``list_checkpoints``).
        every_nth: every K-th checkpoint starting with the first, plus the last (a coarse pass
            that a plain rerun fills in later).
        steps: only the checkpoints at these steps (``step_*.pt`` names).
        shard: ``K/N``: only those whose file-name hash falls in share K of N.

    Raises:
        SettingsError: both ``every_nth`` and ``steps``, or a requested step has no checkpoint.
    """
    paths = list(paths)
    if steps is not None and every_nth != 1:
        raise SettingsError("--every-nth and --steps choose checkpoints in two ways; give only one")
    if every_nth < 1:
        raise SettingsError(f"every_nth must be at least 1, got {every_nth}")
    if steps is not None:
        by_step = {step_from_name(path.name): path for path in paths}
        absent = sorted(set(steps) - set(by_step))
        if absent:
            known = sorted(step for step in by_step if step is not None)
            raise SettingsError(
                f"no checkpoint at step(s) {', '.join(map(str, absent))}; the steps present are "
                f"{', '.join(map(str, known)) or 'none (only step_*.pt files have a step in their name)'}"
            )
        wanted = set(steps)
        paths = [path for path in paths if step_from_name(path.name) in wanted]
    elif every_nth > 1 and paths:
        chosen = paths[::every_nth]
        paths = chosen if chosen[-1] == paths[-1] else [*chosen, paths[-1]]
    parsed = parse_shard(shard)
    if parsed is not None:
        index, count = parsed
        paths = [path for path in paths if shard_of(path.name, count) == index]
    return paths


# --- claims ---------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


@dataclass(frozen=True)
class WorkerIdentity:
    """Who holds a claim: the host, the process, and a unique id per ``estimate_all`` call."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    worker: str = field(default_factory=lambda: uuid.uuid4().hex)


class Claims:
    """This worker's claims in one results folder, kept alive by a heartbeat thread.

    Use as a context manager: leaving it (normally, by an exception, Ctrl-C or SIGTERM) stops
    the heartbeat and releases every claim still held.
    """

    def __init__(self, folder: Path, timeout_seconds: float, identity: WorkerIdentity | None = None):
        self.folder = Path(folder)
        self.timeout = float(timeout_seconds)
        self.identity = identity or WorkerIdentity()
        self.held: set[str] = set()
        self._mutex = threading.Lock()  # the heartbeat thread and the main thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # paths
    def path(self, key: str) -> Path:
        return self.folder / f"{key}.claim"

    def _lock(self, key: str):
        from filelock import FileLock

        # one lock for the folder: it guards only takeovers, heartbeats and releases, each a few ms
        return FileLock(self.folder / "claims.lock", timeout=min(30.0, max(self.timeout / 2, 1.0)))

    # lifecycle
    def __enter__(self) -> "Claims":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sweep()
        interval = min(self.timeout / 5, HEARTBEAT_MAX_INTERVAL)
        self._thread = threading.Thread(target=self._beat, args=(interval,), name="llcv-claims-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for key in list(self.held):
            try:
                self.release(key)
            except OSError as error:  # a claim left behind is taken over later; never mask the real exit
                logger.warning("could not release claim %s: %s", self.path(key), error)
        # An interrupt between writing a claim's temporary file and renaming it can leave the file.
        for leftover in self.folder.glob(f".*.{self.identity.worker}.*.tmp"):
            leftover.unlink(missing_ok=True)

    # the claim file
    def _payload(self, key: str, claimed: float | None = None) -> dict[str, Any]:
        now = time.time()
        return {
            "key": key,
            "host": self.identity.host,
            "pid": self.identity.pid,
            "worker": self.identity.worker,
            "claimed": claimed if claimed is not None else now,
            "heartbeat": now,
        }

    def _temporary(self, key: str, payload: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{key}.{self.identity.worker}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)  # a full disk leaves no half-written temporary behind
            raise
        return temporary

    def read(self, key: str) -> dict[str, Any] | None:
        """The claim on ``key``: a dict, ``{}`` when the file exists but cannot be parsed, None when absent."""
        try:
            payload = json.loads(self.path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return payload if isinstance(payload, dict) else {}

    def is_stale(self, claim: dict[str, Any]) -> bool:
        """A claim is stale when its heartbeat is older than the timeout, or its process died on this host."""
        heartbeat = claim.get("heartbeat")
        if not isinstance(heartbeat, (int, float)):
            try:
                heartbeat = self.path(str(claim.get("key", ""))).stat().st_mtime
            except OSError:
                return True
        if time.time() - heartbeat > self.timeout:
            return True
        same_host = claim.get("host") == self.identity.host
        return same_host and isinstance(claim.get("pid"), int) and not _pid_alive(claim["pid"])

    def try_claim(self, key: str) -> bool:
        """Claim ``key`` if no live worker holds it; True when this worker now holds it.

        Raises:
            WriteError: the claim could not be written (a full or read-only disk).
        """
        try:
            temporary = self._temporary(key, self._payload(key))
        except OSError as error:
            raise WriteError(f"could not claim {key}: writing in {self.folder} failed: {error.strerror or error}") from None
        try:
            try:
                os.link(temporary, self.path(key))  # exclusive: fails if any claim exists
                with self._mutex:
                    self.held.add(key)
                return True
            except FileExistsError:
                pass
            current = self.read(key)
            if current is None:  # released in between: try once more
                try:
                    os.link(temporary, self.path(key))
                    with self._mutex:
                        self.held.add(key)
                    return True
                except FileExistsError:
                    return False
            if not current:
                current = {"key": key}  # unparseable: judged by the file's age
            if current.get("worker") == self.identity.worker:
                with self._mutex:
                    self.held.add(key)
                return True
            if not self.is_stale(current):
                return False
            return self._take_over(key, current, temporary)
        finally:
            temporary.unlink(missing_ok=True)

    def _take_over(self, key: str, stale: dict[str, Any], temporary: Path) -> bool:
        from filelock import Timeout

        try:
            with self._lock(key):
                now = self.read(key) or {}
                if now.get("worker") != stale.get("worker") or now.get("heartbeat") != stale.get("heartbeat"):
                    return False  # someone else took it over, or its owner came back to life
                os.replace(temporary, self.path(key))
        except (Timeout, OSError) as error:
            logger.info("could not take over the stale claim %s: %s", self.path(key), error)
            return False
        held = (self.read(key) or {}).get("worker") == self.identity.worker
        if held:
            logger.info("took over the stale claim on %s (was %s pid %s)", key, stale.get("host"), stale.get("pid"))
            with self._mutex:
                self.held.add(key)
        return held

    def sweep(self) -> int:
        """Remove the stale claims of dead workers (say, on checkpoints they finished just before a
        ``kill -9``); returns how many were removed."""
        from filelock import Timeout

        removed = 0
        for path in self.folder.glob("*.claim"):
            key = path.name[: -len(".claim")]
            stale = self.read(key)
            if stale is None or stale.get("worker") == self.identity.worker or not self.is_stale({"key": key, **stale}):
                continue
            try:
                with self._lock(key):
                    now = self.read(key) or {}
                    if now.get("worker") == stale.get("worker") and now.get("heartbeat") == stale.get("heartbeat"):
                        path.unlink(missing_ok=True)
                        removed += 1
            except (Timeout, OSError) as error:
                logger.info("could not remove the stale claim %s: %s", path, error)
        return removed

    def refresh(self, key: str) -> bool:
        """Renew the heartbeat of a held claim; False (and the claim dropped) if another worker took it."""
        from filelock import Timeout

        try:
            with self._lock(key):
                current = self.read(key) or {}
                if current.get("worker") != self.identity.worker:
                    logger.warning("lost the claim on %s to %s pid %s", key, current.get("host"), current.get("pid"))
                    with self._mutex:
                        self.held.discard(key)
                    return False
                temporary = self._temporary(key, self._payload(key, claimed=current.get("claimed")))
                os.replace(temporary, self.path(key))
        except (Timeout, OSError) as error:
            logger.info("heartbeat of %s skipped: %s", self.path(key), error)
        return True

    def release(self, key: str) -> None:
        """Remove this worker's claim on ``key`` (a claim taken over by another worker is left alone).

        The key stays in ``held`` until the file is gone, so an interrupt in here leaves it for
        ``close`` to release.
        """
        from filelock import Timeout

        lock = self._lock(key)
        try:
            lock.acquire()
        except (Timeout, OSError):
            lock = None
        try:
            if (self.read(key) or {}).get("worker") == self.identity.worker:
                self.path(key).unlink(missing_ok=True)
        finally:
            if lock is not None:
                lock.release()
        with self._mutex:
            self.held.discard(key)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._mutex:
                keys = list(self.held)
            for key in keys:
                if self._stop.is_set():
                    return
                try:
                    self.refresh(key)
                except Exception as error:  # noqa: BLE001 - the heartbeat must outlive one bad write
                    logger.warning("heartbeat of claim %s failed: %s", key, error)


# --- one checkpoint -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What one record measures: the whole model, one block's weights, or one class's data.

    A refined scope replaces one sampler field for its own estimate and leaves the rest, and the
    settings hash, as they are: a block scope samples only ``params`` (the rest of the model is
    frozen at the checkpoint), a class scope measures the loss on ``classes`` only.

    Attributes:
        name: the record's ``scope``: ``model``, a block's name (``layer3``), or ``class=7``.
        kind: ``model``, ``block`` or ``class``.
        index: the order within its kind: a block's place in the model's declared blocks, a class's label.
        params: a block's parameter-name glob patterns.
        classes: a class scope's labels.
    """

    name: str = DEFAULT_SCOPE
    kind: Literal["model", "block", "class"] = "model"
    index: int = 0
    params: tuple[str, ...] | None = None
    classes: tuple[int, ...] | None = None


WHOLE_MODEL = Scope()


def refined_scopes(blocks: Mapping[str, Sequence[str]] | None = None, classes: Sequence[int] | None = None) -> list[Scope]:
    """The whole model, then one scope per block (in the given order), then one per class.

    Args:
        blocks: {block name: parameter-name glob patterns}, e.g. ``llcv.models.model_blocks("resnet18")``.
        classes: labels, each measured on its own.

    Raises:
        SettingsError: a block name is not usable in a file name, or a block has no pattern.
    """
    scopes = [WHOLE_MODEL]
    for index, (name, patterns) in enumerate((blocks or {}).items()):
        if name == DEFAULT_SCOPE or name.startswith("class="):
            raise SettingsError(f"block name {name!r} is reserved for the whole model or a class; rename the block")
        if isinstance(patterns, str) or not patterns:
            raise SettingsError(f"block {name!r}: give a list of parameter-name patterns, e.g. ['{name}.*']")
        scopes.append(Scope(check_scope(name), "block", index, params=tuple(patterns)))
    for label in sorted(set(classes or ())):
        scopes.append(Scope(f"class={label}", "class", int(label), classes=(int(label),)))
    return scopes


def scope_settings(settings: SamplerSettings, scope: Scope, dataset: Dataset) -> SamplerSettings:
    """The sampler settings of one scope: the run's settings with the scope's ``params`` or ``classes``.

    A class scope also keeps every curve at one temperature and within its data: when ``nbeta``
    is left to its default (``batch_size / ln(batch_size)``, with the minibatch capped by the
    data), it is fixed at the whole model's value, since a class may hold fewer samples than a
    minibatch; and ``num_samples`` caps the class's samples instead of failing when the class
    has fewer.
    """
    if scope.kind == "model":
        return settings
    changes: dict[str, Any] = {}
    if scope.params is not None:
        changes["params"] = list(scope.params)
    if scope.classes is not None:
        from llcv.data import dataset_targets

        changes["classes"] = list(scope.classes)
        whole = len(dataset) if settings.num_samples is None else min(settings.num_samples, len(dataset))
        if settings.nbeta is None:
            changes["nbeta"] = default_nbeta(min(settings.batch_size, whole))
        if settings.num_samples is not None:
            available = int(torch.isin(dataset_targets(dataset), torch.tensor(scope.classes)).sum())
            if settings.num_samples >= available:
                changes["num_samples"] = None
    return SamplerSettings.model_validate({**settings.model_dump(), **changes})


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


@dataclass(frozen=True)
class JobSpec:
    """What every job of one ``estimate_all`` call shares; sent once to each device or Ray worker."""

    settings: SamplerSettings
    settings_hash: str
    loss: LossSpec = DEFAULT_LOSS
    device: str = "auto"
    model_factory: Callable[[], nn.Module] | None = None
    dataset: Dataset | str | None = None
    model_name: str | None = None
    stem: str | None = None
    data_dir: str | None = None
    executor: str = "local"
    # With precision "auto": the run's precision, from its earlier records or decided once before
    # several device workers start, so every checkpoint of a run samples alike; None: each
    # process decides at its first estimate.
    precision: PrecisionChoice | None = None


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
            job.checkpoint, model_name=spec.model_name, stem=spec.stem, dataset=spec.dataset, data_dir=spec.data_dir
        )
        return target.model, target.checkpoint, target.dataset
    if spec.model_factory is not None:
        model, info = load_checkpoint(job.checkpoint, model=spec.model_factory())
    else:
        model, info = load_checkpoint(job.checkpoint, model_name=spec.model_name, stem=spec.stem)
    if isinstance(spec.dataset, Dataset):
        return model, info, spec.dataset
    recorded = info.dataset
    name = spec.dataset or (recorded.name if recorded else DEFAULT_FOREIGN_DATASET)
    directory = spec.data_dir if spec.data_dir is not None else (recorded.data_dir if recorded and recorded.name == name else None)
    split, _ = training_split(name, str(directory) if directory is not None else None, recorded.seed if recorded else 0)
    return model, info, split


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


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
) -> dict[str, Any]:
    """A result record (docs/formats.md): status, checkpoint identity, metrics, and the result or error."""
    step = info.step if info is not None else step_from_name(job.checkpoint.name)
    healthy = status == "done" and bool(result and result.get("healthy"))
    reasons = list((result or {}).get("health_reasons") or []) if status == "done" else [error or "failed"]
    return {
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
        "settings_hash": spec.settings_hash,
        "healthy": healthy,
        "health_reasons": reasons,
        "result": result,
        "error": error,
        "elapsed_seconds": elapsed_seconds,
        "finished": _now(),
        "worker": {"host": socket.gethostname(), "pid": os.getpid(), "executor": spec.executor},
    }


def run_job(job: EstimateJob, spec: JobSpec, reporter: Reporter = SILENT) -> dict[str, Any]:
    """Estimate one checkpoint and return its record; any failure becomes a ``failed`` record.

    Only interruptions (Ctrl-C, SIGTERM, ``SystemExit``) propagate.
    """
    started = time.perf_counter()
    info, stamp = None, None
    try:
        stamp = fingerprint(job.checkpoint)
        model, info, dataset = _load(job, spec)
        device = resolve_device(spec.device)
        settings = scope_settings(spec.settings, job.part, dataset)
        data = _sampling_data(dataset, settings, device)
        result = estimate_llc(model, data, settings, loss=spec.loss, device=device, reporter=reporter, precision=spec.precision)
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
    checkpoints_dir: Path,
    results_dir: Path,
    settings: SamplerSettings,
    *,
    model_factory: Callable[[], nn.Module] | None = None,
    dataset: Dataset | str | None = None,
    loss: LossSpec = DEFAULT_LOSS,
    device: str = "auto",
    shard: str | tuple[int, int] | None = None,
    executor: str = "local",
    reporter: Reporter = SILENT,
    every_nth: int = 1,
    steps: Sequence[int] | None = None,
    force: bool = False,
    ray_address: str | None = None,
    cpus_per_task: int | None = None,
    devices: Sequence[str] | None = None,
    claim_timeout_seconds: float = 600.0,
    model_name: str | None = None,
    stem: str | None = None,
    data_dir: Path | str | None = None,
    per_layer: bool | Sequence[str] = False,
    per_class: bool | Sequence[int] = False,
    blocks: Mapping[str, Sequence[str]] | None = None,
) -> EstimateSummary:
    """Estimate the LLC of every checkpoint in ``checkpoints_dir``, one record file each.

    Safe to stop at any moment and to run as several workers on one ``results_dir``: a rerun
    skips what is done, and workers never estimate the same checkpoint at the same time.
    Every checkpoint uses the same settings and seed (common random numbers across checkpoints).

    Args:
        checkpoints_dir: a training run's checkpoints (``list_checkpoints`` order).
        results_dir: where ``<settings-hash>/`` goes.
        settings: the sampler settings.
        model_factory: ``() -> nn.Module`` to load foreign weights into (your own architecture).
        dataset: the training data as a Dataset, or a dataset name; None: the one in the checkpoint.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(model, batch) -> loss``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        shard: ``"K/N"``: only share K of N (by a stable hash of the file name).
        executor: ``"local"`` (this process, one checkpoint at a time) or ``"ray"`` (one task per checkpoint).
        reporter: progress: ``checkpoints`` overall and one loop per chain (local executor and
            ``devices``, whose loops are keyed and labelled by device: ``cuda:1/chains-0``).
        every_nth, steps: choose a subset (see ``select_checkpoints``).
        force: redo checkpoints that already have a done record.
        ray_address: the Ray cluster to join; None starts a local instance unless Ray is already initialised.
        cpus_per_task: Ray only: CPUs, and torch threads, per task (default 1, or a GPU node's CPUs per GPU).
        devices: one worker process per device of this machine, e.g. ``["cuda:0", "cuda:1"]`` or
            ``["cpu", "cpu"]``; ``["all"]``: every CUDA GPU here. Replaces ``device``; local executor
            only (``llcv.executors.DevicesExecutor``).
        claim_timeout_seconds: a claim whose heartbeat is older than this is taken over.
        model_name, stem, data_dir: for foreign checkpoints, as in ``llcv.targets.load_target``.
        per_layer: also a weight-refined LLC per block of the model (scope = the block's name), each
            sampling only that block's parameters with the rest frozen: True for every block, or a
            list of block names. Blocks come from ``blocks``, else from the model's registration
            (``register_model(name, blocks=...)``).
        per_class: also a data-refined LLC per class (scope ``class=7``), each measuring the loss
            on that class's samples only: True for every class, or a list of labels.
        blocks: {block name: parameter-name glob patterns} for ``per_layer``, in the order to
            plot them; needed with ``model_factory`` (a model llcv has no registration for).

    Every scope of a checkpoint is its own record (``<stem>__<scope>.json``) in the same
    settings-hash folder as the whole model's, and is resumed, claimed and sharded on its own.
    The whole model is estimated first for every checkpoint, then each block or class in turn.

    Returns:
        The summary. If interrupted (Ctrl-C, SIGTERM), the exception propagates after the claims
        are released, carrying the partial summary as its ``estimate_summary`` attribute.

    Raises:
        SettingsError: bad selection, shard, device(s) or executor; no checkpoints to estimate; a
            refinement the model cannot take (no blocks declared, a block that matches no
            parameter, an unknown class), or ``per_layer`` with ``settings.params`` (or
            ``per_class`` with ``settings.classes``).
        CheckpointError: the checkpoints folder does not exist.
        DataError: an unknown ``dataset`` name, or ``data_dir`` does not exist (local executor).
        WriteError: the results folder cannot be written.
        EstimationError: with ``devices``, no device's worker could start.
    """
    from llcv.executors import make_executor

    started = time.perf_counter()
    runner = make_executor(executor, ray_address=ray_address, cpus_per_task=cpus_per_task, device=device, devices=devices)
    if executor == "local":
        if devices is None:  # make_executor checked the devices
            resolve_device(device)  # a bad --device fails now, not once per checkpoint
        if data_dir is not None and not Path(data_dir).is_dir():  # likewise (Ray workers may see other folders)
            raise DataError(f"data directory {data_dir} does not exist or is not a folder")
    _check_names(dataset, model_name, stem)
    all_paths = list_checkpoints(Path(checkpoints_dir))
    if not all_paths:
        raise SettingsError(f"checkpoints directory {checkpoints_dir} holds no checkpoint files (.pt, .pth, .pth.tar, .ckpt)")
    paths = select_checkpoints(all_paths, every_nth=every_nth, steps=steps)
    spec = JobSpec(
        settings=settings, settings_hash=settings_hash(settings, loss), loss=loss, device=device,
        model_factory=model_factory, dataset=dataset, model_name=model_name, stem=stem,
        data_dir=str(data_dir) if data_dir is not None else None, executor=executor,
    )  # fmt: skip
    scopes = _run_scopes(paths, spec, per_layer, per_class, blocks)
    jobs = [EstimateJob(path, scope) for scope in scopes for path in paths]  # the whole-model curve first
    parsed = parse_shard(shard)
    if parsed is not None:  # by (checkpoint, scope): the whole model's share is its file name's
        jobs = [job for job in jobs if shard_of(_shard_name(job), parsed[1]) == parsed[0]]
    _check_unique_keys(jobs)

    digest = spec.settings_hash  # of the run's settings: a scope's own params/classes never enter it
    store = ResultsStore(Path(results_dir), digest)
    store.write_settings(settings, loss)
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
            if announce and record.get("status") == "done":
                reporter.note(f"{job.label} changed since its record was written (or comes from another run); redoing it")
            return False
        if not _same_refinement(record, job.part):
            if announce:
                reporter.note(f"{job.label} was estimated with other parameters or classes for this scope; redoing it")
            return False
        # --force redoes records from before this call, not those other forced workers just wrote
        return not force or str(record.get("finished", "")) >= run_started

    todo: list[EstimateJob] = []
    for job in jobs:
        if done_already(job, announce=True):
            summary.already_done.append(job.label)
        else:
            todo.append(job)
    finished: set[str] = set()
    first_started: list[float] = []  # when the first job was handed out, for the ETA
    done_before = len(summary.already_done)

    def on_result(job: EstimateJob, record: dict[str, Any]) -> None:
        store.write_record(record)
        claims.release(job.key)
        store.rebuild_summary()
        finished.add(job.label)
        if record["status"] == "done":
            summary.computed.append(job.label)
            result = record["result"]
            std = result.get("llc_std")
            healthy, reasons = record_health(record)
            verdict = "" if healthy is not False else f", unhealthy: {'; '.join(brief_reason(reason) for reason in reasons)}"
            reporter.note(
                f"{job.label}: LLC {result['llc_mean']:.4g} ± {'—' if std is None else format(std, '.2g')} "
                f"({record['elapsed_seconds']:.1f} s{verdict})"
            )
        else:
            summary.failed[job.label] = record["error"]
            reporter.note(f"{job.label}: failed: {record['error']}")
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
        with Claims(store.folder / CLAIMS_FOLDER, claim_timeout_seconds) as claims:
            runner.run(claimed_jobs(), spec, on_result, reporter)
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


def _run_precision(store: ResultsStore) -> PrecisionChoice | None:
    """For ``precision="auto"``: what the run's earlier records ran in, so a resumed or widened run
    keeps it; None before the first record (a process then decides at its first estimate, and
    ``DevicesExecutor`` hands the first checkpoint's choice to the others)."""
    for record in store.records():
        choice = (record.get("result") or {}).get("precision_choice") if record.get("status") == "done" else None
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


# --- refined scopes -------------------------------------------------------------------------


def _shard_name(job: EstimateJob) -> str:
    """What a job's share is hashed from: the checkpoint's file name, plus the scope for refined ones."""
    return job.checkpoint.name if job.scope == DEFAULT_SCOPE else f"{job.checkpoint.name}__{job.scope}"


def _same_refinement(record: Mapping[str, Any], scope: Scope) -> bool:
    """Whether a record of a refined scope was made with the scope's current patterns or labels
    (a model's blocks may be redeclared between runs)."""
    recorded = (record.get("result") or {}).get("settings") or {}
    if scope.params is not None and recorded.get("params") != list(scope.params):
        return False
    return scope.classes is None or recorded.get("classes") == list(scope.classes)


def _run_scopes(
    paths: Sequence[Path],
    spec: JobSpec,
    per_layer: bool | Sequence[str],
    per_class: bool | Sequence[int],
    blocks: Mapping[str, Sequence[str]] | None,
) -> list[Scope]:
    """The scopes of this run: the whole model, then the blocks and classes asked for.

    Blocks and classes are read from the first checkpoint that loads (its model's registration,
    its class count, or the given dataset's labels), and each block is checked to match a
    parameter, so a mistake fails before any work rather than once per checkpoint.
    """
    if per_layer is False and per_class is False:
        if blocks is not None:
            raise SettingsError("blocks= is used by per_layer=; pass per_layer=True as well")
        return [WHOLE_MODEL]
    if per_layer is not False and spec.settings.params is not None:
        raise SettingsError("per-layer estimates choose their own parameters; leave the sampler's params unset")
    if per_class is not False and spec.settings.classes is not None:
        raise SettingsError("per-class estimates choose their own classes; pass the classes to per_class (--per-class --classes) instead")
    model, info = _first_model(paths, spec)
    chosen_blocks: dict[str, Sequence[str]] = {}
    if per_layer is not False:
        declared = dict(blocks) if blocks is not None else _declared_blocks(info.model.name, spec)
        wanted = list(declared) if per_layer is True else list(per_layer)
        unknown = [name for name in wanted if name not in declared]
        if unknown:
            raise SettingsError(f"unknown block(s) {', '.join(unknown)}; the model's blocks are {', '.join(declared)}")
        chosen_blocks = {name: declared[name] for name in wanted}
        for name, patterns in chosen_blocks.items():
            try:
                select_parameters(model, list(patterns) if not isinstance(patterns, str) else [patterns])
            except SettingsError as problem:
                raise SettingsError(f"block {name!r} ({', '.join(patterns)}): {problem}") from None
    labels: list[int] = []
    if per_class is not False:
        present = _class_labels(info, spec)
        labels = present if per_class is True else [int(label) for label in per_class]
        unknown = sorted(set(labels) - set(present))
        if unknown:
            raise SettingsError(f"unknown class(es) {', '.join(map(str, unknown))}; the labels are {_ranges(present)}")
    return refined_scopes(chosen_blocks, labels)


def _first_model(paths: Sequence[Path], spec: JobSpec) -> tuple[nn.Module, CheckpointInfo]:
    """The model of the first checkpoint that loads (raises the first one's error if none does)."""
    from llcv.checkpoints import load_checkpoint

    first_error: LLCVError | None = None
    for path in paths:
        try:
            factory_model = spec.model_factory() if spec.model_factory is not None else None
            return load_checkpoint(path, model=factory_model, model_name=spec.model_name, stem=spec.stem)
        except LLCVError as problem:
            first_error = first_error or problem
    if first_error is not None:
        raise first_error
    raise SettingsError("no checkpoint selected, so the model's blocks and classes are unknown")


def _declared_blocks(model_name: str, spec: JobSpec) -> dict[str, Sequence[str]]:
    from llcv.models import list_models, model_blocks

    if spec.model_factory is not None or model_name not in list_models():
        raise SettingsError(
            f"per-layer estimates need the model's blocks: pass blocks={{'name': ['pattern.*'], ...}}, "
            "or register the model with register_model(name, blocks=...)"
        )
    declared = model_blocks(model_name)
    if not declared:
        raise SettingsError(f"model {model_name!r} declares no blocks; register it with register_model({model_name!r}, blocks=...) or pass blocks=")
    return declared


def _class_labels(info: CheckpointInfo, spec: JobSpec) -> list[int]:
    """The labels of the given dataset, else 0..C-1 for the checkpoint's C outputs."""
    if isinstance(spec.dataset, Dataset):
        from llcv.data import dataset_targets

        return sorted(set(dataset_targets(spec.dataset).tolist()))
    if info.model.num_classes is None:
        raise SettingsError(f"cannot tell the classes of {info.path}: pass the dataset to choose per-class scopes from")
    return list(range(info.model.num_classes))


def _ranges(labels: Sequence[int]) -> str:
    labels = sorted(labels)
    if labels and labels == list(range(labels[0], labels[-1] + 1)) and len(labels) > 3:
        return f"{labels[0]}..{labels[-1]}"
    return ", ".join(map(str, labels))
