"""Executors: where ``estimate_all``'s jobs run, in this process or as Ray tasks.

An executor pulls claimed jobs from an iterator, runs ``llcv.estimation.run_job`` on each, and
hands every record back to ``on_result`` in this process, which writes it and releases the
claim. So the store, the claims and resume behave the same whatever runs the jobs; Ray workers
only need to read the checkpoints, never the results folder.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Iterator, Protocol

from llcv.errors import SettingsError
from llcv.progress import Reporter

logger = logging.getLogger("llcv")

OnResult = Callable[[Any, dict[str, Any]], None]


class Executor(Protocol):
    def run(self, jobs: Iterator[Any], spec: Any, on_result: OnResult, reporter: Reporter) -> None:
        """Run every job from ``jobs`` and call ``on_result(job, record)`` for each, in this process."""


class LocalExecutor:
    """One job at a time in this process; the chains report their progress through ``reporter``."""

    def run(self, jobs: Iterator[Any], spec: Any, on_result: OnResult, reporter: Reporter) -> None:
        from llcv.estimation import run_job

        for job in jobs:
            on_result(job, run_job(job, spec, reporter))


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

    def run(self, jobs: Iterator[Any], spec: Any, on_result: OnResult, reporter: Reporter) -> None:
        from llcv.estimation import make_record

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

            def submit() -> None:
                while len(in_flight) < slots:
                    job = next(jobs, None)
                    if job is None:
                        return
                    in_flight[task.remote([spec_ref], job, cpus)] = (job, time.perf_counter())

            submit()
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                job, submitted = in_flight.pop(ready[0])
                try:
                    record = ray.get(ready[0])
                except Exception as error:  # noqa: BLE001 - a crashed worker fails its checkpoint only
                    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    record = make_record(job, spec, status="failed", checkpoint_fingerprint=None,
                                         error=f"Ray task failed: {first_line}", elapsed_seconds=time.perf_counter() - submitted)  # fmt: skip
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


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SettingsError("the ray executor needs Ray: pip install 'llcv[ray]'") from None
    return ray


# Inside a Ray worker: the shared JobSpec, fetched once per worker (its dataset may be large).
_SPECS: dict[str, Any] = {}


def _ray_task(spec_box: list, job: Any, num_threads: int) -> dict[str, Any]:
    """A Ray task: one checkpoint with ``num_threads`` torch threads. The spec comes boxed in a
    list so Ray passes the reference instead of deserialising the spec for every task."""
    import ray
    import torch

    from llcv.estimation import run_job

    torch.set_num_threads(num_threads)
    ref = spec_box[0]
    if ref.hex() not in _SPECS:
        _SPECS.clear()
        _SPECS[ref.hex()] = ray.get(ref)
    return run_job(job, _SPECS[ref.hex()])


def make_executor(name: str, *, ray_address: str | None = None, cpus_per_task: int | None = None, device: str = "auto") -> Executor:
    """The executor called ``name`` (``local`` or ``ray``).

    Raises:
        SettingsError: an unknown name, or Ray options without the ray executor.
    """
    if name == "local":
        if ray_address is not None:
            raise SettingsError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=ray_address, cpus_per_task=cpus_per_task, device=device)
    raise SettingsError(f"executor {name!r}: use local or ray")
