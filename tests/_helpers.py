"""Helpers for the estimate-all, results and plot tests: tiny sampler settings, checkpoint copies, fake records."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from llcv.settings import SamplerSettings

REPO = Path(__file__).resolve().parents[1]

# A few dozen SGLD steps on 128 samples: under a second per checkpoint on one CPU thread. No
# burn-in: the automatic one would quintuple the steps (and be cut short by its cap at 12 draws).
FAST = dict(num_chains=2, num_draws=12, num_burnin_steps=0, batch_size=64, num_samples=128)
FAST_FLAGS = ["--num-chains", "2", "--num-draws", "12", "--num-burnin-steps", "0", "--batch-size", "64", "--num-samples", "128", "--device", "cpu"]


def unwrapped(output: str) -> str:
    """CLI output with Rich's line wrapping undone (runs of whitespace become one space)."""
    return " ".join(output.split())


def without_whitespace(text: str) -> str:
    """Text without any whitespace: Rich may wrap inside a long path or message."""
    return "".join(text.split())


def fast_settings(**changes: Any) -> SamplerSettings:
    return SamplerSettings(**{**FAST, **changes})


def copy_checkpoints(run_dir: Path, destination: Path, steps: Sequence[int] | None = None) -> Path:
    """Copy (with their times) some checkpoints of a shared run, so a test may change its own copies."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(run_dir).glob("step_*.pt")):
        if steps is None or int(path.stem.split("_")[1]) in steps:
            shutil.copy2(path, destination / path.name)
    return destination


def subprocess_env() -> dict[str, str]:
    """The environment for a `python -m llcv` child: one thread, and this checkout first on the path."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "COLUMNS": "200",
    }


def llcv_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llcv", *args]


def fake_result(
    llc_mean: float | None,
    llc_std: float | None = 0.1,
    diverged_chains: int = 0,
    *,
    healthy: bool | None = None,
    health_reasons: Sequence[str] = (),
    **settings: Any,
) -> dict:
    """A small LLCResult-shaped dict for plot and results tests (no sampling).

    ``healthy=None`` leaves the health verdict out, as in results written before llcv 0.4.
    """
    health = {} if healthy is None else {"healthy": healthy, "health_reasons": list(health_reasons)}
    return {
        **health,
        "llc_mean": llc_mean,
        "llc_std": llc_std,
        "llc_per_chain": [llc_mean, llc_mean],
        "nbeta": 11.5,
        "init_loss": 0.5,
        "mala_acceptance": 0.9,
        "diagnostics": {"r_hat": 1.01, "ess": 40.0, "diverged_chains": diverged_chains, "nonfinite": False, "warnings": []},
        "settings": {**SamplerSettings(**FAST).model_dump(mode="json"), **settings},
        "num_parameters": 1000,
        "device": "cpu",
        "num_threads": 1,
        "elapsed_seconds": 0.5,
    }


def fake_record(
    checkpoint_path: Path,
    step: int,
    llc_mean: float | None,
    *,
    settings_hash: str,
    status: str = "done",
    diverged_chains: int = 0,
    num_steps: int = 100,
    error: str | None = None,
    healthy: bool | None = None,
    health_reasons: Sequence[str] = (),
) -> dict:
    """A whole-model record as estimate-all writes it, with plausible metrics for ``step``.

    ``healthy=None`` leaves the health verdict out, as in records written before llcv 0.4.
    """
    health = {} if healthy is None else {"healthy": healthy, "health_reasons": list(health_reasons)}
    return {
        **health,
        "format": "llcv-llc-record",
        "format_version": 1,
        "status": status,
        "checkpoint": Path(checkpoint_path).name,
        "checkpoint_path": str(checkpoint_path),
        "fingerprint": None,
        "scope": "model",
        "step": step,
        "epoch": step / 10,
        "metrics": {"train_loss": None if step == 0 else 2.0 / (1 + step / 10), "val_loss": 2.2 / (1 + step / 10), "val_acc": min(0.99, 0.1 + step / num_steps)},
        "settings_hash": settings_hash,
        "result": None if status == "failed" else fake_result(llc_mean, diverged_chains=diverged_chains, healthy=healthy, health_reasons=health_reasons),
        "error": error,
        "elapsed_seconds": 1.0,
        "finished": "2024-01-01T00:00:00.000000+00:00",
        "worker": {"host": "test", "pid": 1, "executor": "local"},
    }


def write_fake_run(
    root: Path,
    steps: Sequence[int],
    llcs: Sequence[float | None],
    make_records: Callable[[Path, int, int, float], list[dict]],
    *,
    estimated: int | None = None,
    digest: str = "abcdef012345",
) -> Path:
    """Checkpoint files for ``steps`` and records for the first ``estimated``; returns the results dir.

    A None LLC is a failed checkpoint; otherwise ``make_records(path, index, step, llc)`` gives the
    records written for it.
    """
    from llcv.results import ResultsStore

    checkpoints, results = root / "checkpoints", root / "results"
    checkpoints.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(results, digest)
    store.write_settings(SamplerSettings(num_draws=12))
    for index, (step, llc) in enumerate(zip(steps, llcs)):
        path = checkpoints / f"step_{step:08d}.pt"
        path.write_bytes(b"x")
        if estimated is not None and index >= estimated:
            continue
        if llc is None:
            records = [fake_record(path, step, None, settings_hash=digest, status="failed", error="every chain diverged")]
        else:
            records = make_records(path, index, step, llc)
        for record in records:
            store.write_record(record)
    store.rebuild_summary()
    return results


class SteadyTrials:
    """Stands in for the sampling of ``calibrate_auto``'s trials (``llcv.calibration.auto``'s
    ``estimate_llc_states``): each chain's per-draw LLC is ``level(settings)`` plus white noise,
    so every trial settles at once and the search's own logic decides; no sampling. Every other
    name of ``llcv.sampling`` is the real one.

    Args:
        level: the LLC a trial at these settings reads (default 5 everywhere: every knob holds).
    """

    def __init__(self, level: Callable[[SamplerSettings], float] = lambda settings: 5.0, noise: float = 0.05):
        self.level, self.noise = level, noise
        self.calls: list[SamplerSettings] = []

    def estimate_llc_states(
        self, model, data, settings, loss="cross_entropy", device="auto", reporter=None, precision=None, start=None, coupled_steps=1,
        whole_coupled_batches=False,
    ):
        from types import SimpleNamespace

        import numpy as np

        if whole_coupled_batches:  # each step joins the minibatches of k steps: k times the batch
            settings = settings.model_copy(update={"batch_size": coupled_steps * settings.batch_size})
        self.calls.append(settings)
        # A run coupled to k steps of another (the same seed) shares the noise of every k-th of them.
        draws = np.random.default_rng(settings.seed).standard_normal((settings.num_chains, settings.num_draws * coupled_steps))
        noise = draws[:, ::coupled_steps]
        trace = self.level(settings) + self.noise * noise
        return SimpleNamespace(llc_trace=trace.tolist(), llc_per_chain=trace.mean(axis=1).tolist()), None

    def __getattr__(self, name: str) -> Any:
        from llcv import sampling

        return getattr(sampling, name)


def use_steady_trials(monkeypatch, first_trial_steps: int = 100, **options: Any) -> SteadyTrials:
    """Make ``calibrate_auto`` fast and certain: steady trials (``SteadyTrials``) of ``first_trial_steps``
    steps at first, on a stiffness of 1 instead of the measured curvature."""
    fake = SteadyTrials(**options)
    monkeypatch.setattr("llcv.calibration.auto.sampling", fake)
    monkeypatch.setattr("llcv.calibration.auto.top_hessian_eigenvalue", lambda *args, **kwargs: 1.0)
    monkeypatch.setattr("llcv.calibration.auto.FIRST_TRIAL_STEPS", first_trial_steps)
    # Steady chains are at their level from the first step: every direction has responded to a change of gamma.
    monkeypatch.setattr("llcv.calibration.comparisons.relaxation_steps", lambda epsilon, gamma: 0)
    monkeypatch.setattr("llcv.calibration.comparisons.slowest_response_asymptote", plain_mean_asymptote)
    return fake


def plain_mean_asymptote(mean_trace, start: int, rate: float) -> tuple[float, float]:
    """Stands in for ``llcv.calibration.comparisons.slowest_response_asymptote`` where fake chains
    take their level at once: nothing is left to creep, so a paired move is the difference's mean
    at its own error."""
    return float(mean_trace.mean()), 1.0
