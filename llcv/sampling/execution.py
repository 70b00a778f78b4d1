"""How the chains run for a model: batched through ``torch.vmap`` or one at a time, in fp32 or
bf16, and in which memory layout, decided once per process for each architecture, batch and
device (``_PLANS``).

Separate from ``llcv.sampling`` because the decision outlives one estimate: it is cached and
reused by every later checkpoint of a run, and it costs trial passes of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from llcv.sampling.chains import _ChainGroup, _group_batches, _LossModule
from llcv.errors import SettingsError
from llcv.sampling.precision import Precision, PrecisionChoice, choose_precision
from llcv.progress import logger
from llcv.sampling.data import SamplingData
from llcv.settings import SamplerSettings

# chain_mode="auto" batches the chains of models up to this many sampled parameters.
BATCHED_MAX_PARAMETERS = 100_000


@dataclass(frozen=True)
class _ExecutionPlan:
    """How the chains run: batched or one at a time, and in which precision and layout."""

    batched: bool
    precision: PrecisionChoice


# Decided at a process's first estimate for a given architecture, batch and device, then kept:
# every checkpoint of a run (or grid point of a sweep) samples alike, in the same random
# streams, and pays for the trial passes once.
_PLANS: dict[tuple, _ExecutionPlan] = {}


def _execution_plan(
    settings: SamplerSettings,
    loss_module: _LossModule,
    names: list[str],
    initial: list[torch.Tensor],
    data: "SamplingData",
    pinned: PrecisionChoice | None = None,
) -> _ExecutionPlan:
    """The chains' execution for this model, from the process's cache or decided now; ``pinned``
    is the run's precision for ``auto``, decided elsewhere.

    Trial passes leave the model as they found it (train-mode BatchNorm updates its running
    statistics, so they are restored).
    """
    if settings.precision != "auto":
        pinned = None
    shapes = tuple((name, tuple(tensor.shape), tensor.dtype) for name, tensor in zip(names, initial))
    key = (
        type(loss_module.model), loss_module.loss_function, shapes, str(data.device), data.batch_size, data.is_full_batch,
        settings.num_chains, settings.chain_mode, settings.precision, settings.bn_mode,
    )  # fmt: skip
    if key in _PLANS:
        plan = _PLANS[key]
        if pinned is not None:
            return replace(plan, precision=_fitted(pinned, _layouts_apply(plan.batched, initial)))
        return replace(plan, precision=replace(plan.precision, reused=plan.precision.seconds_per_pass is not None))
    state = {name: value.detach().clone() for name, value in loss_module.model.state_dict().items()}
    try:
        batched = _use_batched_chains(settings, loss_module, names, initial, data)
        chains = settings.num_chains if batched else 1
        batches, shared = _group_batches(data, list(range(chains)))
        batch = next(batches)

        def one_pass(precision: Precision, channels_last: bool) -> Callable[[], None]:
            group = _ChainGroup(loss_module, names, initial, chains, batched, precision, channels_last)
            return lambda: group.gradient_pass(batch, shared)

        layouts = _layouts_apply(batched, initial)
        try:
            choice = _fitted(pinned, layouts) if pinned is not None else choose_precision(settings.precision, data.device, one_pass, layouts)
        except Exception as error:  # noqa: BLE001 - autocast can fail on a layer; fp32 always works
            if settings.precision != "auto":
                raise
            choice = PrecisionChoice("fp32", f"auto: a trial pass failed on this model ({type(error).__name__}), so fp32")
    finally:
        loss_module.model.load_state_dict(state)
    _PLANS[key] = _ExecutionPlan(batched, choice)
    return _PLANS[key]


def _layouts_apply(batched: bool, initial: list[torch.Tensor]) -> bool:
    """Whether the memory layout can matter: chains one at a time (vmap cannot express a
    layout) with convolution (4-d) weights."""
    return not batched and any(tensor.dim() == 4 for tensor in initial)


def _fitted(pinned: PrecisionChoice, layouts: bool) -> PrecisionChoice:
    """A run's earlier choice, channels-last only where that can apply: records from before
    llcv 0.8 imply it for every bf16 run, batched chains included."""
    return replace(pinned, channels_last=pinned.channels_last and layouts)


def _use_batched_chains(
    settings: SamplerSettings,
    loss_module: _LossModule,
    names: list[str],
    initial: list[torch.Tensor],
    data: "SamplingData",
) -> bool:
    """Whether the chains run as one vmapped computation.

    ``auto`` batches models of at most ``BATCHED_MAX_PARAMETERS`` sampled parameters, where
    per-step Python overhead dominates and batching wins (2x on a reduced-rank regression
    here); larger models run chains one at a time, because vmapped convolutions become
    grouped convolutions that were 4x slower than plain ones for a ResNet18 on CPU
    (docs/performance.md). The rule depends on the model alone, so a run's checkpoints all
    use the same mode and the same random streams. Falls back, saying so in verbose output,
    when vmap cannot run the model (e.g. BatchNorm updating its running statistics).
    """
    if settings.chain_mode == "sequential" or settings.num_chains == 1:
        return False
    num_parameters = sum(tensor.numel() for tensor in initial)
    if settings.chain_mode == "auto" and num_parameters > BATCHED_MAX_PARAMETERS:
        logger.info(f"running chains one at a time: {num_parameters:,} sampled parameters > {BATCHED_MAX_PARAMETERS:,}")
        return False
    try:
        trial_precision = "bf16" if settings.precision == "bf16" else "fp32"
        trial = _ChainGroup(loss_module, names, initial, min(settings.num_chains, 2), True, trial_precision, False)
        batches, shared = _group_batches(data, [0, 1])
        trial.losses(next(batches), shared).sum().backward()
        return True
    except Exception as error:  # vmap raises many types for unsupported layers; the fallback is always safe
        if settings.chain_mode == "batched":
            raise SettingsError(f"chain_mode='batched' is not possible for this model: {error}") from None
        logger.info(f"running chains one at a time: this model does not support batched chains ({type(error).__name__}: {error})")
        return False
