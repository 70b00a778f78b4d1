"""Executors: where ``estimate_all``'s jobs run: in this process, one process per device, or as Ray tasks.

An executor pulls claimed jobs from an iterator, runs the caller's ``job_function`` on each
(``estimate_all`` passes ``llcv.estimation.run_job``), and hands every record back to
``on_result`` in this process, which writes it and releases the claim. So the store, the claims
and resume behave the same whatever runs the jobs; device and Ray workers only need to read the
checkpoints, never the results folder. A job whose worker died before returning its record gets
the caller's ``failure_record`` instead.

Both functions are given by the caller, so this module knows nothing of what a job is (and
``llcv.estimation`` can import it without a cycle). They must be picklable top-level functions:
device workers are spawned processes and Ray tasks run elsewhere, and each receives them by
reference. Records cross the process boundary as ``llcv.results.records.LLCRecord`` objects, pickled
(pydantic models pickle, and ``llcv.results.records`` is importable in every worker), so what arrives is
already validated and typed.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from llcv.errors import EstimationError, SettingsError
from llcv.sampling import PrecisionChoice
from llcv.progress import SILENT, ForwardingReporter, Reporter, replay
from llcv.results import LLCRecord

_PR_SET_PDEATHSIG = 1  # linux/prctl.h

logger = logging.getLogger("llcv")

OnResult = Callable[[Any, LLCRecord], None]
# (job, spec, reporter) -> record: estimates one job; turns every failure but an interrupt into a failed record
JobFunction = Callable[[Any, Any, Reporter], LLCRecord]
# (job, spec, reason, elapsed_seconds) -> the failed record of a job whose worker died
FailureRecord = Callable[[Any, Any, str, float], LLCRecord]


class Executor(Protocol):
    def run(
        self, jobs: Iterator[Any], spec: Any, on_result: OnResult, reporter: Reporter, *,
        job_function: JobFunction, failure_record: FailureRecord,
    ) -> None:  # fmt: skip
        """Run ``job_function(job, spec, reporter)`` on every job from ``jobs`` and call
        ``on_result(job, record)`` for each, in this process."""


class LocalExecutor:
    """One job at a time in this process; the chains report their progress through ``reporter``."""

    def run(
        self, jobs: Iterator[Any], spec: Any, on_result: OnResult, reporter: Reporter, *,
        job_function: JobFunction, failure_record: FailureRecord,
    ) -> None:  # fmt: skip
        for job in jobs:
            on_result(job, job_function(job, spec, reporter))


def resolve_devices(names: Sequence[str]) -> list[str]:
    """The devices of ``--devices``: ``all`` as every CUDA GPU here, each other name checked to exist.

    Raises:
        SettingsError: ``all`` on a machine without CUDA GPUs, or a device this machine lacks.
    """
    from llcv.devices import resolve_device

    names = list(names)
    if names == ["all"]:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SettingsError(
                "--devices all: this machine has no CUDA GPU; leave --devices out to run here, or give --devices cpu,cpu for two CPU workers"
            )
        return [f"cuda:{index}" for index in range(count)]
    missing = [name for name in names if (name.startswith("cuda") and not torch.cuda.is_available())
               or (name == "mps" and not torch.backends.mps.is_available())]  # fmt: skip
    if missing:
        raise SettingsError(
            f"--devices {','.join(names)}: {', '.join(dict.fromkeys(missing))} not available on this machine; "
            "leave --devices out to run here, or give --devices cpu,cpu for two CPU workers"
        )
    for name in names:
        resolve_device(name)  # an index past the last GPU, a name torch refuses
    return names


class DevicesExecutor:
    """One worker process per device of this machine (``--devices cuda:0,cuda:1``, or ``cpu,cpu``).

    Each worker is a fresh ("spawn") process, so CUDA starts cleanly in each, with torch's thread
    count set to this process's divided among the workers. Workers are reused between jobs, so
    each reads the dataset once. Jobs are claimed only as a worker becomes free, and records
    come back here, so claims, resume, shards and the results folder behave as with the local
    executor. Workers forward their progress to ``reporter``, labelled by device.

    A worker that dies (a crash, the kernel's out-of-memory killer) fails its job with the
    reason, and is restarted for the next job; one that dies before finishing any job is not
    (a device that cannot start would fail every job it were given), and its device is left
    out for the rest of the run. Interrupting this process (Ctrl-C, SIGTERM) kills the workers;
    they hold nothing that needs cleaning up.

    Args:
        devices: a name per worker (see ``resolve_devices``); one device runs in this process.
    """

    def __init__(self, devices: Sequence[str]):
        self.devices = list(devices)

    def run(
        self, jobs: Iterator[Any], spec: Any, on_result: OnResult, reporter: Reporter, *,
        job_function: JobFunction, failure_record: FailureRecord,
    ) -> None:  # fmt: skip
        if len(self.devices) == 1:
            spec = dataclasses.replace(spec, device=self.devices[0])
            LocalExecutor().run(jobs, spec, on_result, reporter, job_function=job_function, failure_record=failure_record)
            return
        try:
            pickle.dumps(spec)  # now, for a clear message, not as a failure inside process start-up
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise SettingsError(
                f"--devices runs each device in its own process, so the model factory, loss and dataset must be "
                f"picklable (module-level functions and classes, not lambdas or local functions): {error}"
            ) from None
        first = next(jobs, None)
        if first is None:
            return  # everything is done or claimed elsewhere: no worker to start
        jobs = itertools.chain([first], jobs)
        threads = max(1, torch.get_num_threads() // len(self.devices))
        labels = _worker_labels(self.devices)
        workers = [
            _DeviceWorker(device, label, threads, spec, job_function, failure_record) for device, label in zip(self.devices, labels)
        ]
        reporter.note(f"{len(workers)} workers ({', '.join(labels)}), {threads} torch thread(s) each")
        try:
            self._serve(workers, jobs, on_result, reporter, spec)
        except BaseException:
            for worker in workers:
                worker.stop(reporter, kill=True)
            raise
        for worker in workers:
            worker.stop(reporter)

    @staticmethod
    def _serve(workers: list[_DeviceWorker], jobs: Iterator[Any], on_result: OnResult, reporter: Reporter, spec: Any) -> None:
        # precision="auto" not yet decided for this run: the first checkpoint runs alone and its
        # choice is handed to every later job, so all devices sample alike (each would time its own).
        precision = spec.precision
        undecided = spec.settings.precision == "auto" and precision is None
        exhausted = False
        while True:
            for worker in workers:
                if exhausted or worker.job is not None or worker.retired:
                    continue
                if undecided and any(other.job is not None for other in workers):
                    break
                job = next(jobs, None)  # claimed now, as a worker is free
                if job is None:
                    exhausted = True
                else:
                    worker.submit(job, precision)
            busy = {worker.connection: worker for worker in workers if worker.job is not None}
            if not busy:
                if exhausted:
                    return
                reasons = "; ".join(f"{worker.label}: {worker.reason}" for worker in workers)
                raise EstimationError(f"no device worker could start ({reasons}); the checkpoints not started are left for a rerun")
            for connection in wait(list(busy)):
                finished = busy[connection].receive(reporter)
                if finished is not None:
                    choice = finished[1].precision_choice
                    if undecided and choice:
                        precision, undecided = PrecisionChoice.kept_from(choice), False
                    on_result(*finished)


def _worker_labels(devices: Sequence[str]) -> list[str]:
    """``cuda:0``, ``cuda:1``; ``cpu#1``, ``cpu#2`` where a device has several workers."""
    counts = {device: devices.count(device) for device in devices}
    seen: dict[str, int] = {}
    labels = []
    for device in devices:
        seen[device] = seen.get(device, 0) + 1
        labels.append(device if counts[device] == 1 else f"{device}#{seen[device]}")
    return labels


class _DeviceWorker:
    """This process's side of one device worker: its process and pipe, its job, the loops it shows."""

    def __init__(self, device: str, label: str, num_threads: int, spec: Any, job_function: JobFunction, failure_record: FailureRecord):
        self.device, self.label, self.num_threads = device, label, num_threads
        self.spec = dataclasses.replace(spec, device=device, executor="devices")  # for the records of crashes
        self.job_function, self.failure_record = job_function, failure_record
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: Connection | None = None
        self.job: Any = None
        self.submitted = 0.0
        self.finished = 0  # jobs this device's workers have finished
        self.retired = False
        self.reason = ""  # why the process died, when it could say
        self.exitcode: int | None = None  # of the last process that ended
        self.loops: set[str] = set()  # progress keys started and not finished

    def submit(self, job: Any, precision: PrecisionChoice | None = None) -> None:
        """Send ``job`` (with the run's precision, once decided), starting the process if needed."""
        if self.process is None:
            context = multiprocessing.get_context("spawn")
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_device_worker, args=(theirs, self.device, self.label, self.num_threads, self.spec, self.job_function),
                name=f"llcv-{self.label}", daemon=True,
            )  # fmt: skip
            with _stops_held_back():
                process.start()
                theirs.close()  # so the pipe reads as closed once the worker is gone
                self.process, self.connection = process, mine  # known before a held-back stop raises, so it is killed
        self.job, self.submitted, self.reason = job, time.perf_counter(), ""
        try:
            self.connection.send((job, precision))
        except OSError:
            pass  # the worker is gone: the next read says so

    def receive(self, reporter: Reporter) -> tuple[Any, LLCRecord] | None:
        """Handle one message; returns ``(job, record)`` when the job ended (done, failed, or its worker died)."""
        try:
            message = self.connection.recv()
        except (EOFError, OSError):
            return self._died(reporter)
        kind = message[0]
        if kind == "result":
            job, self.job = self.job, None
            self.finished += 1
            return job, message[1]
        if kind == "crashed":
            self.reason = message[1]
        else:
            if kind == "start":
                self.loops.add(message[1])
            elif kind == "finish":
                self.loops.discard(message[1])
            replay(message, reporter)
        return None

    def _died(self, reporter: Reporter) -> tuple[Any, LLCRecord]:
        self._end(reporter, wait_seconds=10)  # its pipe closed: it is gone, or about to be
        self.reason = self.reason or _exit_reason(self.exitcode)
        job, self.job = self.job, None
        if self.finished == 0:
            self.retired = True
            reporter.note(f"{self.label}: the worker stopped before finishing a checkpoint ({self.reason}); continuing without it")
        return job, _crash_record(self.failure_record, job, self.spec, f"the worker on {self.label} died: {self.reason}", self.submitted)

    def stop(self, reporter: Reporter, kill: bool = False) -> None:
        """End the worker: ask it to exit once idle, or kill it (an interrupt)."""
        if self.process is None:
            return
        if not kill:
            try:
                self.connection.send(None)
            except OSError:
                pass
        self._end(reporter, wait_seconds=0 if kill else 30)

    def _end(self, reporter: Reporter, wait_seconds: float) -> None:
        """Wait for the process to exit (killing it after ``wait_seconds``), then forget it and its loops."""
        self.process.join(timeout=wait_seconds)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.exitcode = self.process.exitcode
        for key in self.loops:
            reporter.finish(key)
        self.loops.clear()
        self.connection.close()
        self.process.close()
        self.process = self.connection = None


# The stops a worker's start must not split: Ctrl-C (the whole process group) and SIGTERM (the
# main process only, as Slurm's time limit sends it).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stops_held_back():
    """Starts processes with SIGINT and SIGTERM blocked, and delivers a stop that arrives meanwhile afterwards.

    A worker inherits the blocked signal mask through fork and exec, so a Ctrl-C sent to the whole
    process group while it is still starting up waits, pending, until the worker ignores both
    signals (which discards it): never a traceback in the worker. In this process the signals are
    held back, not ignored: ignoring them would lose a stop that arrives during a start-up, which
    takes seconds on a loaded machine (the worker imports torch before it reads its job), and the
    run would go on to the end. Held back, a stop cannot land between the worker's launch and the
    moment it is known to be killed on the way out: a SIGTERM there once left a half-started
    worker reading its start-up data from a closed pipe, with a traceback. A stop taken by another
    thread of this process while the main thread holds it back is recorded and raised here once
    the worker is started. Only the main thread may change signal handlers; without signal masks
    (not POSIX) nothing is held back.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # A process start launches multiprocessing's resource tracker if it is not running, and
    # unblocks SIGINT and SIGTERM after that launch, before the worker itself is forked: launch it first.
    resource_tracker.ensure_running()
    received: list[int] = []
    previous_handlers = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in STOP_SIGNALS}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # a pending stop is recorded now
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(received):
        signal.raise_signal(signum)  # through the handler this process had: KeyboardInterrupt, Terminated


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exit code {code}"


def _device_worker(connection: Connection, device: str, label: str, num_threads: int, spec: Any, job_function: JobFunction) -> None:
    """A device worker's process: run ``job_function`` on every job it is sent on ``device``, until it is sent None.

    Ctrl-C and SIGTERM are left to the main process, which kills its workers on its way out; a
    worker whose main process is gone without doing so (``kill -9``) exits at once.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _killed_with_parent()
    threading.Thread(target=_exit_with_parent, name="llcv-parent-watch", daemon=True).start()
    try:
        torch.set_num_threads(num_threads)
        if torch.device(device).type == "cuda" and torch.device(device).index is not None:
            torch.cuda.set_device(device)  # so nothing opens a context on cuda:0 as well
        spec = dataclasses.replace(spec, device=device, executor="devices")
        reporter = ForwardingReporter(connection.send, label)
        while (request := connection.recv()) is not None:
            job, precision = request
            connection.send(("result", job_function(job, dataclasses.replace(spec, precision=precision or spec.precision), reporter)))
    except (EOFError, ConnectionError):
        return  # the main process is gone (or closed the pipe): nobody to work for
    except BaseException as error:
        try:
            connection.send(("crashed", f"{type(error).__name__}: {error}"))
        except OSError:
            pass
        raise


def _killed_with_parent() -> None:
    """On Linux, have the kernel SIGKILL this worker the moment the main process dies.

    The watch thread (``_exit_with_parent``) needs the GIL and a time slice to act, which a busy
    machine can delay by seconds; the kernel's parent-death signal does not wait. Elsewhere, or
    where prctl is unavailable, the watch thread alone ends the worker.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return


def _exit_with_parent() -> None:
    """In a worker: exit as soon as the main process is gone (its end of the spawn pipe closes).

    Also covers a main process that died before ``_killed_with_parent`` armed the kernel's signal.
    """
    wait([multiprocessing.parent_process().sentinel])
    os._exit(1)


class RayExecutor:
    """One Ray task per checkpoint: a GPU each where the cluster has GPUs, else ``cpus_per_task`` CPUs.

    Each task sets torch's thread count to its CPU share (recorded in the result as
    ``num_threads``). Jobs are claimed only as task slots free up, so a checkpoint is never
    claimed while it waits in Ray's queue. Ray workers are reused between tasks, so each worker
    reads the dataset once.

    Args:
        address: the cluster to join (``auto``, ``ray://host:10001``); None starts a local
            instance, unless Ray is already initialised in this process, which is then used as is.
        cpus_per_task: CPUs and torch threads per task; None: 1 on CPU clusters, a GPU node's
            CPUs divided by its GPUs otherwise.
        device: the ``--device`` of the run; ``cpu`` keeps tasks off GPUs.
    """

    def __init__(self, address: str | None = None, cpus_per_task: int | None = None, device: str = "auto"):
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.device = device

    def run(
        self, jobs: Iterator[Any], spec: Any, on_result: OnResult, reporter: Reporter, *,
        job_function: JobFunction, failure_record: FailureRecord,
    ) -> None:  # fmt: skip
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        in_flight: dict[Any, Any] = {}
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            use_gpu = gpus > 0 and self.device not in ("cpu", "mps")
            if self.device.startswith("cuda") and not use_gpu:
                raise SettingsError(f"device {self.device!r} was asked for but the Ray cluster has no GPUs; use --device cpu or auto")
            cpus = self.cpus_per_task or (max(1, int(resources.get("CPU", 1)) // gpus) if use_gpu else 1)
            slots = gpus if use_gpu else max(1, int(resources.get("CPU", 1)) // cpus)
            device = "cuda" if use_gpu else ("cpu" if self.device == "auto" else self.device)
            task = ray.remote(_ray_task).options(num_cpus=cpus, num_gpus=1 if use_gpu else 0)
            spec_ref = ray.put(dataclasses.replace(spec, device=device))
            reporter.note(f"Ray: {slots} task slot(s), {cpus} CPU(s){' and 1 GPU' if use_gpu else ''} per task")

            # precision="auto" not yet decided for this run: one task first, whose choice every
            # later task gets, so all workers sample alike (each would time its own)
            undecided = spec.settings.precision == "auto" and spec.precision is None

            def submit() -> None:
                while len(in_flight) < (1 if undecided else slots):
                    job = next(jobs, None)
                    if job is None:
                        return
                    in_flight[task.remote([spec_ref], job, cpus, job_function)] = (job, time.perf_counter())

            submit()
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                job, submitted = in_flight.pop(ready[0])
                try:
                    record = ray.get(ready[0])
                except Exception as error:  # noqa: BLE001 - a crashed worker fails its checkpoint only
                    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    record = _crash_record(failure_record, job, spec, f"Ray task failed: {first_line}", submitted)
                choice = record.precision_choice
                if undecided and choice:
                    undecided = False
                    spec_ref = ray.put(dataclasses.replace(spec, device=device, precision=PrecisionChoice.kept_from(choice)))
                on_result(job, record)
                submit()
        finally:
            for ref in in_flight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            if started_here:
                ray.shutdown()


def _crash_record(failure_record: FailureRecord, job: Any, spec: Any, reason: str, submitted: float) -> LLCRecord:
    """The ``failed`` record of a job whose worker died (it could not write one itself)."""
    return failure_record(job, spec, reason, time.perf_counter() - submitted)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SettingsError("the ray executor needs Ray: pip install 'llcv[ray]'") from None
    return ray


# Inside a Ray worker: the shared JobSpec, fetched once per worker (its dataset may be large).
_SPECS: dict[str, Any] = {}


def _ray_task(spec_box: list, job: Any, num_threads: int, job_function: JobFunction) -> LLCRecord:
    """A Ray task: ``job_function`` on one checkpoint with ``num_threads`` torch threads. The spec
    comes boxed in a list so Ray passes the reference instead of deserialising the spec for every task."""
    import ray
    import torch

    torch.set_num_threads(num_threads)
    ref = spec_box[0]
    if ref.hex() not in _SPECS:
        _SPECS.clear()
        _SPECS[ref.hex()] = ray.get(ref)
    return job_function(job, _SPECS[ref.hex()], SILENT)


def make_executor(
    name: str,
    *,
    ray_address: str | None = None,
    cpus_per_task: int | None = None,
    device: str = "auto",
    devices: Sequence[str] | None = None,
) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``); ``local`` with ``devices``: one worker per device.

    Raises:
        SettingsError: an unknown name, Ray options without the ray executor, ``devices`` with
            it, or a device this machine lacks (see ``resolve_devices``).
    """
    if name not in ("local", "ray"):
        raise SettingsError(f"executor {name!r}: use local or ray")
    if devices is not None and name == "ray":
        raise SettingsError("--devices starts its own worker per device, and Ray places its tasks itself; give --devices or --executor ray, not both")
    if name == "local":
        if ray_address is not None:
            raise SettingsError("--ray-address needs --executor ray")
        return LocalExecutor() if devices is None else DevicesExecutor(resolve_devices(devices))
    return RayExecutor(address=ray_address, cpus_per_task=cpus_per_task, device=device)
