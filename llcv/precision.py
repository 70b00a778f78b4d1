"""The precision chains run in: fp32, bf16, or ``auto``, the faster of the two on the run's own model.

Whether bf16 autocast pays depends on the machine, not on the model family: on an AMD EPYC with
native bf16 it halved a ResNet18 step, on an Intel Xeon with ``avx512_bf16`` but no AMX it made
the same step 1.3x slower, and on tiny models its casts cost more than they save. So ``auto``
measures instead of assuming: where the device has native bf16 it times a few forward and
backward passes in each precision on the actual model, batch and chain layout, and keeps bf16
only when it is clearly faster. Where there is no native bf16 (MPS, CPUs without it), fp32 is
chosen without timing. The choice and both timings go into every result's provenance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from time import perf_counter
from typing import Any, Callable, Literal

import torch

Precision = Literal["fp32", "bf16"]

# bf16 is chosen only below this share of fp32's time per pass. It rounds the logits to about
# three significant digits, which is worth a clear gain only: on tiny models the two differ by
# less than the timing noise of a loaded machine (0.9-1.4x measured), and a run's numbers should
# not flip precision with the load. Where bf16 pays it pays plainly (0.42x for a ResNet18 on an
# EPYC with native bf16), and where it does not, plainly too (1.3x on a Xeon without AMX).
BF16_MAX_TIME_RATIO = 0.8
# Timing costs passes the chains do not use (a few sampling steps at ResNet scale, once per
# run), so one measured round suffices when the time ratio is further than this factor from
# BF16_MAX_TIME_RATIO, on either side: the verdict is then beyond the clock's noise (and the
# warm-up's 4-7%). Only ratios near the threshold get more rounds, whose fastest counts.
CLEAR_MARGIN = 1.25
MAX_ROUNDS = 3
LONG_PASS_SECONDS = 0.25
MIN_MEASURED_SECONDS = 0.02
MAX_REPEATS = 50
# How a later estimate's reason says that it took the run's earlier choice.
KEPT = "kept from this run's earlier estimates"


@dataclass(frozen=True)
class PrecisionChoice:
    """What the chains ran in and why (``LLCResult.precision`` and ``precision_choice``).

    Attributes:
        precision: ``fp32`` or ``bf16``.
        reason: one sentence, e.g. ``"asked for"`` or ``"auto: bf16 took 0.52x fp32's time per pass"``.
        seconds_per_pass: the fastest timed forward-and-backward pass in each precision, when timed.
        reused: the choice was measured at an earlier estimate of this process (same model
            architecture, batch and device) and kept, so every checkpoint of a run samples alike.
    """

    precision: Precision
    reason: str
    seconds_per_pass: dict[str, float] | None = None
    reused: bool = False

    def provenance(self) -> dict[str, Any]:
        """The choice as recorded in a result (JSON-compatible)."""
        return asdict(self)

    @classmethod
    def kept_from(cls, recorded: dict[str, Any]) -> "PrecisionChoice":
        """A run's earlier choice, as recorded (``provenance()``), for its later estimates."""
        reason = recorded["reason"]
        if KEPT not in reason:
            reason = f"{reason}, {KEPT}"
        return cls(recorded["precision"], reason, recorded.get("seconds_per_pass"), reused=True)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA GPUs from Ampere on, CPUs that oneDNN
    runs bf16 on natively (AVX512-BF16, AMX). MPS is treated as without."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # builds without oneDNN
            return False
    return False


def choose_precision(asked: str, device: torch.device, passes: Callable[[Precision], Callable[[], None]]) -> PrecisionChoice:
    """The precision for ``asked`` (``fp32``, ``bf16`` or ``auto``) on ``device``.

    Args:
        asked: the ``[sampler] precision`` setting.
        device: where the chains run.
        passes: builds, for a precision, a function that runs one forward and backward pass of
            the chains in it (only called for ``auto`` on a device with native bf16).
    """
    if asked != "auto":
        return PrecisionChoice(asked, "asked for")
    if not native_bf16(device):
        return PrecisionChoice("fp32", f"auto: no native bf16 on {device.type}, so fp32 without timing")
    seconds = time_passes({precision: passes(precision) for precision in ("fp32", "bf16")}, device, _verdict_is_clear)
    ratio = _bf16_time_ratio(seconds)
    if ratio < BF16_MAX_TIME_RATIO:
        return PrecisionChoice("bf16", f"auto: bf16 took {ratio:.2f}x fp32's time per pass", seconds)
    return PrecisionChoice("fp32", f"auto: bf16 took {ratio:.2f}x fp32's time per pass, not clearly less", seconds)


def _bf16_time_ratio(seconds: dict[str, float]) -> float:
    return seconds["bf16"] / max(seconds["fp32"], 1e-9)


def _verdict_is_clear(seconds: dict[str, float]) -> bool:
    if min(seconds.values()) <= 0:
        return False  # below the clock's resolution: no verdict yet
    ratio = _bf16_time_ratio(seconds)
    return ratio < BF16_MAX_TIME_RATIO / CLEAR_MARGIN or ratio > BF16_MAX_TIME_RATIO * CLEAR_MARGIN


def time_passes(
    passes: dict[str, Callable[[], None]], device: torch.device, clear: Callable[[dict[str, float]], bool]
) -> dict[str, float]:
    """Seconds per run of each pass, measured until ``clear`` says the times settle the question.

    The first run of each, which pays for kernel selection and allocation, is the measurement
    when both take at least ``LONG_PASS_SECONDS`` and ``clear`` holds: at ResNet scale every
    further pass costs seconds the chains do not use. Otherwise it was the warm-up: then one
    measurement each, alternating. Passes that long get that one round only (the clock's
    jitter is nothing to them, and each round costs two sampling steps); shorter ones get
    further rounds (up to ``MAX_ROUNDS``) while the verdict is unclear, where jitter could
    decide it, and the fastest counts. A measurement repeats a pass until it spans
    ``MIN_MEASURED_SECONDS``, so passes of tiny models are not compared on noise.
    """
    first = {name: _timed(run, 1, device) for name, run in passes.items()}
    long_passes = min(first.values()) >= LONG_PASS_SECONDS
    if long_passes and clear(first):
        return first
    repeats = {name: max(1, min(MAX_REPEATS, math.ceil(MIN_MEASURED_SECONDS / max(seconds, 1e-6)))) for name, seconds in first.items()}
    best = {name: float("inf") for name in passes}
    for _ in range(1 if long_passes else MAX_ROUNDS):
        for name, run in passes.items():
            best[name] = min(best[name], _timed(run, repeats[name], device) / repeats[name])
        if clear(best):
            break
    return best


def _timed(run: Callable[[], None], repeats: int, device: torch.device) -> float:
    _synchronize(device)
    started = perf_counter()
    for _ in range(repeats):
        run()
    _synchronize(device)
    return perf_counter() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
