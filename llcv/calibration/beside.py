"""Runs beside a calibration trial: the references of paired and coupled trials and the doubled
batch beside a half-epsilon pair (``RunBeside``), and running them at once with the trial's own
run where the process has threads for it (``run_concurrently``).

Apart from ``llcv.calibration.auto`` so that the search module keeps to its rules; each run
samples through the ``sample`` callable the search passes (its model, loss and device).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from llcv.calibration.trials import TRIAL_CHAINS, trace_array
from llcv.progress import SILENT
from llcv.sampling import ChainState, SamplingData
from llcv.settings import SamplerSettings

# ``estimate_llc_states`` bound to a model, loss and device: (data, settings, **options) -> (result, states).
Sampler = Callable[..., tuple]


@dataclass
class RunBeside:
    """A run beside a trial, at other settings: from the same states, with the trial's seed at each
    segment, one of its steps for ``coupled`` of the trial's (``estimate_llc_states``'s coupling;
    ``whole_batches``: their minibatches joined, ``coupled`` times the batch)."""

    settings: SamplerSettings
    coupled: int
    states: list[ChainState] | None
    whole_batches: bool = False
    trace: np.ndarray = field(default_factory=lambda: np.empty((TRIAL_CHAINS, 0)))
    diverged: np.ndarray = field(default_factory=lambda: np.zeros(TRIAL_CHAINS, dtype=bool))
    seconds: float = 0.0

    def run(self, sample: Sampler, data: SamplingData, segment: int, seed: int) -> int:
        """Run on beside ``segment`` of the trial's steps, from where this run stands; the chain-steps
        it cost. Its progress is the trial's: the calibration's bar counts its steps."""
        started = time.perf_counter()
        # The same seed as the trial's segment: the same SGLD noise and minibatches.
        settings = self.settings.model_copy(update={"num_draws": segment // self.coupled, "seed": seed})
        result, self.states = sample(
            data, settings, reporter=SILENT, start=self.states, coupled_steps=self.coupled, whole_coupled_batches=self.whole_batches
        )
        self.trace = np.concatenate([self.trace, trace_array(result.llc_trace)], axis=1)
        self.diverged |= np.array([value is None for value in result.llc_per_chain])
        self.seconds += time.perf_counter() - started
        return settings.num_draws * TRIAL_CHAINS

    def unstable_beside(self, diverged: np.ndarray) -> bool:
        """Whether this run's chains left the basin while those of the run beside it (``diverged``)
        all stayed: the comparison is then no move, but what the change showed."""
        return bool(self.diverged.any()) and not diverged.any()


@dataclass
class RunsCost:
    """What the runs beside a segment cost, in chain-steps, once they have finished."""

    total: int = 0


@contextmanager
def run_concurrently(runs: list[RunBeside], sample: Sampler, data: SamplingData, segment: int, seed: int) -> Iterator[RunsCost]:
    """Run ``runs`` on beside the trial's segment that the ``with`` block runs, and sum their cost.

    Each run is independent of the trial's (its own states, noise and minibatches), so where this
    process may use a thread per run and one for the trial, they run at once, each on its share of
    torch's threads, and give the same numbers as one after another; a pair then takes about the
    time of its longer run (the demo's CNN: 1.7 times faster on 2 cores than one after another on
    one thread, 1.3 times than on two). With fewer threads than runs they run one after another."""
    cost = RunsCost()
    threads = torch.get_num_threads()
    if not runs or threads < len(runs) + 1:
        yield cost
        cost.total = sum(run.run(sample, data, segment, seed) for run in runs)
        return
    torch.set_num_threads(threads // (len(runs) + 1))
    try:
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            futures = [pool.submit(run.run, sample, data, segment, seed) for run in runs]
            try:
                yield cost
            finally:
                # every run beside finishes (or fails) before the trial reads their traces
                cost.total = sum(future.result() for future in futures)
    finally:
        torch.set_num_threads(threads)
