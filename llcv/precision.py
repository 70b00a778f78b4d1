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
# run), so one measured round suffices when the two precisions differ by more than the margin;
# closer calls get more rounds, whose fastest counts (``time_passes``).
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
    seconds = time_passes({precision: passes(precision) for precision in ("fp32", "bf16")}, device)
    ratio = seconds["bf16"] / max(seconds["fp32"], 1e-9)
    if ratio < BF16_MAX_TIME_RATIO:
        return PrecisionChoice("bf16", f"auto: bf16 took {ratio:.2f}x fp32's time per pass", seconds)
    return PrecisionChoice("fp32", f"auto: bf16 took {ratio:.2f}x fp32's time per pass, not clearly less", seconds)


def time_passes(passes: dict[str, Callable[[], None]], device: torch.device) -> dict[str, float]:
    """Seconds per run of each pass.

    The first run of each, which pays for kernel selection and allocation, is the measurement
    when both take at least ``LONG_PASS_SECONDS`` and differ by more than ``CLEAR_MARGIN``: at
    ResNet scale every further pass costs seconds the chains do not use. Otherwise it was the
    warm-up: then one measurement each, alternating, and further rounds only while the two are
    within ``CLEAR_MARGIN`` of each other, where the clock's noise could decide; the fastest counts.
    A measurement repeats a pass until it spans ``MIN_MEASURED_SECONDS``, so passes of tiny
    models, shorter than the clock's jitter, are not compared on noise.
    """
    first = {name: _timed(run, 1, device) for name, run in passes.items()}
    if min(first.values()) >= LONG_PASS_SECONDS and max(first.values()) > CLEAR_MARGIN * min(first.values()):
        return first  # long passes, clearly apart: the warm-up (4-7% of a ResNet18 pass) cannot change the verdict
    repeats = {name: max(1, min(MAX_REPEATS, math.ceil(MIN_MEASURED_SECONDS / max(seconds, 1e-6)))) for name, seconds in first.items()}
    best = {name: float("inf") for name in passes}
    for _ in range(MAX_ROUNDS):
        for name, run in passes.items():
            best[name] = min(best[name], _timed(run, repeats[name], device) / repeats[name])
        fastest, slowest = min(best.values()), max(best.values())
        if slowest > CLEAR_MARGIN * fastest:
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
