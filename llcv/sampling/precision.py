"""The precision chains run in: fp32, bf16, or ``auto``, the fastest on the run's own model; and,
for convolutional chains run one at a time, the memory layout fp32 runs in.

Whether bf16 autocast pays depends on the machine, not on the model family: on an AMD EPYC with
native bf16 it halved a ResNet18 step, on an Intel Xeon with ``avx512_bf16`` but no AMX it made
the same step 1.3x slower, and on tiny models its casts cost more than they save. So ``auto``
measures instead of assuming: where the device has native bf16 it times a few forward and
backward passes in each precision on the actual model, batch and chain layout, and keeps bf16
only when it is clearly faster. Where there is no native bf16 (MPS, CPUs without it), fp32 is
chosen without timing bf16. The choice and the timings go into every result's provenance.

The layout is timed the same way. A ResNet18 pass at batch 256 in fp32 on channels-last
weights and inputs took 0.73-0.76x the default layout's time on a Xeon with AMX and about 0.85x
on one without (oneDNN capped at AVX512-BF16), but 0.95x at batch 64, and a layout's gain is the
convolution library's, which differs by machine and version. So where it can matter (chains one
at a time, 4-d weights) ``auto`` times fp32 in both layouts too and keeps channels-last when it
is faster. The layout changes the order of summation and of the noise (drawn in memory order),
not what is sampled. bf16 always runs channels-last there (its convolution kernels expect it),
and an explicit ``fp32`` keeps the default layout, untimed, for reruns that match bit for bit.
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
# fp32 runs channels-last only below this share of the default layout's time per pass. The
# layout does not change the arithmetic's precision, so any clear gain is worth taking: the bar
# only keeps a near-tie in the default layout. Single ResNet18 passes on a loaded 2-core machine
# measured 0.70-0.92x for a true ratio near 0.85x (paired steps), so a bar at 0.9x lost the gain
# in one trial of three; a layout that is slower (1.1x) would need 14% of luck to pass 0.95x,
# and then more rounds, being within CLEAR_MARGIN of it.
CHANNELS_LAST_MAX_TIME_RATIO = 0.95
# Timing costs passes the chains do not use (a few sampling steps at ResNet scale, once per
# run), so one measured round suffices when a time ratio is further than this factor from its
# threshold (BF16_MAX_TIME_RATIO, CHANNELS_LAST_MAX_TIME_RATIO), on either side: the verdict is
# then beyond the clock's noise (and a pass's own warm-up, 4-7%). Only ratios near a threshold
# get more rounds, whose fastest counts.
CLEAR_MARGIN = 1.25
MAX_ROUNDS = 3
LONG_PASS_SECONDS = 0.25
MIN_MEASURED_SECONDS = 0.02
MAX_REPEATS = 50
# How a later estimate's reason says that it took the run's earlier choice.
KEPT = "kept from this run's earlier estimates"
# The timed passes, as named in ``seconds_per_pass``.
FP32, BF16, FP32_CHANNELS_LAST = "fp32", "bf16", "fp32_channels_last"


@dataclass(frozen=True)
class PrecisionChoice:
    """What the chains ran in and why (``LLCResult.precision`` and ``precision_choice``).

    Attributes:
        precision: ``fp32`` or ``bf16``.
        reason: one sentence, e.g. ``"asked for"`` or ``"auto: bf16 took 0.52x fp32's time per pass"``.
        seconds_per_pass: the fastest timed forward-and-backward pass of each candidate
            (``fp32``, ``bf16``, ``fp32_channels_last``), when timed.
        reused: the choice was measured at an earlier estimate of this process (same model
            architecture, batch and device) and kept, so every checkpoint of a run samples alike.
        channels_last: convolution weights and image inputs run in the channels-last layout
            (chains one at a time only; a vmapped chain group cannot express it).
    """

    precision: Precision
    reason: str
    seconds_per_pass: dict[str, float] | None = None
    reused: bool = False
    channels_last: bool = False

    def provenance(self) -> dict[str, Any]:
        """The choice as recorded in a result (JSON-compatible)."""
        return asdict(self)

    @classmethod
    def kept_from(cls, recorded: dict[str, Any]) -> "PrecisionChoice":
        """A run's earlier choice, as recorded (``provenance()``), for its later estimates."""
        reason = recorded["reason"]
        if KEPT not in reason:
            reason = f"{reason}, {KEPT}"
        # Before llcv 0.8 the layout went with the precision: bf16 channels-last, fp32 not.
        channels_last = recorded.get("channels_last")
        if channels_last is None:
            channels_last = recorded["precision"] == "bf16"
        return cls(recorded["precision"], reason, recorded.get("seconds_per_pass"), reused=True, channels_last=channels_last)


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


def choose_precision(
    asked: str, device: torch.device, passes: Callable[[Precision, bool], Callable[[], None]], layouts: bool = False
) -> PrecisionChoice:
    """The precision (and layout) for ``asked`` (``fp32``, ``bf16`` or ``auto``) on ``device``.

    Args:
        asked: the ``[sampler] precision`` setting.
        device: where the chains run.
        passes: builds, for a precision and whether to run channels-last, a function that runs
            one forward and backward pass of the chains so (only called for ``auto``).
        layouts: whether the layout can matter: chains one at a time with 4-d weights. Without
            it, everything runs in the default layout.
    """
    if asked != "auto":
        return PrecisionChoice(asked, "asked for", channels_last=layouts and asked == BF16)
    # bf16 first: the first pass is run twice (the process's warm-up), cheapest where bf16 wins.
    with_bf16 = native_bf16(device)
    candidates = {BF16: passes(BF16, layouts)} if with_bf16 else {}
    candidates[FP32] = passes(FP32, False)
    if layouts:
        candidates[FP32_CHANNELS_LAST] = passes(FP32, True)
    if len(candidates) == 1:
        return PrecisionChoice(FP32, f"auto: no native bf16 on {device.type}, so fp32 without timing")
    seconds = time_passes(candidates, device, _undecided)
    if with_bf16:
        bf16 = _bf16_time_ratio(seconds) < BF16_MAX_TIME_RATIO
        reasons = [f"bf16 took {_bf16_time_ratio(seconds):.2f}x fp32's time per pass" + ("" if bf16 else ", not clearly less")]
    else:
        bf16, reasons = False, [f"no native bf16 on {device.type}, so fp32"]
    if FP32_CHANNELS_LAST in seconds:
        reasons.append(f"fp32 channels-last took {_channels_last_time_ratio(seconds):.2f}x the default layout's time")
    reason = "auto: " + "; ".join(reasons)
    if bf16:
        return PrecisionChoice(BF16, reason, seconds, channels_last=layouts)
    return PrecisionChoice(FP32, reason, seconds, channels_last=_fp32_channels_last(seconds))


def _channels_last_time_ratio(seconds: dict[str, float]) -> float:
    return seconds[FP32_CHANNELS_LAST] / max(seconds[FP32], 1e-9)


def _fp32_channels_last(seconds: dict[str, float]) -> bool:
    """Whether fp32 runs channels-last: timed so, and faster by ``CHANNELS_LAST_MAX_TIME_RATIO``."""
    return FP32_CHANNELS_LAST in seconds and _channels_last_time_ratio(seconds) < CHANNELS_LAST_MAX_TIME_RATIO


def _bf16_time_ratio(seconds: dict[str, float]) -> float:
    """bf16's time per pass against fp32's in the layout fp32 would run in."""
    fp32 = seconds[FP32_CHANNELS_LAST if _fp32_channels_last(seconds) else FP32]
    return seconds[BF16] / max(fp32, 1e-9)


def _clearly_apart(ratio: float, threshold: float) -> bool:
    return ratio < threshold / CLEAR_MARGIN or ratio > threshold * CLEAR_MARGIN


def _undecided(seconds: dict[str, float]) -> set[str]:
    """The passes whose times could still change the choice: none once every decision that
    matters (bf16 or fp32, and fp32's layout unless bf16 wins whichever it runs in) is beyond
    the clock's noise. On a Xeon with AMX, bf16 wins plainly and fp32's layout is never
    measured again; without AMX, bf16 loses plainly and only the layouts are."""
    if min(seconds.values()) <= 0:
        return set(seconds)  # below the clock's resolution: no verdict yet
    fp32 = {name: value for name, value in seconds.items() if name != BF16}
    bf16_out = True
    if BF16 in seconds:
        if seconds[BF16] < BF16_MAX_TIME_RATIO / CLEAR_MARGIN * min(fp32.values()):
            return set()
        bf16_out = seconds[BF16] > BF16_MAX_TIME_RATIO * CLEAR_MARGIN * max(fp32.values())
    layout_clear = len(fp32) == 1 or _clearly_apart(_channels_last_time_ratio(seconds), CHANNELS_LAST_MAX_TIME_RATIO)
    if layout_clear:
        if bf16_out or _clearly_apart(_bf16_time_ratio(seconds), BF16_MAX_TIME_RATIO):
            return set()
        return {BF16, FP32_CHANNELS_LAST if _fp32_channels_last(seconds) else FP32}
    return set(fp32) if bf16_out else set(seconds)


def time_passes(
    passes: dict[str, Callable[[], None]], device: torch.device, undecided: Callable[[dict[str, float]], set[str]]
) -> dict[str, float]:
    """Seconds per run of each pass, measured until ``undecided`` names none whose time matters.

    The first run of each, which pays for its own allocations, is a measurement when all take
    at least ``LONG_PASS_SECONDS`` (the first pass of all runs twice: its first run warms up the
    process); at ResNet scale every further pass costs seconds the chains do not use. Such
    passes get one more round, of the undecided passes only, the clock's jitter being nothing
    to them; the fastest run counts. Shorter passes' first runs are the warm-up: then one
    measurement each, alternating, and further rounds of the undecided ones (up to
    ``MAX_ROUNDS``), where jitter could decide. A measurement repeats a pass until it spans
    ``MIN_MEASURED_SECONDS``, so passes of tiny models are not compared on noise.
    """
    first: dict[str, float] = {}
    for name, run in passes.items():
        first[name] = _timed(run, 1, device)
        if len(first) == 1 and first[name] >= LONG_PASS_SECONDS:
            # The trial's very first pass also pays for what all later ones reuse (a process's
            # threads, its allocator's pool): 1.37x a ResNet18 pass measured, enough to decide
            # a layout by itself. Short passes get rounds, which discard it anyway.
            first[name] = _timed(run, 1, device)
    long_passes = min(first.values()) >= LONG_PASS_SECONDS
    repeats = {name: max(1, min(MAX_REPEATS, math.ceil(MIN_MEASURED_SECONDS / max(seconds, 1e-6)))) for name, seconds in first.items()}
    best = dict(first) if long_passes else {name: float("inf") for name in passes}
    pending = undecided(first) if long_passes else set(passes)
    for _ in range(1 if long_passes else MAX_ROUNDS):
        if not pending:
            break
        for name, run in passes.items():
            if name in pending:
                best[name] = min(best[name], _timed(run, repeats[name], device) / repeats[name])
        pending = undecided(best)
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
