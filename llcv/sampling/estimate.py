"""The LLC engine: SGLD chains around a checkpoint, the estimate, and its diagnostics.

The estimator (Lau, Furman, Wang, Murfet & Wei 2023, "The Local Learning Coefficient: A
Singularity-Aware Complexity Measure") is

    LLC = nbeta * (E_w[L(w)] - L(w*))

where ``w*`` are the checkpoint's weights, ``L`` the training loss, ``nbeta`` (n*beta, the
inverse temperature; by default n / ln n of the n sampled samples, ``resolve_nbeta``), and the
expectation is over the tempered, localized posterior
``exp(-nbeta * L(w) - gamma/2 * |w - w*|^2)``, sampled with SGLD of step size ``epsilon``
after a burn-in that by default lasts until the chains have relaxed from the checkpoint
(``resolve_burnin``). devinterp calls ``epsilon`` ``lr`` and ``gamma`` ``localization``; the
update itself is devinterp 1.3's, fused (``llcv.sampling.langevin``).

Reproducibility: chain ``c`` draws its minibatch order from a seed derived from
``(settings.seed, c)``, and so does its Gaussian noise when chains run one at a time; chains run
as one batch draw their noise together from the first one's seed (``llcv.sampling.langevin.GaussianNoise``).
Estimating every checkpoint of a run with one seed therefore uses common random numbers: the
same batches and the same noise at every checkpoint, so differences between checkpoints reflect
the models, not the sampling noise.

The parts live beside this module: ``llcv.sampling.data`` (the minibatches), ``llcv.sampling.chains``
(the SGLD steps and MALA), ``llcv.sampling.execution`` (batched or one at a time, fp32 or bf16),
``llcv.sampling.result`` (the result and its summary of the traces) and ``llcv.sampling.losses``.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llcv.sampling.batchnorm import (
    BatchNormProvenance,
    batchnorm_layers,
    has_batchnorm,
    recompute_batchnorm_statistics,
    use_batch_statistics,
)
from llcv.sampling.chains import ChainState, _ChainGroup, _ChainRun, _GroupTraces, _LossModule, _run_group, channels_last_inputs
from llcv.devices import resolve_device
from llcv.errors import SettingsError
from llcv.sampling.execution import _ExecutionPlan, _execution_plan
from llcv.relaxation import auto_burnin_steps, relaxation_steps
from llcv.sampling.result import BurnIn, InitialLoss, LLCResult, NbetaRule, _EstimateSetup, _summarise
from llcv.sampling.losses import LossFunction, LossSpec, resolve_loss
from llcv.sampling.precision import Precision, PrecisionChoice
from llcv.progress import SILENT, Reporter
from llcv.sampling.data import SamplingData
from llcv.settings import SamplerSettings


def data_nbeta(num_samples: int) -> float:
    """Watanabe's WBIC inverse temperature ``n / ln(n)`` for the ``n`` samples the chains draw from
    (1 for a single sample): the temperature of the data, whatever the minibatch."""
    return num_samples / math.log(num_samples) if num_samples > 1 else 1.0


def batch_nbeta(batch_size: int) -> float:
    """devinterp's default inverse temperature, ``batch_size / ln(batch_size)`` (1 for a batch of one)."""
    return batch_size / math.log(batch_size) if batch_size > 1 else 1.0


# The batch rule's name before the data rule became the default (llcv.calibration.recommend uses it).
default_nbeta = batch_nbeta


def nbeta_rule(nbeta: float | str) -> NbetaRule:
    """How a ``SamplerSettings.nbeta`` chooses the temperature: ``"data"``, ``"batch"``, or ``"set"`` for a number."""
    return nbeta if isinstance(nbeta, str) else "set"


def resolve_nbeta(nbeta: float | str, num_samples: int, batch_size: int) -> float:
    """The inverse temperature a ``SamplerSettings.nbeta`` stands for, for chains drawing minibatches
    of ``batch_size`` from ``num_samples`` samples: ``"data"`` is ``data_nbeta(num_samples)``,
    ``"batch"`` is ``batch_nbeta`` of the batch (capped at the data, as the minibatches are), and a
    number is itself. The one place either rule is applied."""
    if nbeta == "data":
        return data_nbeta(num_samples)
    if nbeta == "batch":
        return batch_nbeta(min(batch_size, num_samples))
    return float(nbeta)


def resolve_burnin(settings: SamplerSettings) -> BurnIn:
    """The burn-in ``settings`` ask for: a number as it is (``"set"``); ``"auto"``, until the chains
    have relaxed from the checkpoint, 2 / (epsilon * gamma) steps, held to its cap of
    ``AUTO_BURNIN_DRAW_FACTOR`` times the draws' steps (``llcv.relaxation.auto_burnin_steps``):
    ``"auto-capped"`` where the cap cut it short, which makes the estimate unhealthy."""
    if settings.num_burnin_steps != "auto":
        return BurnIn(settings.num_burnin_steps, "set")
    needed = relaxation_steps(settings.epsilon, settings.gamma)
    steps = auto_burnin_steps(settings.epsilon, settings.gamma, settings.num_draws * settings.num_steps_bw_draws)
    return BurnIn(steps, "auto" if steps >= needed else "auto-capped", needed)


def default_divergence_bound(num_parameters: int, nbeta: float, init_loss: float, batch_loss_std: float) -> float:
    """The per-draw LLC above which a chain counts as diverged, when the settings give none.

    A true LLC never exceeds d/2, so per-draw values above 10 d (twenty times that) mean the
    chain left the basin. Healthy per-draw values also swing with the minibatch: by
    ``nbeta * batch_loss_std`` (the spread of minibatch losses at the checkpoint), which for
    tiny models dwarfs d. So the bound is never below ``nbeta * (max(L(w*), 1) + 10 * spread)``:
    the loss at least doubling from a loss of 1 or more, beyond ten minibatch spreads.
    """
    return max(10.0 * num_parameters, nbeta * (max(abs(init_loss), 1.0) + 10.0 * batch_loss_std))


def _chain_seeds(seed: int, num_chains: int) -> list[int]:
    return [int(state) for state in np.random.SeedSequence(seed).generate_state(num_chains)]


# A subset's initial loss is measured in at least this many minibatches, whose spread gives its
# standard error (with 16, that error is itself known to within about 20%).
MIN_INIT_LOSS_PIECES = 16


def _initial_loss(
    model: nn.Module,
    data: "SamplingData",
    loss_function: LossFunction,
    settings: SamplerSettings,
    precision: Precision,
    batch_statistics: bool = False,
    channels_last: bool = False,
) -> InitialLoss:
    """The loss at the checkpoint over one pass of the sampled data (at most ``init_loss_samples``
    of them), in the chains' mode, precision and layout. With ``channels_last`` the model's
    convolution weights are left in that layout (the chains run on their own copies).

    The chains average minibatches drawn from all the sampled data, so a subset's loss is off by
    its sampling error, the same for every draw and chain: the chains' MCSE cannot see it. Its
    standard error treats the minibatches as clusters of a sample drawn without replacement.

    With ``batch_statistics`` (BatchNorm normalising each batch by its own statistics) a last,
    smaller batch is left out: its statistics are noisier than the full-size batches' the chains
    see, so it would measure a slightly different function.
    """
    batch_losses, sizes = [], []
    measured = min(settings.init_loss_samples or data.num_samples, data.num_samples)
    # Batches normalised by their own statistics must be the chains' size; any other model computes
    # the same loss in smaller pieces, and a subset needs several to judge its error by.
    piece_size = None  # the chains' batch size
    if not batch_statistics and measured < data.num_samples:
        piece_size = min(data.batch_size, math.ceil(measured / MIN_INIT_LOSS_PIECES))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for batch in data.passes(settings.init_loss_samples, settings.seed, piece_size):
            size = len(batch[0]) if isinstance(batch, (list, tuple)) else 1
            if batch_statistics and batch_losses and size < data.batch_size:
                break
            batch_losses.append(loss_function(model, channels_last_inputs(batch) if channels_last else batch).double())
            sizes.append(size)
    values = torch.stack(batch_losses).cpu().numpy()
    weights = np.asarray(sizes, dtype=float) / sum(sizes)
    value = float(np.average(values, weights=sizes))
    spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    if piece_size is not None:  # the spread of the chains' batches, by the square-root law
        spread *= math.sqrt(np.mean(sizes) / data.batch_size)
    unmeasured_share = max(0.0, 1.0 - sum(sizes) / data.num_samples)  # finite-population correction
    if len(values) > 1:
        variance = len(values) / (len(values) - 1) * float(np.sum(weights**2 * (values - value) ** 2))
        standard_error = math.sqrt(variance * unmeasured_share)
    else:
        standard_error = 0.0 if unmeasured_share == 0 else None
    return InitialLoss(value, spread, standard_error)


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
        Its ``settings`` are those asked for (``nbeta="data"``, ``num_burnin_steps="auto"``);
        ``nbeta``/``nbeta_rule`` and ``burnin_steps``/``burnin_rule`` say what they resolved to.
    """
    return estimate_llc_states(model, data, settings, loss, device, reporter, precision)[0]


def estimate_llc_states(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    settings: SamplerSettings,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    reporter: Reporter = SILENT,
    precision: PrecisionChoice | None = None,
    start: list[ChainState] | None = None,
    coupled_steps: int = 1,
    whole_coupled_batches: bool = False,
) -> tuple[LLCResult, list[ChainState]]:
    """``estimate_llc``, with the chains' final states returned and, with ``start`` (one state per
    chain, e.g. the states an earlier call returned), the chains continuing from there instead
    of from the checkpoint. The localization still pulls toward the checkpoint and the loss is
    still measured from it; only where the chains begin changes. Calibration runs its trials as
    one continued run this way (``llcv.calibration.auto``).

    With ``coupled_steps`` k > 1 each step takes the Brownian increment (the k next noise draws
    summed, over sqrt(k)) and the first minibatch of k steps of a run with the same seed: run at
    k times that run's epsilon, its draw j follows that run's draw k j closely (the same time and
    minibatch), and the
    difference of the two measures what the step size does with their shared noise cancelled.
    With ``whole_coupled_batches`` each step takes those k minibatches joined into one, k times
    the batch size, instead of the first alone: beside a run coupled the plain way, at the same
    epsilon, its difference measures what the larger batch does (``chains.coupled_batches``).

    Why these parameters: ``estimate_llc``'s, and the ways a calibration's trial continues or
    couples a run (``start``, ``coupled_steps``, ``whole_coupled_batches``), which only
    ``llcv.calibration.auto`` passes.
    """
    started = time.perf_counter()
    device = resolve_device(device)
    loss_function = resolve_loss(loss)
    if not isinstance(data, SamplingData):
        data = SamplingData(data, settings, device)
    nbeta = resolve_nbeta(settings.nbeta, data.num_samples, data.batch_size)
    burnin = resolve_burnin(settings)
    # The chains read a number of burn-in steps; the result keeps the settings as asked.
    chain_settings = settings.model_copy(update={"num_burnin_steps": burnin.steps})
    chains = _prepare_chains(model, data, loss_function, chain_settings, precision)
    initial_loss = _initial_loss(
        chains.work, data, loss_function, chain_settings, chains.precision, chains.normalisation.statistics == "batch",
        chains.plan.precision.channels_last,
    )  # fmt: skip
    bound = chain_settings.divergence_bound or default_divergence_bound(
        chains.num_parameters, nbeta, initial_loss.value, initial_loss.batch_spread
    )
    run = _ChainRun(
        chain_settings, nbeta, loss_limit=initial_loss.value + bound / nbeta, coupled_steps=coupled_steps,
        whole_coupled_batches=whole_coupled_batches,
    )  # fmt: skip
    traces = _run_chains(chains, data, run, device, reporter, start)
    setup = _EstimateSetup(
        settings, nbeta, nbeta_rule(settings.nbeta), burnin, initial_loss, bound, chains.num_parameters, data.num_samples, device,
        chains.plan, chains.normalisation,
    )  # fmt: skip
    result = _summarise(traces, setup, time.perf_counter() - started)
    return result, [state for group in traces for state in group.final]


@dataclass(frozen=True)
class _PreparedChains:
    """An estimate's chains before they run: the model's working copy at the checkpoint, its
    sampled parameters, and how the chains execute."""

    loss_module: _LossModule  # the working copy with the loss, which the chains call with their weights
    names: list[str]  # the sampled parameters; the others stay frozen at the checkpoint
    initial: list[torch.Tensor]  # the sampled parameters' values at the checkpoint
    plan: _ExecutionPlan
    normalisation: BatchNormProvenance
    checkpoint_state: dict[str, torch.Tensor]  # every group of chains starts from the copy in this state

    @property
    def work(self) -> nn.Module:
        """The working copy of the model."""
        return self.loss_module.model

    @property
    def precision(self) -> Precision:
        return self.plan.precision.precision

    @property
    def num_parameters(self) -> int:
        return sum(tensor.numel() for tensor in self.initial)


def _prepare_chains(
    model: nn.Module, data: SamplingData, loss_function: LossFunction, settings: SamplerSettings, pinned: PrecisionChoice | None
) -> _PreparedChains:
    """A working copy of ``model`` in the chains' BatchNorm mode with only the sampled parameters
    to move, the chains' execution plan (``pinned``: the run's precision, see ``estimate_llc``),
    and its BatchNorm statistics normalised as the settings ask."""
    work = _copy_in_mode(model, data.device, settings.bn_mode)
    named = select_parameters(work, settings.params)
    names = [name for name, _ in named]
    initial = [parameter.detach().clone() for _, parameter in named]
    for parameter in work.parameters():
        parameter.requires_grad_(False)  # frozen ones stay at the checkpoint; the chains' copies carry gradients
    loss_module = _LossModule(work, loss_function)
    plan = _execution_plan(settings, loss_module, names, initial, data, pinned)
    normalisation = _normalise_batchnorm(work, data, loss_function, settings, plan.precision.precision)
    checkpoint_state = {key: value.detach().clone() for key, value in work.state_dict().items()}
    return _PreparedChains(loss_module, names, initial, plan, normalisation, checkpoint_state)


def _run_chains(
    chains: _PreparedChains,
    data: SamplingData,
    run: _ChainRun,
    device: torch.device,
    reporter: Reporter,
    start: list[ChainState] | None,
) -> list[_GroupTraces]:
    """Run every chain from the checkpoint (or ``start``), all as one group when the plan batches
    them, else one at a time, each group reporting its progress."""
    settings = run.settings
    seeds = _chain_seeds(settings.seed, settings.num_chains)
    groups = [list(range(settings.num_chains))] if chains.plan.batched else [[chain] for chain in range(settings.num_chains)]
    steps_per_chain = settings.num_burnin_steps + settings.num_draws * settings.num_steps_bw_draws
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    traces: list[_GroupTraces] = []
    for members in groups:
        chains.work.load_state_dict(chains.checkpoint_state)
        key = f"chains-{members[0]}"
        label = f"Chain {members[0] + 1}/{settings.num_chains}" if len(members) == 1 else f"Chains 1-{len(members)} (batched)"
        reporter.start(key, label, steps_per_chain)
        group = _ChainGroup(
            chains.loss_module, chains.names, chains.initial, len(members), chains.plan.batched, chains.precision,
            chains.plan.precision.channels_last,
        )  # fmt: skip
        # The SGLD noise has its own generator (GaussianNoise); the global one, forked so the caller's
        # stream is untouched, seeds only randomness inside the model, such as dropout.
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seeds[members[0]])
            try:
                group_start = None if start is None else [start[chain] for chain in members]
                traces.append(_run_group(group, data, [seeds[chain] for chain in members], run, reporter, key, group_start))
            finally:
                reporter.finish(key)
    return traces


def working_copy(
    model: nn.Module, data: SamplingData, loss_function: LossFunction, settings: SamplerSettings
) -> tuple[nn.Module, BatchNormProvenance]:
    """A copy of ``model`` on the data's device in the chains' BatchNorm mode.

    In eval mode with ``bn_stats="recompute"`` its BatchNorm running statistics are first
    recomputed for the checkpoint's weights (``llcv.sampling.batchnorm``) on a seeded subset of
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
