"""The LLC engine: SGLD chains around a checkpoint, the estimate, and its diagnostics.

The estimator (Lau, Furman, Wang, Murfet & Wei 2023, "The Local Learning Coefficient: A
Singularity-Aware Complexity Measure") is

    LLC = nbeta * (E_w[L(w)] - L(w*))

where ``w*`` are the checkpoint's weights, ``L`` the training loss, ``nbeta`` (n*beta, the
inverse temperature) a setting, and the expectation is over the tempered, localized posterior
``exp(-nbeta * L(w) - gamma/2 * |w - w*|^2)``, sampled with SGLD of step size ``epsilon``.
devinterp calls ``epsilon`` ``lr`` and ``gamma`` ``localization``; the update itself is devinterp
1.3's, fused (``llcv.langevin``).

Reproducibility: chain ``c`` draws its minibatch order from a seed derived from
``(settings.seed, c)``, and so does its Gaussian noise when chains run one at a time; chains run
as one batch draw their noise together from the first one's seed (``llcv.langevin.GaussianNoise``).
Estimating every checkpoint of a run with one seed therefore uses common random numbers: the
same batches and the same noise at every checkpoint, so differences between checkpoints reflect
the models, not the sampling noise.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import platform
import subprocess
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llcv.batchnorm import (
    BatchNormProvenance,
    batchnorm_layers,
    has_batchnorm,
    recompute_batchnorm_statistics,
    use_batch_statistics,
)
from llcv.devices import resolve_device
from llcv.fileio import finite_or_none
from llcv.diagnostics import effective_sample_size, split_r_hat
from llcv.errors import SettingsError
from llcv.health import Check, Evidence, HealthThresholds, failed_checks, trace_evidence
from llcv.langevin import GaussianNoise, LangevinUpdate
from llcv.precision import Precision, PrecisionChoice, choose_precision
from llcv.progress import SILENT, Reporter, logger
from llcv.settings import SamplerSettings
from llcv.version import __version__

LossFunction = Callable[[nn.Module, Any], torch.Tensor]
LossSpec = Union[Literal["cross_entropy", "mse"], LossFunction]

# Datasets up to this size are materialised as tensors on the device once, so a sampling step
# is an index gather instead of a DataLoader round trip.
PRELOAD_LIMIT_BYTES = 2 * 1024**3
# The loop looks at its losses (a host synchronisation) once per this many steps.
DIVERGENCE_CHECK_EVERY = 16
# chain_mode="auto" batches the chains of models up to this many sampled parameters.
BATCHED_MAX_PARAMETERS = 100_000


class LLCDiagnostics(BaseModel):
    """How far to trust an estimate."""

    model_config = ConfigDict(extra="forbid")

    r_hat: float | None = None
    ess: float | None = None
    llc_mcse: float | None = None  # Monte Carlo standard error of llc_mean
    drift_z: float | None = None  # Geweke: late minus early draws' mean LLC, in standard errors
    negative_chains: float | None = None  # share of healthy chains whose mean lies significantly below 0
    diverged_chains: int = 0
    nonfinite: bool = False
    warnings: list[str] = []


class LLCResult(BaseModel):
    """An LLC estimate with its traces, diagnostics and provenance (docs/formats.md)."""

    model_config = ConfigDict(extra="forbid")

    llc_mean: float | None
    llc_std: float | None
    llc_per_chain: list[float | None]
    loss_trace: list[list[float | None]]
    burnin_loss_trace: list[list[float | None]]
    llc_trace: list[list[float | None]]
    init_loss: float | None
    nbeta: float
    # How eval-mode BatchNorm layers were normalised: "recomputed" for the checkpoint's weights on
    # ``batchnorm_samples`` samples, the "checkpoint"'s saved statistics, each "batch"'s own (train
    # mode), or "none" (no BatchNorm layer). None in results written before llcv 0.4.
    batchnorm_statistics: Literal["recomputed", "checkpoint", "batch", "none"] | None = None
    batchnorm_samples: int = 0
    mala_acceptance: float | None = None
    mala_acceptance_per_chain: list[float | None] | None = None
    diagnostics: LLCDiagnostics
    # Whether the number can be read at face value, and why not (llcv.health); None in results
    # written before llcv 0.4.
    healthy: bool | None = None
    health_reasons: list[str] = []
    settings: dict[str, Any]
    num_parameters: int
    num_samples_used: int
    chain_execution: Literal["batched", "sequential"]
    # What the chains ran in (``settings.precision`` may say "auto") and how that was chosen
    # (llcv.precision.PrecisionChoice); None in results written before llcv 0.5.
    precision: Literal["fp32", "bf16"] | None = None
    precision_choice: dict[str, Any] | None = None
    elapsed_seconds: float
    device: str
    num_threads: int
    versions: dict[str, str | None]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict; non-finite numbers become None."""
        return finite_or_none(self.model_dump(mode="python"))

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "LLCResult":
        """Rebuild a result from ``to_dict()`` output (or its JSON)."""
        return cls.model_validate(payload)


def default_nbeta(batch_size: int) -> float:
    """devinterp's default inverse temperature, ``batch_size / ln(batch_size)``."""
    return batch_size / math.log(batch_size) if batch_size > 1 else 1.0


def default_divergence_bound(num_parameters: int, nbeta: float, init_loss: float, batch_loss_std: float) -> float:
    """The per-draw LLC above which a chain counts as diverged, when the settings give none.

    A true LLC never exceeds d/2, so per-draw values above 10 d (twenty times that) mean the
    chain left the basin. Healthy per-draw values also swing with the minibatch: by
    ``nbeta * batch_loss_std`` (the spread of minibatch losses at the checkpoint), which for
    tiny models dwarfs d. So the bound is never below ``nbeta * (max(L(w*), 1) + 10 * spread)``:
    the loss at least doubling from a loss of 1 or more, beyond ten minibatch spreads.
    """
    return max(10.0 * num_parameters, nbeta * (max(abs(init_loss), 1.0) + 10.0 * batch_loss_std))


def _cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _mse(model: nn.Module, batch) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


# Functions, not lambdas made per call, so one loss is the same object at every checkpoint.
_NAMED_LOSSES: dict[str, LossFunction] = {"cross_entropy": _cross_entropy, "mse": _mse}


def resolve_loss(loss: LossSpec) -> LossFunction:
    """The ``(model, batch) -> scalar`` function for a loss name or callable."""
    if callable(loss):
        return loss
    if loss in _NAMED_LOSSES:
        return _NAMED_LOSSES[loss]
    raise SettingsError(f"unknown loss {loss!r}; use 'cross_entropy', 'mse', or a callable (model, batch) -> loss")


class SamplingData:
    """Minibatches for the chains: seeded, full-size, and on the device when the data fits.

    Build it once and pass it to ``estimate_llc`` for every checkpoint of a run, so the
    dataset is read (and moved to the device) only once.
    """

    def __init__(self, data: Dataset | DataLoader, settings: SamplerSettings, device: torch.device):
        self.loader = data if isinstance(data, DataLoader) else None
        self.device = device
        self._unfiltered: Dataset | None = None
        if self.loader is not None and settings.classes is not None:
            raise SettingsError("classes= needs a Dataset, not a DataLoader: llcv must choose the samples itself")
        if self.loader is not None:
            self.num_samples = len(self.loader.dataset)
            self.batch_size = self.loader.batch_size or 1
            self.tensors = None
            return
        from llcv.data import subset

        dataset = data
        # BatchNorm statistics describe the model's function on the whole training data, so a
        # class's scope normalises with those of every class, as the whole model's does.
        if settings.classes is not None:
            self._unfiltered = data
            dataset = subset(dataset, classes=settings.classes, seed=settings.seed)
        if settings.num_samples is not None and settings.num_samples < len(dataset):
            dataset = subset(dataset, num_samples=settings.num_samples, seed=settings.seed)
        if len(dataset) == 0:
            raise SettingsError("the dataset for sampling is empty")
        self.dataset = dataset
        self.num_samples = len(dataset)
        self.batch_size = min(settings.batch_size, self.num_samples)
        self.tensors = self._preload(dataset)

    @property
    def is_full_batch(self) -> bool:
        """Every minibatch is the whole (preloaded) dataset, so all chains can share it."""
        return self.loader is None and self.tensors is not None and self.batch_size == self.num_samples

    def full_batches(self) -> Iterator:
        """The whole dataset as one batch, forever (order does not change a mean loss)."""
        while True:
            yield self.tensors

    def _preload(self, dataset: Dataset) -> list[torch.Tensor] | None:
        first = dataset[0]
        item_bytes = sum(torch.as_tensor(part).numel() * torch.as_tensor(part).element_size() for part in first)
        if item_bytes * len(dataset) > PRELOAD_LIMIT_BYTES:
            return None
        loader = DataLoader(dataset, batch_size=1024, shuffle=False, generator=torch.Generator())
        columns = [torch.cat(parts).to(self.device) for parts in zip(*loader)]
        return columns

    def batches(self, seed: int) -> Iterator:
        """An endless stream of full-size minibatches in a seeded order (reshuffled every pass)."""
        if self.loader is not None:
            while True:
                for batch in self.loader:
                    yield _to_device(batch, self.device)
        for indices in self._index_stream(seed):
            yield self._gather(indices)

    def stacked_batches(self, seeds: list[int]) -> Iterator:
        """Minibatches for several chains at once, stacked along a leading chain dimension."""
        if self.loader is not None or self.tensors is None:
            streams = [self.batches(seed) for seed in seeds]
            while True:
                yield [torch.stack(columns) for columns in zip(*(next(stream) for stream in streams))]
        streams = [self._index_stream(seed) for seed in seeds]
        while True:
            yield self._gather(torch.stack([next(stream) for stream in streams]))

    def _index_stream(self, seed: int) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        pending = torch.empty(0, dtype=torch.long)
        while True:
            while len(pending) < self.batch_size:
                pending = torch.cat([pending, torch.randperm(self.num_samples, generator=generator)])
            indices, pending = pending[: self.batch_size], pending[self.batch_size :]
            yield indices

    def passes(self, max_samples: int | None = None, seed: int = 0) -> Iterator:
        """One pass over the samples in minibatches, for the initial loss.

        With ``max_samples`` below the sample count, the pass covers a seeded random subset of
        that many samples (the same subset for every checkpoint of a run, like the chains' batches).
        """
        if self.loader is not None:
            seen = 0
            for batch in self.loader:
                if max_samples is not None and seen >= max_samples:
                    return
                seen += len(batch[0]) if isinstance(batch, (list, tuple)) else 1
                yield _to_device(batch, self.device)
            return
        indices = torch.arange(self.num_samples)
        if max_samples is not None and max_samples < self.num_samples:
            indices = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values
        for start in range(0, len(indices), self.batch_size):
            yield self._gather(indices[start : start + self.batch_size])

    def statistics_batches(self, max_samples: int | None = None, seed: int = 0) -> Iterator:
        """Minibatches for recomputing BatchNorm statistics: ``passes``, except that a class's
        scope reads the whole training data it was chosen from (a seeded subset of ``max_samples``)."""
        if self.loader is not None or self._unfiltered is None:
            yield from self.passes(max_samples, seed)
            return
        from llcv.data import subset

        dataset = self._unfiltered
        if max_samples is not None and max_samples < len(dataset):
            dataset = subset(dataset, num_samples=max_samples, seed=seed)
        for batch in DataLoader(dataset, batch_size=self.batch_size, shuffle=False):
            yield _to_device(batch, self.device)

    def _gather(self, indices: torch.Tensor):
        if self.tensors is not None:
            device_indices = indices.to(self.device)
            return [column[device_indices] for column in self.tensors]
        items = [self.dataset[index] for index in indices.tolist()]
        return _to_device(torch.utils.data.default_collate(items), self.device)


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return [_to_device(part, device) for part in batch]
    return batch


def _chain_seeds(seed: int, num_chains: int) -> list[int]:
    return [int(state) for state in np.random.SeedSequence(seed).generate_state(num_chains)]


class _LossModule(nn.Module):
    """Wraps the model so ``functional_call`` can run any ``(model, batch) -> loss`` with swapped weights."""

    def __init__(self, model: nn.Module, loss_function: LossFunction):
        super().__init__()
        self.model = model
        self.loss_function = loss_function

    def forward(self, batch):
        return self.loss_function(self.model, batch)


class _ChainGroup:
    """Chains advanced together as stacked parameters of shape (chains, *parameter shape).

    The SGLD update is elementwise, so it applies to the stacked tensors unchanged and each
    chain's slice evolves independently. With ``batched=True`` the per-chain
    losses come from one ``torch.vmap`` over the chain dimension; otherwise the group holds a
    single chain and calls the model directly (the fallback for models vmap cannot handle).
    """

    def __init__(
        self,
        loss_module: _LossModule,
        names: list[str],
        initial: list[torch.Tensor],
        num_chains: int,
        batched: bool,
        precision: str,
    ):
        self.loss_module = loss_module
        self.names = [f"model.{name}" for name in names]
        self.num_chains = num_chains
        self.batched = batched
        self.autocast = precision == "bf16"
        self.channels_last = self.autocast and not batched
        self.parameters = [self._chain_copies(tensor) for tensor in initial]
        self.initial = [parameter.detach().clone() for parameter in self.parameters]
        self._vmapped = torch.func.vmap(self._single_loss, in_dims=(0, 0), randomness="different")
        self._vmapped_shared = torch.func.vmap(self._single_loss, in_dims=(0, None), randomness="different")

    def _chain_copies(self, tensor: torch.Tensor) -> torch.Tensor:
        """The chains' copies of one parameter, a leaf of shape (chains, *shape)."""
        if self.channels_last and tensor.dim() == 4:
            # Convolution weights in the channels-last layout of the inputs, as a channels-last
            # model keeps them; otherwise every convolution reorders its weight (2.5% of a step).
            return tensor.detach().clone(memory_format=torch.channels_last).unsqueeze(0).requires_grad_(True)
        return tensor.detach().unsqueeze(0).repeat(self.num_chains, *([1] * tensor.dim())).requires_grad_(True)

    def _single_loss(self, parameters: list[torch.Tensor], batch) -> torch.Tensor:
        values = dict(zip(self.names, parameters))
        device_type = parameters[0].device.type
        if self.channels_last and isinstance(batch, (list, tuple)) and batch[0].dim() == 4:
            # bf16 convolutions are fastest on channels-last inputs (oneDNN and cuDNN alike); vmap cannot express it.
            batch = [batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]]
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = torch.func.functional_call(self.loss_module, values, (batch,))
        return loss.float()

    def gradient_pass(self, batch, shared: bool) -> torch.Tensor:
        """Per-chain losses at the current weights, with their gradients in the parameters' ``.grad``."""
        for parameter in self.parameters:
            parameter.grad = None
        losses = self.losses(batch, shared)
        losses.sum().backward()
        return losses

    def losses(self, batch, shared: bool) -> torch.Tensor:
        """Per-chain losses, shape (chains,). ``shared``: one batch for all chains, else stacked per chain."""
        if self.batched:
            return (self._vmapped_shared if shared else self._vmapped)(self.parameters, batch)
        # squeeze, not [0]: its backward is a view of the gradient, where indexing's allocates a copy.
        return self._single_loss([parameter.squeeze(0) for parameter in self.parameters], batch).unsqueeze(0)


@dataclass
class _Point:
    """Each chain's state for the MALA ratio: the potential's gradient and the potential (chains,)."""

    gradient: list[torch.Tensor]
    potential: torch.Tensor


def _squared_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-chain squared norms of chain-major tensors, shape (chains,)."""
    chains = len(tensors[0])
    if chains == 1:
        return torch.stack(torch._foreach_norm(tensors)).square().sum().reshape(1)
    return sum(torch.linalg.vector_norm(tensor.reshape(chains, -1), dim=1).square() for tensor in tensors)


@torch.no_grad()
def _mala_acceptance(displacement: list[torch.Tensor], previous: _Point, current: _Point, epsilon: float) -> torch.Tensor:
    """The Metropolis-adjusted Langevin acceptance probability of each chain's move previous -> current.

    As devinterp computes it: Gaussian proposal densities from each end's potential gradient and
    the potentials nbeta * L + gamma/2 |w - w*|^2, all from values the chain computes anyway;
    ``displacement`` is the move, current weights minus previous ones; it is overwritten (the
    chain has no further use for it), because fresh weight-sized tensors cost page faults.
    """
    half_step = epsilon / 2
    torch._foreach_add_(displacement, previous.gradient, alpha=half_step)
    forward_norms = _squared_norms(displacement)  # |d + eps/2 p|^2
    torch._foreach_sub_(displacement, previous.gradient, alpha=half_step)
    torch._foreach_sub_(displacement, current.gradient, alpha=half_step)
    backward_norms = _squared_norms(displacement)  # |d - eps/2 c|^2
    log_ratio = previous.potential - current.potential + (forward_norms - backward_norms) / (2 * epsilon)
    return torch.exp(torch.clamp(log_ratio, max=0.0))


@torch.no_grad()
def _potential_point(update: LangevinUpdate, losses: torch.Tensor) -> _Point:
    offsets = update.offsets()
    potential = update.nbeta * losses.detach()
    if update.gamma:
        potential = potential + update.gamma / 2 * _squared_norms(offsets)
    return _Point(update.potential_gradient(offsets), potential)


@dataclass
class _GroupTraces:
    losses: torch.Tensor  # chains x draws
    burnin_losses: torch.Tensor  # chains x burn-in steps
    mala: torch.Tensor  # chains x draws, NaN where undefined
    diverged: torch.Tensor  # chains, bool


def _group_batches(data: "SamplingData", seeds: list[int]) -> tuple[Iterator, bool]:
    """The group's minibatch stream and whether one batch is shared by all its chains."""
    if data.is_full_batch:
        return data.full_batches(), True
    if len(seeds) == 1:
        return data.batches(seeds[0]), True
    return data.stacked_batches(seeds), False


def _measured_draw(step: int, settings: SamplerSettings) -> int | None:
    """The index of the draw recorded at ``step`` when MALA scores the move into it, else None.

    Draw ``j`` is the loss at the weights of step ``burnin + (j + 1) * num_steps_bw_draws - 1``;
    the move into every ``mala_every``-th draw is scored, from the step before it.
    """
    if not settings.mala or step < 1:
        return None
    since_burnin = step + 1 - settings.num_burnin_steps
    if since_burnin <= 0 or since_burnin % settings.num_steps_bw_draws:
        return None
    draw = since_burnin // settings.num_steps_bw_draws - 1
    return draw if (draw + 1) % settings.mala_every == 0 and draw < settings.num_draws else None


def _run_group(
    group: _ChainGroup,
    noise_seed: int,
    batches: Iterator,
    shared_batch: bool,
    full_batch: bool,
    settings: SamplerSettings,
    nbeta: float,
    loss_limit: float,
    reporter: Reporter,
    key: str,
) -> _GroupTraces:
    device = group.parameters[0].device
    chains = group.num_chains
    update = LangevinUpdate(group.parameters, group.initial, settings.sampler, settings.epsilon, settings.gamma, nbeta)
    noise = GaussianNoise(group.parameters, noise_seed)
    burnin, every = settings.num_burnin_steps, settings.num_steps_bw_draws
    num_steps = burnin + settings.num_draws * every
    traces = _GroupTraces(
        losses=torch.full((chains, settings.num_draws), float("nan"), device=device),
        burnin_losses=torch.full((chains, burnin), float("nan"), device=device),
        mala=torch.full((chains, settings.num_draws), float("nan"), device=device),
        diverged=torch.zeros(chains, dtype=torch.bool, device=device),
    )
    # MALA scores a move w -> w' with the potential of one batch at both ends. With full batches
    # the next step's pass gives the end point for free; with minibatches the proposal gets one
    # more forward and backward pass on its own step's batch.
    previous: _Point | None = None  # full batches: the start point of the move being scored
    move: list[torch.Tensor] = []  # the update's displacement from it
    checked_burnin, checked_draws = 0, 0
    for step in range(num_steps):
        batch = next(batches)
        losses = group.gradient_pass(batch, shared_batch)
        is_draw = step >= burnin and (step + 1 - burnin) % every == 0
        draws_done = (step + 1 - burnin) // every if step >= burnin else 0
        scored_here, scored_next = _measured_draw(step, settings), _measured_draw(step + 1, settings)
        start = None
        if full_batch and scored_here is not None and previous is not None:
            start = _potential_point(update, losses)
            traces.mala[:, scored_here] = _mala_acceptance(move, previous, start, settings.epsilon)
        if scored_next is None:
            update.step(noise.draw())
        else:
            if start is None:
                start = _potential_point(update, losses)
            move = update.step(noise.draw(), start.gradient)
            if full_batch:
                previous = start
            else:
                end = _potential_point(update, group.gradient_pass(batch, shared_batch))
                traces.mala[:, scored_next] = _mala_acceptance(move, start, end, settings.epsilon)
        if is_draw:
            traces.losses[:, draws_done - 1] = losses.detach()
        elif step < burnin:
            traces.burnin_losses[:, step] = losses.detach()
        reporter.advance(key, 1, loss=losses.detach().mean())
        if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 or step + 1 == num_steps:
            # One host synchronisation per check, not per step.
            recent = torch.cat(
                [traces.burnin_losses[:, checked_burnin : min(step + 1, burnin)], traces.losses[:, checked_draws:draws_done]],
                dim=1,
            )
            checked_burnin, checked_draws = min(step + 1, burnin), draws_done
            traces.diverged |= ~(torch.isfinite(recent) & (recent < loss_limit)).all(dim=1)
            if bool(traces.diverged.all()):
                reporter.advance(key, num_steps - step - 1)
                break
    return traces


def _initial_loss(
    model: nn.Module,
    data: "SamplingData",
    loss_function: LossFunction,
    settings: SamplerSettings,
    precision: Precision,
    batch_statistics: bool = False,
) -> tuple[float, float]:
    """The loss at the checkpoint over one pass of the sampled data (at most ``init_loss_samples``
    of them), in the chains' mode and precision, and the standard deviation of its minibatch
    losses (0 for a single batch).

    With ``batch_statistics`` (BatchNorm normalising each batch by its own statistics) a last,
    smaller batch is left out: its statistics are noisier than the full-size batches' the chains
    see, so it would measure a slightly different function.
    """
    batch_losses, sizes = [], []
    with torch.no_grad(), torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for batch in data.passes(settings.init_loss_samples, settings.seed):
            size = len(batch[0]) if isinstance(batch, (list, tuple)) else 1
            if batch_statistics and batch_losses and size < data.batch_size:
                break
            batch_losses.append(loss_function(model, batch).double())
            sizes.append(size)
    values = torch.stack(batch_losses).cpu().numpy()
    weights = np.asarray(sizes, dtype=float)
    spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(np.average(values, weights=weights)), spread


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {
        "llcv": __version__,
        "torch": torch.__version__,
        "devinterp": installed("devinterp"),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None


def select_parameters(model: nn.Module, patterns: list[str] | None) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters whose names match any glob pattern (all of them for None).

    Raises:
        SettingsError: nothing matches; the message lists the model's top-level blocks.
    """
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    selected = trainable if patterns is None else [
        (name, parameter) for name, parameter in trainable if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    ]
    if not selected:
        blocks = sorted({name.split(".")[0] for name, _ in trainable})
        wanted = "the model has no trainable parameters" if patterns is None else f"no parameter matches {patterns}"
        raise SettingsError(f"{wanted}; the model's top-level blocks are {', '.join(blocks) or 'none'} (e.g. 'fc.*')")
    return selected


def estimate_llc(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    settings: SamplerSettings,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    reporter: Reporter = SILENT,
    precision: PrecisionChoice | None = None,
) -> LLCResult:
    """Estimate the local learning coefficient of ``model`` at its current weights.

    Args:
        model: any ``nn.Module``; it is never modified (chains run on a copy).
        data: the training data as a Dataset of (input, target) pairs, a DataLoader (used as
            given, its order is its own), or a prepared ``SamplingData``.
        settings: the sampler settings.
        loss: ``"cross_entropy"``, ``"mse"``, or a callable ``(model, batch) -> scalar``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        reporter: receives one progress loop per chain, with the live loss.
        precision: with ``settings.precision="auto"``, the choice an earlier estimate of the run
            made (read from its records, or passed on by ``DevicesExecutor``), used instead of
            timing; ignored otherwise.

    Returns:
        The estimate; if every chain diverged, ``llc_mean`` is None and the diagnostics say why.
    """
    started = time.perf_counter()
    device = resolve_device(device)
    loss_function = resolve_loss(loss)
    if not isinstance(data, SamplingData):
        data = SamplingData(data, settings, device)
    nbeta = settings.nbeta if settings.nbeta is not None else default_nbeta(data.batch_size)

    work = _copy_in_mode(model, data.device, settings.bn_mode)
    named = select_parameters(work, settings.params)
    names = [name for name, _ in named]
    initial = [parameter.detach().clone() for _, parameter in named]
    for parameter in work.parameters():
        parameter.requires_grad_(False)  # frozen ones stay at the checkpoint; the chains' copies carry gradients
    num_parameters = sum(tensor.numel() for tensor in initial)
    loss_module = _LossModule(work, loss_function)
    plan = _execution_plan(settings, loss_module, names, initial, data, precision)
    precision = plan.precision.precision
    normalisation = _normalise_batchnorm(work, data, loss_function, settings, precision)
    checkpoint_state = {key: value.detach().clone() for key, value in work.state_dict().items()}

    init_loss, batch_loss_std = _initial_loss(work, data, loss_function, settings, precision, normalisation.statistics == "batch")
    bound = settings.divergence_bound or default_divergence_bound(num_parameters, nbeta, init_loss, batch_loss_std)
    loss_limit = init_loss + bound / nbeta
    seeds = _chain_seeds(settings.seed, settings.num_chains)
    groups = [list(range(settings.num_chains))] if plan.batched else [[chain] for chain in range(settings.num_chains)]
    steps_per_chain = settings.num_burnin_steps + settings.num_draws * settings.num_steps_bw_draws
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    traces: list[_GroupTraces] = []
    for chains in groups:
        work.load_state_dict(checkpoint_state)
        key = f"chains-{chains[0]}"
        label = f"Chain {chains[0] + 1}/{settings.num_chains}" if len(chains) == 1 else f"Chains 1-{len(chains)} (batched)"
        reporter.start(key, label, steps_per_chain)
        group = _ChainGroup(loss_module, names, initial, len(chains), plan.batched, precision)
        batches, shared = _group_batches(data, [seeds[chain] for chain in chains])
        # The SGLD noise has its own generator (GaussianNoise); the global one, forked so the caller's
        # stream is untouched, seeds only randomness inside the model, such as dropout.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seeds[chains[0]])
            try:
                traces.append(
                    _run_group(group, seeds[chains[0]], batches, shared, data.is_full_batch, settings, nbeta, loss_limit, reporter, key)
                )
            finally:
                reporter.finish(key)
    return _summarise(
        traces,
        settings,
        nbeta,
        init_loss,
        bound,
        num_parameters,
        data.num_samples,
        device,
        plan,
        normalisation,
        time.perf_counter() - started,
    )


def working_copy(
    model: nn.Module, data: SamplingData, loss_function: LossFunction, settings: SamplerSettings
) -> tuple[nn.Module, BatchNormProvenance]:
    """A copy of ``model`` on the data's device in the chains' BatchNorm mode.

    In eval mode with ``bn_stats="recompute"`` its BatchNorm running statistics are first
    recomputed for the checkpoint's weights (``llcv.batchnorm``) on a seeded subset of
    ``bn_samples`` training samples, the same subset at every checkpoint of a run. The caller's
    model is never changed.
    """
    work = _copy_in_mode(model, data.device, settings.bn_mode)
    precision = "bf16" if settings.precision == "bf16" else "fp32"
    return work, _normalise_batchnorm(work, data, loss_function, settings, precision)


def _copy_in_mode(model: nn.Module, device: torch.device, bn_mode: str) -> nn.Module:
    work = copy.deepcopy(model).to(device)
    if bn_mode == "batch":
        use_batch_statistics(work)
    else:
        work.train(bn_mode == "train")
    return work


def _normalise_batchnorm(
    work: nn.Module, data: SamplingData, loss_function: LossFunction, settings: SamplerSettings, precision: Precision
) -> BatchNormProvenance:
    """Recomputes ``work``'s BatchNorm statistics where the settings ask for it; says how it normalises."""
    if settings.bn_mode != "eval":
        return BatchNormProvenance("batch" if has_batchnorm(work) else "none")
    if not batchnorm_layers(work):
        return BatchNormProvenance("none")
    if settings.bn_stats == "checkpoint":
        return BatchNormProvenance("checkpoint")
    batches = data.statistics_batches(settings.bn_samples, settings.seed)
    samples = recompute_batchnorm_statistics(work, batches, loss_function, autocast=precision == "bf16")
    return BatchNormProvenance("recomputed", samples)


@dataclass(frozen=True)
class _ExecutionPlan:
    """How the chains run: batched or one at a time, and in which precision."""

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
        return replace(plan, precision=pinned or replace(plan.precision, reused=plan.precision.seconds_per_pass is not None))
    state = {name: value.detach().clone() for name, value in loss_module.model.state_dict().items()}
    try:
        batched = _use_batched_chains(settings, loss_module, names, initial, data)
        chains = settings.num_chains if batched else 1
        batches, shared = _group_batches(data, list(range(chains)))
        batch = next(batches)

        def one_pass(precision: Precision) -> Callable[[], None]:
            group = _ChainGroup(loss_module, names, initial, chains, batched, precision)
            return lambda: group.gradient_pass(batch, shared)

        try:
            choice = pinned or choose_precision(settings.precision, data.device, one_pass)
        except Exception as error:  # noqa: BLE001 - autocast can fail on a layer; fp32 always works
            if settings.precision != "auto":
                raise
            choice = PrecisionChoice("fp32", f"auto: bf16 failed on this model ({type(error).__name__}), so fp32")
    finally:
        loss_module.model.load_state_dict(state)
    _PLANS[key] = _ExecutionPlan(batched, choice)
    return _PLANS[key]


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
        trial = _ChainGroup(loss_module, names, initial, min(settings.num_chains, 2), True, trial_precision)
        batches, shared = _group_batches(data, [0, 1])
        trial.losses(next(batches), shared).sum().backward()
        return True
    except Exception as error:  # vmap raises many types for unsupported layers; the fallback is always safe
        if settings.chain_mode == "batched":
            raise SettingsError(f"chain_mode='batched' is not possible for this model: {error}") from None
        logger.info(f"running chains one at a time: this model does not support batched chains ({type(error).__name__}: {error})")
        return False


def _summarise(
    traces: list[_GroupTraces],
    settings: SamplerSettings,
    nbeta: float,
    init_loss: float,
    bound: float,
    num_parameters: int,
    num_samples: int,
    device: torch.device,
    plan: _ExecutionPlan,
    normalisation: BatchNormProvenance,
    elapsed: float,
) -> LLCResult:
    losses = torch.cat([group.losses for group in traces]).cpu().double().numpy()
    burnin = torch.cat([group.burnin_losses for group in traces]).cpu().double().numpy()
    diverged = torch.cat([group.diverged for group in traces]).cpu().numpy()
    # A diverged chain stops counting from the check that caught it; its later values are noise.
    losses[diverged] = np.where(np.isfinite(losses[diverged]), losses[diverged], np.nan)
    llc_trace = nbeta * (losses - init_loss)
    per_chain = [None if bad else float(trace.mean()) for bad, trace in zip(diverged, llc_trace)]
    healthy = [value for value in per_chain if value is not None]
    llc_mean = float(np.mean(healthy)) if healthy else None
    llc_std = float(np.std(healthy, ddof=1)) if len(healthy) > 1 else None
    healthy_losses = losses[~diverged]

    mala_mean, mala_per_chain = None, None
    if settings.mala:
        mala = torch.cat([group.mala for group in traces]).cpu().double().numpy()
        mala_per_chain = [
            None if bad or not np.isfinite(row).any() else float(np.nanmean(row)) for bad, row in zip(diverged, mala)
        ]
        defined = [value for value in mala_per_chain if value is not None]
        mala_mean = float(np.mean(defined)) if defined else None

    diagnostics = LLCDiagnostics(
        r_hat=split_r_hat(healthy_losses),
        ess=effective_sample_size(healthy_losses) if len(healthy_losses) else None,
        **trace_evidence(llc_trace, ~diverged),
        diverged_chains=int(diverged.sum()),
        nonfinite=bool(not np.isfinite(losses[~diverged]).all() or not np.isfinite(init_loss)),
    )
    failed = failed_checks(result_evidence(diagnostics, len(per_chain), llc_mean, mala_mean), HealthThresholds())
    diagnostics.warnings = _warnings(failed, bound)
    return LLCResult(
        llc_mean=llc_mean,
        llc_std=llc_std,
        llc_per_chain=per_chain,
        loss_trace=losses.tolist(),
        burnin_loss_trace=burnin.tolist(),
        llc_trace=llc_trace.tolist(),
        init_loss=init_loss,
        nbeta=nbeta,
        batchnorm_statistics=normalisation.statistics,
        batchnorm_samples=normalisation.samples,
        mala_acceptance=mala_mean,
        mala_acceptance_per_chain=mala_per_chain,
        diagnostics=diagnostics,
        healthy=not failed,
        health_reasons=[message for _, message in failed],
        settings=settings.model_dump(mode="json"),
        num_parameters=num_parameters,
        num_samples_used=num_samples,
        chain_execution="batched" if plan.batched else "sequential",
        precision=plan.precision.precision,
        precision_choice=plan.precision.provenance(),
        elapsed_seconds=elapsed,
        device=str(device),
        num_threads=torch.get_num_threads(),
        versions=_versions(),
    )


def result_evidence(diagnostics: LLCDiagnostics, num_chains: int, llc_mean: float | None, mala: float | None) -> Evidence:
    """What the health checks read from an estimate's diagnostics."""
    return Evidence(
        num_chains=num_chains,
        diverged_chains=diagnostics.diverged_chains,
        llc_mean=llc_mean,
        llc_mcse=diagnostics.llc_mcse,
        negative_chains=diagnostics.negative_chains,
        drift_z=diagnostics.drift_z,
        r_hat=diagnostics.r_hat,
        ess=diagnostics.ess,
        mala_acceptance=mala,
    )


def _warnings(failed: list[tuple[Check, str]], bound: float) -> list[str]:
    """The failed health checks as sentences: what was seen, then what to try."""
    messages = []
    for check, message in failed:
        if check.name == "diverged":
            message += f" (non-finite loss or a per-draw LLC above {bound:.4g}) and are left out"
        messages.append(f"{message}; {check.advice}")
    return messages
