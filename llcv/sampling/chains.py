"""The SGLD chains: a group of chains stepped together, the MALA acceptance of their moves, and
the loop that runs a group and records its loss traces.

Separate from ``llcv.sampling``, which prepares the model and data and turns the traces into an
``LLCResult``: this is the inner loop alone, what every step of every chain runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from llcv.sampling.langevin import GaussianNoise, LangevinUpdate
from llcv.sampling.losses import LossFunction
from llcv.progress import Reporter
from llcv.sampling.data import SamplingData
from llcv.settings import SamplerSettings

# The loop looks at its losses (a host synchronisation) once per this many steps.
DIVERGENCE_CHECK_EVERY = 16


class _LossModule(nn.Module):
    """Wraps the model so ``functional_call`` can run any ``(model, batch) -> loss`` with swapped weights."""

    def __init__(self, model: nn.Module, loss_function: LossFunction):
        super().__init__()
        self.model = model
        self.loss_function = loss_function

    def forward(self, batch):
        return self.loss_function(self.model, batch)


def channels_last_inputs(batch):
    """``batch`` with its image inputs in the channels-last layout, so that no convolution on
    channels-last weights reorders them (vmap cannot express it: batched chains never ask)."""
    if isinstance(batch, (list, tuple)) and batch[0].dim() == 4:
        return [batch[0].contiguous(memory_format=torch.channels_last), *batch[1:]]
    return batch


class _ChainGroup:
    """Chains advanced together as stacked parameters of shape (chains, *parameter shape).

    The SGLD update is elementwise, so it applies to the stacked tensors unchanged and each
    chain's slice evolves independently. With ``batched=True`` the per-chain
    losses come from one ``torch.vmap`` over the chain dimension; otherwise the group holds a
    single chain and calls the model directly (the fallback for models vmap cannot handle).
    ``channels_last`` runs a single chain's convolution weights and image inputs in that layout
    (``PrecisionChoice.channels_last``); batched chains ignore it.
    """

    def __init__(
        self,
        loss_module: _LossModule,
        names: list[str],
        initial: list[torch.Tensor],
        num_chains: int,
        batched: bool,
        precision: str,
        channels_last: bool,
    ):
        self.loss_module = loss_module
        self.names = [f"model.{name}" for name in names]
        self.num_chains = num_chains
        self.batched = batched
        self.autocast = precision == "bf16"
        self.channels_last = channels_last and not batched
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
        if self.channels_last:
            batch = channels_last_inputs(batch)
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
class ChainState:
    """Where one chain stands: its sampled weights and, for RMSProp-SGLD, its square averages (the
    preconditioner's memory), shaped like the sampled parameters. A later run can start from it
    instead of from the checkpoint (``llcv.sampling.estimate_llc_states``)."""

    parameters: list[torch.Tensor]
    square_averages: list[torch.Tensor] | None


@dataclass
class _GroupTraces:
    losses: torch.Tensor  # chains x draws
    burnin_losses: torch.Tensor  # chains x burn-in steps
    mala: torch.Tensor  # chains x draws, NaN where undefined
    diverged: torch.Tensor  # chains, bool
    final: list[ChainState]  # one per chain of the group


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


def coupled_batches(batches: Iterator, steps: int, shared: bool, whole: bool) -> Iterator:
    """The minibatches of a run coupled to ``steps`` steps of a run on the stream ``batches``: the
    first of each ``steps`` consecutive ones, or with ``whole`` all of them joined into one batch
    ``steps`` times as large, which contains that first one (nested minibatches: the run at the
    larger batch sees what the other sees, and more). ``shared``: a batch is one for all chains;
    else its tensors are stacked per chain, their samples along the second dimension."""
    if not whole:
        return itertools.islice(batches, 0, None, steps)
    sample_dim = 0 if shared else 1
    return ([torch.cat(columns, dim=sample_dim) for columns in zip(*group)] for group in zip(*[batches] * steps))


def first_of_joined(batch, steps: int, shared: bool):
    """The first of the ``steps`` equal minibatches ``coupled_batches`` joined into ``batch``."""
    sample_dim = 0 if shared else 1
    return [column.narrow(sample_dim, 0, column.shape[sample_dim] // steps) for column in batch]


@dataclass(frozen=True)
class _ChainRun:
    """What every group of one estimate's chains runs with."""

    settings: SamplerSettings  # with the burn-in resolved to a number of steps
    nbeta: float
    loss_limit: float  # a chain whose minibatch loss reaches this has diverged
    # Each step takes the summed noise and the first minibatch of this many steps of a run with the
    # same seed (``GaussianNoise.draw_summed``): the run is coupled to one at 1/coupled_steps of its step.
    coupled_steps: int = 1
    # With coupled_steps k > 1: each step takes all k minibatches as one batch k times as large
    # (which contains the first), not the first alone (``coupled_batches``).
    whole_coupled_batches: bool = False


def _run_group(
    group: _ChainGroup,
    data: SamplingData,
    seeds: list[int],
    run: _ChainRun,
    reporter: Reporter,
    key: str,
    start: list[ChainState] | None = None,
) -> _GroupTraces:
    """Run one group of chains for the settings' burn-in and draws, from the checkpoint or, with
    ``start`` (one state per chain of the group), from where earlier chains stopped.

    ``seeds`` are the group's chains' own: each draws its minibatches from its seed, and the
    group's noise comes from the first (``llcv.sampling.langevin.GaussianNoise``).
    """
    settings = run.settings
    device = group.parameters[0].device
    chains = group.num_chains
    batches, shared_batch = _group_batches(data, seeds)
    if run.coupled_steps > 1:
        batches = coupled_batches(batches, run.coupled_steps, shared_batch, run.whole_coupled_batches)
    full_batch = data.is_full_batch
    update = LangevinUpdate(group.parameters, group.initial, settings.sampler, settings.epsilon, settings.gamma, run.nbeta)
    if start is not None:
        _restore_states(group, update, start)
    noise = GaussianNoise(group.parameters, seeds[0])
    burnin, every = settings.num_burnin_steps, settings.num_steps_bw_draws
    num_steps = burnin + settings.num_draws * every
    traces = _GroupTraces(
        losses=torch.full((chains, settings.num_draws), float("nan"), device=device),
        burnin_losses=torch.full((chains, burnin), float("nan"), device=device),
        mala=torch.full((chains, settings.num_draws), float("nan"), device=device),
        diverged=torch.zeros(chains, dtype=torch.bool, device=device),
        final=[],
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
        if is_draw and run.whole_coupled_batches:
            # The draw reads the loss on the first of the joined minibatches, as the run coupled the
            # plain way does at its weights: unbiased like any minibatch's, and the two runs' draws
            # then differ only by where their chains stand, not by the batches they were read on.
            with torch.no_grad():
                losses = group.losses(first_of_joined(batch, run.coupled_steps, shared_batch), shared_batch)
        draws_done = (step + 1 - burnin) // every if step >= burnin else 0
        scored_here, scored_next = _measured_draw(step, settings), _measured_draw(step + 1, settings)
        start = None
        if full_batch and scored_here is not None and previous is not None:
            start = _potential_point(update, losses)
            traces.mala[:, scored_here] = _mala_acceptance(move, previous, start, settings.epsilon)
        if scored_next is None:
            update.step(noise.draw_summed(run.coupled_steps))
        else:
            if start is None:
                start = _potential_point(update, losses)
            move = update.step(noise.draw_summed(run.coupled_steps), start.gradient)
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
            traces.diverged |= ~(torch.isfinite(recent) & (recent < run.loss_limit)).all(dim=1)
            if bool(traces.diverged.all()):
                reporter.advance(key, num_steps - step - 1)
                break
    traces.final = _chain_states(group, update)
    return traces


@torch.no_grad()
def _chain_states(group: _ChainGroup, update: LangevinUpdate) -> list[ChainState]:
    """Each chain's state at the end of a run, copied out of the group's stacked tensors."""
    averages = update.square_averages
    return [
        ChainState(
            parameters=[parameter[chain].detach().clone() for parameter in group.parameters],
            square_averages=None if averages is None else [average[chain].clone() for average in averages],
        )
        for chain in range(group.num_chains)
    ]


@torch.no_grad()
def _restore_states(group: _ChainGroup, update: LangevinUpdate, start: list[ChainState]) -> None:
    """Put each chain of the group where ``start`` says it stood (square averages only where both
    runs are RMSProp-SGLD; otherwise the preconditioner starts afresh)."""
    if len(start) != group.num_chains:
        raise ValueError(f"{len(start)} chain states for a group of {group.num_chains} chains")
    for chain, state in enumerate(start):
        for parameter, value in zip(group.parameters, state.parameters, strict=True):
            parameter[chain].copy_(value)
        if update.square_averages is not None and state.square_averages is not None:
            for average, value in zip(update.square_averages, state.square_averages, strict=True):
                average[chain].copy_(value)
