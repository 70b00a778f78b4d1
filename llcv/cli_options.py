"""The command line's options, each declared once, and the settings field each one sets.

Typer reads one option per parameter of a command function. An option that several commands
take is declared here once: alone as an ``Annotated`` alias (``ConfigOpt``), or in a group, a
frozen dataclass whose fields are the options (``SamplerFlags`` holds the dozen [sampler] options
of every command that samples). ``flag_groups`` shows a group's fields to Typer as parameters of
the command and hands the command the group as one object.

Each group states where its options go in a table, ``SETTINGS`` (parameter -> ``section.field``,
the precedence of docs/conventions.md applies), or ``ARGUMENTS`` (parameter -> a library
keyword, for the few options that are no setting). ``overrides()`` and ``arguments()`` read
only those tables; ``flag_groups`` refuses a group with an option in neither table (it would
be dropped), a parameter renamed without its table entry fails loudly, and
tests/test_cli_options.py checks that every option is in exactly one table and that every
settings field named exists. The table under "Flags" in docs/conventions.md is the reader's
copy of these tables.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Mapping, Optional, get_type_hints

import typer

from llcv.calibration import CHAINS_DEFAULT_NUM_CHAINS, parse_grid
from llcv.relaxation import AUTO_BURNIN_DRAW_FACTOR
from llcv.settings import DEFAULT_BUDGET_STEPS

# --- options on their own ------------------------------------------------------------------------

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML experiment file (see configs/).", dir_okay=False)]
CalibrationOpt = Annotated[Optional[Path], typer.Option("--from-calibration", help="recommended.json from `llcv calibrate sweep` (sets epsilon, gamma, nbeta, sampler and num_burnin_steps) or `llcv calibrate auto` (also batch_size, num_draws and num_chains).", dir_okay=False)]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="Checkpoint file (llcv or foreign).", dir_okay=False)]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, then MPS, then CPU).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout and nothing else.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Architecture: smallcnn, resnet18, resnet34, resnet50 or another registered name; torchvision:NAME (any torchvision.models builder, e.g. torchvision:vit_b_16) or timm:NAME (needs llcv[timm]), with random weights.")]
ModelFactoryOpt = Annotated[Optional[str], typer.Option("--model-factory", metavar="<package.module:function>", help="Your own architecture: a function returning an nn.Module, called with num_classes and in_channels where it takes them. Importing it runs its code, so it is never taken from a checkpoint: pass it again to estimate a checkpoint trained with it.")]
StemOpt = Annotated[Optional[str], typer.Option("--stem", help="ResNets (llcv's and torchvision's): cifar (3x3 conv, no max-pool) | imagenet; default: cifar for inputs <= 64 px.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="digits | cifar10 | cifar100 | mnist | fashionmnist | svhn | imagenet1k | folder | synthetic (files read from --data-dir; docs/guide.md).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where the dataset lives (default depends on the dataset).", file_okay=False)]
AllowVersionMismatchOpt = Annotated[Optional[bool], typer.Option("--allow-model-version-mismatch", help="Load checkpoints saved with another version of their model (same weight shapes, different function); see docs/formats.md.")]
NumDrawsOpt = Annotated[Optional[int], typer.Option("--num-draws", help="Draws per chain (after burn-in).")]
NumBurninOpt = Annotated[Optional[str], typer.Option("--num-burnin-steps", metavar="<auto|int>", help=f"Steps discarded before the draws, or auto (the default): until the chains have relaxed from the checkpoint, 2/(epsilon*gamma) steps, at most {AUTO_BURNIN_DRAW_FACTOR} times the draws' steps (an estimate cut short by that cap is unhealthy).")]
NbetaOpt = Annotated[Optional[str], typer.Option("--nbeta", metavar="<data|batch|float>", help="Inverse temperature n*beta: data (the default, n/ln(n) of the n sampled samples), batch (devinterp's batch_size/ln(batch_size)) or a number.")]
SweepBurninOpt = Annotated[Optional[int], typer.Option("--num-burnin-steps", help=f"Steps every grid point discards before its draws (default: each row its own, 2/(epsilon*gamma) where that is at most {AUTO_BURNIN_DRAW_FACTOR} times its draws, else none).")]

# `plot` and `report`: the runs they read.
RunsDirOpt = Annotated[Optional[list[Path]], typer.Option("--results-dir", help="A folder written by estimate-all; repeat it to compare runs (default: [estimate] results_dir of --config, else results/llc_estimations).", file_okay=False)]
RunLabelOpt = Annotated[Optional[list[str]], typer.Option("--label", help="The name of each --results-dir in the legend and on the page, in the same order.")]
RunSettingsOpt = Annotated[Optional[str], typer.Option("--settings", help="The settings hash to read (default: the most recently used).")]

GRID_HELP = "A list (1e-6,1e-5,1e-4) or a log range start:stop:count (1e-6:1e-2:5)."


def model_arguments(pairs: list[str] | None) -> dict[str, Any] | None:
    """``["image_size=32", "drop_rate=0.1", "global_pool=avg"]`` as a dict: each value a whole
    number, a number, true/false, or else the text itself.

    Raises:
        typer.BadParameter: an item without ``=`` or with an empty key.
    """
    if pairs is None:
        return None
    values: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise typer.BadParameter(f"{pair!r}: use KEY=VALUE, e.g. image_size=32", param_hint="--model-arg")
        values[key.strip()] = _literal(text.strip())
    return values


def _literal(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def comma_list(text: str | None) -> list[str] | None:
    """``0,3,7`` as ``["0", "3", "7"]``; the settings validation checks each item."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


# --- groups --------------------------------------------------------------------------------------


class FlagGroup:
    """Options that travel together; subclasses are frozen dataclasses with two tables.

    ``SETTINGS`` maps a parameter to the ``section.field`` it sets, ``ARGUMENTS`` to the library
    keyword it is passed as; ``CONVERT`` turns a flag's text into the setting's shape first.
    """

    SETTINGS: ClassVar[Mapping[str, str]] = {}
    ARGUMENTS: ClassVar[Mapping[str, str]] = {}
    CONVERT: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    def overrides(self) -> dict[str, dict[str, Any]]:
        """``{section: {field: value}}`` for ``load_settings``; None means "not given"."""
        values: dict[str, dict[str, Any]] = {}
        for name, target in self.SETTINGS.items():
            section, field = target.split(".")
            value = getattr(self, name)
            values.setdefault(section, {})[field] = self.CONVERT[name](value) if name in self.CONVERT and value is not None else value
        return values

    def arguments(self) -> dict[str, Any]:
        """The options that are passed to the library as keywords, not set in the settings."""
        return {keyword: getattr(self, name) for name, keyword in self.ARGUMENTS.items()}


def merge(*parts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Several ``overrides()`` as one; a field set by two of them is a mistake in this module."""
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for section, values in part.items():
            twice = set(merged.get(section, {})) & set(values)
            if twice:
                raise ValueError(f"{section}.{sorted(twice)[0]} is set by two flags")
            merged.setdefault(section, {}).update(values)
    return merged


@dataclasses.dataclass(frozen=True)
class SamplerFlags(FlagGroup):
    """How the chains sample: every command that samples takes these, and each sets its [sampler] field."""

    sampler: Annotated[Optional[str], typer.Option("--sampler", help="sgld | rmsprop_sgld.")] = None
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Minibatch size of the chains.")] = None
    num_samples: Annotated[Optional[int], typer.Option("--num-samples", help="Use a seeded subset of N training samples.")] = None
    num_steps_bw_draws: Annotated[Optional[int], typer.Option("--num-steps-bw-draws", help="SGLD steps between two draws.")] = None
    bn_mode: Annotated[Optional[str], typer.Option("--bn-mode", help="batch (BatchNorm normalises each batch by its own statistics; default) | eval (running statistics, fixed while sampling) | train (the whole model in train mode; devinterp's behaviour).")] = None
    bn_stats: Annotated[Optional[str], typer.Option("--bn-stats", help="eval mode: recompute (BatchNorm statistics for the checkpoint's weights; default) | checkpoint (as saved).")] = None
    bn_samples: Annotated[Optional[int], typer.Option("--bn-samples", help="Training samples the BatchNorm statistics are recomputed on (default 4096).")] = None
    divergence_bound: Annotated[Optional[float], typer.Option("--divergence-bound", help="Per-draw LLC above this counts as diverged.")] = None
    mala_every: Annotated[Optional[int], typer.Option("--mala-every", help="Measure MALA acceptance on every k-th draw only (default 1).")] = None
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of batch order and noise (common random numbers across checkpoints).")] = None
    params: Annotated[Optional[list[str]], typer.Option("--params", help="Sample only parameters matching this glob (repeatable), e.g. 'layer3.*'; the rest stay frozen.")] = None
    classes: Annotated[Optional[str], typer.Option("--classes", help="Use only samples of these labels, e.g. 0,3,7 (estimate-all --per-class: the classes that get their own LLC).")] = None

    SETTINGS: ClassVar = {
        "sampler": "sampler.sampler", "batch_size": "sampler.batch_size", "num_samples": "sampler.num_samples",
        "num_steps_bw_draws": "sampler.num_steps_bw_draws", "bn_mode": "sampler.bn_mode", "bn_stats": "sampler.bn_stats",
        "bn_samples": "sampler.bn_samples", "divergence_bound": "sampler.divergence_bound", "mala_every": "sampler.mala_every",
        "seed": "sampler.seed", "params": "sampler.params", "classes": "sampler.classes",
    }  # fmt: skip
    CONVERT: ClassVar = {"classes": comma_list}


@dataclasses.dataclass(frozen=True)
class StepFlags(FlagGroup):
    """The SGLD step a sweep varies, and whether to measure its MALA acceptance: for commands that run one setting."""

    epsilon: Annotated[Optional[float], typer.Option("--epsilon", help="SGLD step size (devinterp's lr).")] = None
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="Localization strength, pull toward the checkpoint (devinterp's localization).")] = None
    nbeta: NbetaOpt = None
    mala: Annotated[Optional[bool], typer.Option("--mala/--no-mala", help="Compute MALA acceptance (one more forward and backward pass per measured minibatch step).")] = None

    SETTINGS: ClassVar = {"epsilon": "sampler.epsilon", "gamma": "sampler.gamma", "nbeta": "sampler.nbeta", "mala": "sampler.mala"}


@dataclasses.dataclass(frozen=True)
class TemperatureFlags(FlagGroup):
    """The inverse temperature alone, in [sampler]: for `calibrate auto`, whose search decides the step and the localization."""

    nbeta: NbetaOpt = None

    SETTINGS: ClassVar = {"nbeta": "sampler.nbeta"}


@dataclasses.dataclass(frozen=True)
class BudgetFlags(FlagGroup):
    """The most an automatic calibration may spend, in [calibrate]: for `calibrate auto` and `estimate-all --calibrate`."""

    budget_steps: Annotated[Optional[int], typer.Option("--budget-steps", help=f"Chain-steps (SGLD steps x chains) the calibration may spend (default {DEFAULT_BUDGET_STEPS:,}).")] = None
    budget_seconds: Annotated[Optional[float], typer.Option("--budget-seconds", help="Seconds the calibration may spend (default: no limit).")] = None

    SETTINGS: ClassVar = {"budget_steps": "calibrate.budget_steps", "budget_seconds": "calibrate.budget_seconds"}


@dataclasses.dataclass(frozen=True)
class LengthFlags(FlagGroup):
    """How much sampling: chains, draws and burn-in, in [sampler]."""

    num_chains: Annotated[Optional[int], typer.Option("--num-chains", help="Independent SGLD chains.")] = None
    num_draws: NumDrawsOpt = None
    num_burnin_steps: NumBurninOpt = None

    SETTINGS: ClassVar = {"num_chains": "sampler.num_chains", "num_draws": "sampler.num_draws", "num_burnin_steps": "sampler.num_burnin_steps"}


@dataclasses.dataclass(frozen=True)
class DrawFlags(FlagGroup):
    """Draws and burn-in, in [sampler]: for `calibrate curve`, which runs one chain."""

    num_draws: NumDrawsOpt = None
    num_burnin_steps: NumBurninOpt = None

    SETTINGS: ClassVar = {"num_draws": "sampler.num_draws", "num_burnin_steps": "sampler.num_burnin_steps"}


@dataclasses.dataclass(frozen=True)
class SweepLengthFlags(LengthFlags):
    """The same options on `calibrate sweep`, where they set [calibrate]: the budget of each grid point.

    A sweep replaces [sampler]'s chains, draws and burn-in with [calibrate]'s
    (``llcv.calibration.sweep_base``), so these are the fields that a sweep reads.
    """

    num_burnin_steps: SweepBurninOpt = None

    SETTINGS: ClassVar = {"num_chains": "calibrate.num_chains", "num_draws": "calibrate.num_draws", "num_burnin_steps": "calibrate.num_burnin_steps"}


@dataclasses.dataclass(frozen=True)
class TargetFlags(FlagGroup):
    """Which model and data a checkpoint is measured with: for the commands that load one.

    ``--data-dir``, ``--allow-model-version-mismatch`` and ``--model-factory`` set [data]
    data_dir, [model] allow_version_mismatch and [model] factory, the only fields of those
    sections these commands read; ``--model``,
    ``--stem`` and ``--dataset`` describe a foreign checkpoint and go into the command's ``llcv.targets.Target`` as they are.
    """

    model: ModelOpt = None
    model_factory: ModelFactoryOpt = None
    stem: StemOpt = None
    dataset: DatasetOpt = None
    data_dir: DataDirOpt = None
    allow_model_version_mismatch: AllowVersionMismatchOpt = None

    SETTINGS: ClassVar = {
        "data_dir": "data.data_dir", "allow_model_version_mismatch": "model.allow_version_mismatch", "model_factory": "model.factory",
    }  # fmt: skip
    ARGUMENTS: ClassVar = {"model": "model_name", "stem": "stem", "dataset": "dataset"}
    READ: ClassVar = {"data": ("data_dir",), "model": ("allow_version_mismatch", "factory")}  # what -v shows of those sections


@dataclasses.dataclass(frozen=True)
class CalibrateOutputFlags(FlagGroup):
    """Where a calibrate command writes, in which figure format, and on which device."""

    results_dir: Annotated[Optional[Path], typer.Option("--results-dir", help="Parent folder of the outputs (default results/calibration).", file_okay=False)] = None
    figure_format: Annotated[Optional[str], typer.Option("--format", help="Figure format: png | pdf | svg.")] = None
    device: DeviceOpt = None

    SETTINGS: ClassVar = {"results_dir": "calibrate.results_dir", "figure_format": "calibrate.format", "device": "calibrate.device"}


@dataclasses.dataclass(frozen=True)
class GridFlags(FlagGroup):
    """`calibrate sweep`'s grid and the acceptance its rule asks for."""

    epsilons: Annotated[Optional[str], typer.Option("--epsilons", help="SGLD step sizes. " + GRID_HELP)] = None
    gammas: Annotated[Optional[str], typer.Option("--gammas", help="Localization strengths. " + GRID_HELP)] = None
    nbetas: Annotated[Optional[str], typer.Option("--nbetas", help="Inverse temperatures (default: the sampler's nbeta). " + GRID_HELP)] = None
    target_acceptance: Annotated[Optional[float], typer.Option("--target-acceptance", help="Least MALA acceptance a combination needs (default 0.9).")] = None

    SETTINGS: ClassVar = {
        "epsilons": "calibrate.epsilons", "gammas": "calibrate.gammas", "nbetas": "calibrate.nbetas",
        "target_acceptance": "calibrate.target_acceptance",
    }  # fmt: skip
    CONVERT: ClassVar = {
        "epsilons": lambda text: parse_grid(text, "--epsilons"),
        "gammas": lambda text: parse_grid(text, "--gammas", allow_zero=True),
        "nbetas": lambda text: parse_grid(text, "--nbetas"),
    }


@dataclasses.dataclass(frozen=True)
class EstimateFlags(FlagGroup):
    """`estimate-all`: which checkpoints, where results go, how work is spread, which refined LLCs; all [estimate]."""

    results_dir: Annotated[Optional[Path], typer.Option("--results-dir", help="Where results go: one folder per settings hash (default results/llc_estimations).", file_okay=False)] = None
    every_nth: Annotated[Optional[int], typer.Option("--every-nth", help="Every K-th checkpoint from the first, plus the last; a plain rerun fills in the rest.")] = None
    steps: Annotated[Optional[str], typer.Option("--steps", help="Only the checkpoints at these steps, comma-separated: 0,100,1000.")] = None
    force: Annotated[Optional[bool], typer.Option("--force", help="Redo checkpoints that already have a result.")] = None
    device: DeviceOpt = None
    devices: Annotated[Optional[str], typer.Option("--devices", help="One worker per device of this machine, on one results folder: cuda:0,cuda:1 or cpu,cpu; all: every CUDA GPU. Replaces --device.")] = None
    shard: Annotated[Optional[str], typer.Option("--shard", help="K/N: only share K (from 0) of N, by a stable hash of the file name.")] = None
    executor: Annotated[Optional[str], typer.Option("--executor", help="local (this process) | ray (one task per checkpoint).")] = None
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join (auto, ray://HOST:10001); default: a local instance.")] = None
    cpus_per_task: Annotated[Optional[int], typer.Option("--cpus-per-task", help="Ray: CPUs and torch threads per task (default 1, or CPUs per GPU).")] = None
    claim_timeout_seconds: Annotated[Optional[float], typer.Option("--claim-timeout-seconds", help="Take over a claim whose heartbeat is older than this.")] = None
    per_layer: Annotated[Optional[bool], typer.Option("--per-layer", help="Also one LLC per block of the model (only its weights sampled, the rest frozen), e.g. scope layer3.")] = None
    block_depth: Annotated[Optional[int], typer.Option("--block-depth", help="With --per-layer: blocks from the model's module tree, this many levels down (1: its top-level children; default: a registered model's declared blocks, else 1).")] = None
    per_class: Annotated[Optional[bool], typer.Option("--per-class", help="Also one LLC per class (the loss on its samples only), scope class=7.")] = None
    calibrate: Annotated[Optional[bool], typer.Option("--calibrate/--no-calibrate", help="Calibrate once (calibrate auto) on a reference checkpoint and estimate every checkpoint with its settings; files in <results-dir>/calibration/<checkpoint-stem>/.")] = None
    calibrate_on: Annotated[Optional[str], typer.Option("--calibrate-on", metavar="<STEP|FILE>", help="With --calibrate: the reference checkpoint, by its training step or file (default: the run's last).")] = None

    SETTINGS: ClassVar = {
        "results_dir": "estimate.results_dir", "every_nth": "estimate.every_nth", "steps": "estimate.steps", "force": "estimate.force",
        "device": "estimate.device", "devices": "estimate.devices", "shard": "estimate.shard", "executor": "estimate.executor",
        "ray_address": "estimate.ray_address", "cpus_per_task": "estimate.cpus_per_task",
        "claim_timeout_seconds": "estimate.claim_timeout_seconds", "per_layer": "estimate.per_layer", "per_class": "estimate.per_class", "block_depth": "estimate.block_depth",
        "calibrate": "estimate.calibrate", "calibrate_on": "estimate.calibrate_on",
    }  # fmt: skip
    CONVERT: ClassVar = {"steps": comma_list}


@dataclasses.dataclass(frozen=True)
class TrainFlags(FlagGroup):
    """`train`: the data, the model, the optimiser, the schedule and the checkpoints."""

    model: ModelOpt = None
    model_factory: ModelFactoryOpt = None
    model_arg: Annotated[Optional[list[str]], typer.Option("--model-arg", metavar="KEY=VALUE", help="A construction argument of a torchvision:/timm: model or of the factory, repeatable: --model-arg patch_size=8. Recorded in the checkpoints. ViTs get their image size from the data.")] = None
    stem: StemOpt = None
    dataset: DatasetOpt = None
    data_dir: DataDirOpt = None
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", help="Download CIFAR-10 where the internet is reachable (the other datasets are never downloaded).")] = None
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Input size for folder, imagenet1k and digits (8: the digits' own pixels, 32 by default).")] = None
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="DataLoader workers, capped at the CPUs available (resume stays bit-exact with any number).")] = None
    data_seed: Annotated[Optional[int], typer.Option("--data-seed", help="Seed of the train/validation split.")] = None
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Number of epochs.")] = None
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training batch size.")] = None
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")] = None
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help="sgd (with momentum) | adamw.")] = None
    momentum: Annotated[Optional[float], typer.Option("--momentum", help="SGD momentum.")] = None
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="Weight decay.")] = None
    schedule: Annotated[Optional[str], typer.Option("--schedule", help="cosine | step | constant.")] = None
    step_every_epochs: Annotated[Optional[int], typer.Option("--step-every-epochs", help="Step schedule: decay period in epochs.")] = None
    step_factor: Annotated[Optional[float], typer.Option("--step-factor", help="Step schedule: decay factor.")] = None
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of initialisation, data order and augmentation.")] = None
    device: DeviceOpt = None
    checkpoints_dir: Annotated[Optional[Path], typer.Option("--checkpoints-dir", help="Where checkpoints go.", file_okay=False)] = None
    checkpoint_every_epochs: Annotated[Optional[int], typer.Option("--checkpoint-every-epochs", help="Save at the end of every N-th epoch (0: never).")] = None
    log_checkpoints: Annotated[Optional[int], typer.Option("--log-checkpoints", help="Also save K log-spaced checkpoints.")] = None
    resume_from_checkpoint: Annotated[Optional[Path], typer.Option("--resume-from-checkpoint", help="Continue a run from one of its checkpoints, bit for bit.", dir_okay=False)] = None
    allow_model_version_mismatch: AllowVersionMismatchOpt = None

    SETTINGS: ClassVar = {
        "model": "model.name", "stem": "model.stem", "allow_model_version_mismatch": "model.allow_version_mismatch",
        "model_factory": "model.factory", "model_arg": "model.arguments",
        "dataset": "data.dataset", "data_dir": "data.data_dir", "download": "data.download", "image_size": "data.image_size",
        "num_workers": "data.num_workers", "data_seed": "data.seed",
        "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "optimizer": "train.optimizer",
        "momentum": "train.momentum", "weight_decay": "train.weight_decay", "schedule": "train.schedule",
        "step_every_epochs": "train.step_every_epochs", "step_factor": "train.step_factor", "seed": "train.seed",
        "device": "train.device", "checkpoints_dir": "train.checkpoints_dir", "checkpoint_every_epochs": "train.checkpoint_every_epochs",
        "log_checkpoints": "train.log_checkpoints", "resume_from_checkpoint": "train.resume_from_checkpoint",
    }  # fmt: skip
    CONVERT: ClassVar = {"model_arg": model_arguments}


@dataclasses.dataclass(frozen=True)
class AxesFlags(FlagGroup):
    """The LLC figure's axes, in [plot]: for `plot` and `report`."""

    x: Annotated[Optional[str], typer.Option("--x", help="The training-time axis: step | epoch (epoch is used where steps are unknown).")] = None
    log_x: Annotated[Optional[bool], typer.Option("--log-x/--linear-x", help="Logarithmic training-time axis (step 0 kept).")] = None
    per_parameter: Annotated[Optional[bool], typer.Option("--per-parameter/--no-per-parameter", help="Divide each curve by its number of sampled parameters d (compares blocks of different sizes).")] = None

    SETTINGS: ClassVar = {"x": "plot.x", "log_x": "plot.log_x", "per_parameter": "plot.per_parameter"}


@dataclasses.dataclass(frozen=True)
class PlotFlags(AxesFlags):
    """`plot`: the axes, the figure file and whether to mark transitions, in [plot]."""

    out: Annotated[Optional[Path], typer.Option("--out", help="The figure file; its suffix picks the format: .png, .pdf or .svg.", dir_okay=False)] = None
    mark_transitions: Annotated[Optional[bool], typer.Option("--mark-transitions/--no-mark-transitions", help="Mark and list candidate transitions.")] = None

    SETTINGS: ClassVar = {**AxesFlags.SETTINGS, "out": "plot.out", "mark_transitions": "plot.mark_transitions"}


# `plot` and `report` read [estimate] for its results_dir alone: where estimate-all wrote.
RESULTS_READ = {"estimate": ("results_dir",)}


# Defaults a command lays beneath --config (docs/conventions.md, "Settings", precedence 2):
# calibration measures MALA acceptance unless told not to, and `calibrate chains` compares more
# chains than an estimate runs.
CURVE_DEFAULTS = {"sampler": {"mala": True}}
CHAINS_DEFAULTS = {"sampler": {"mala": True, "num_chains": CHAINS_DEFAULT_NUM_CHAINS}}


def flag_groups(command: Callable[..., None]) -> Callable[..., None]:
    """Let a command take ``FlagGroup`` parameters: Typer sees each group's fields as options.

    A parameter annotated with a group class is replaced, in the signature Typer reads, by the
    group's fields; the command is called with the group built from them. Every parameter becomes
    keyword-only (Typer passes them by name).

    Raises:
        TypeError: two groups, or a group and the command, declare the same parameter, or a
            group has an option its tables do not map (it would be silently dropped).
    """
    signature = inspect.signature(command, eval_str=True)
    groups = {
        name: parameter.annotation
        for name, parameter in signature.parameters.items()
        if isinstance(parameter.annotation, type) and issubclass(parameter.annotation, FlagGroup)
    }
    for group in groups.values():
        unmapped = sorted({field.name for field in dataclasses.fields(group)} - set(group.SETTINGS) - set(group.ARGUMENTS))
        if unmapped:
            raise TypeError(f"{group.__name__}: {', '.join(unmapped)} in neither SETTINGS nor ARGUMENTS")
    shown: list[inspect.Parameter] = []
    for name, parameter in signature.parameters.items():
        if name not in groups:
            shown.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            continue
        hints = get_type_hints(groups[name], include_extras=True)
        for field in dataclasses.fields(groups[name]):
            shown.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=hints[field.name]))
    names = [parameter.name for parameter in shown]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TypeError(f"{command.__name__}: {', '.join(repeated)} declared twice")

    def run(**values: Any) -> None:
        for name, group in groups.items():
            values[name] = group(**{field.name: values.pop(field.name) for field in dataclasses.fields(group)})
        return command(**values)

    run.__signature__ = signature.replace(parameters=shown)  # type: ignore[attr-defined]
    run.__annotations__ = {parameter.name: parameter.annotation for parameter in shown}
    run.__name__, run.__qualname__, run.__doc__, run.__module__ = command.__name__, command.__qualname__, command.__doc__, command.__module__
    return run
