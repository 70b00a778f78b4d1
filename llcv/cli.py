"""The ``llcv`` command line: parse flags, resolve settings, call the library, render the result.

Each command is thin: everything it computes comes from a library function, and every user
error leaves through ``console.command_boundary`` as one message and a documented exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llcv.version import __version__
from llcv import console
from llcv.console import RichReporter, Verbosity, command_boundary
from llcv.settings import load_settings

app = typer.Typer(
    name="llcv",
    help=(
        "Measure how the Local Learning Coefficient (LLC) of vision models develops over training.\n\n"
        "Example: llcv train --config configs/digits-smallcnn.toml --checkpoints-dir checkpoints/digits"
    ),
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

# Options shared by several commands, declared once.
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML experiment file (see configs/).", dir_okay=False)]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, then MPS, then CPU).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Architecture: smallcnn, resnet18, resnet34, resnet50, or a registered name.")]
StemOpt = Annotated[Optional[str], typer.Option("--stem", help="cifar (3x3 conv, no max-pool) | imagenet; default: cifar for inputs <= 64 px.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="digits | cifar10 | imagenet1k | folder | synthetic.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where the dataset lives (default depends on the dataset).", file_okay=False)]
AllowVersionMismatchOpt = Annotated[Optional[bool], typer.Option("--allow-model-version-mismatch", help="Load checkpoints saved with another version of their model (same weight shapes, different function); see docs/formats.md.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llcv {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show resolved settings and extra detail.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and results; no progress bars.")] = False,
) -> None:
    """Global options; set once for every command."""
    Verbosity.level = 0 if quiet else 2 if verbose else 1
    console.configure_logging()


def _show_settings(settings) -> None:
    import json

    console.debug("resolved settings:\n" + json.dumps(settings.to_json_dict(), indent=2, default=str))


def _emit_json(payload) -> None:
    """--json: the command's data as one JSON document on stdout (paths as strings)."""
    import json

    typer.echo(json.dumps(payload, default=str))


@app.command(
    epilog=(
        "Example: llcv train --config configs/digits-smallcnn.toml --checkpoints-dir checkpoints/digits "
        "--log-checkpoints 8\n\n"
        "Resume an interrupted run: llcv train --resume-from-checkpoint checkpoints/digits/step_00000120.pt"
    )
)
def train(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    stem: StemOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", help="Download CIFAR-10 where the internet is reachable.")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Input size for folder/imagenet1k.")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="DataLoader workers, capped at the CPUs available (resume stays bit-exact with any number).")] = None,
    data_seed: Annotated[Optional[int], typer.Option("--data-seed", help="Seed of the train/validation split.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Number of epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")] = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help="sgd (with momentum) | adamw.")] = None,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help="SGD momentum.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="Weight decay.")] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help="cosine | step | constant.")] = None,
    step_every_epochs: Annotated[Optional[int], typer.Option("--step-every-epochs", help="Step schedule: decay period in epochs.")] = None,
    step_factor: Annotated[Optional[float], typer.Option("--step-factor", help="Step schedule: decay factor.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of initialisation, data order and augmentation.")] = None,
    device: DeviceOpt = None,
    checkpoints_dir: Annotated[Optional[Path], typer.Option("--checkpoints-dir", help="Where checkpoints go.", file_okay=False)] = None,
    checkpoint_every_epochs: Annotated[Optional[int], typer.Option("--checkpoint-every-epochs", help="Save at the end of every N-th epoch (0: never).")] = None,
    log_checkpoints: Annotated[Optional[int], typer.Option("--log-checkpoints", help="Also save K log-spaced checkpoints.")] = None,
    resume_from_checkpoint: Annotated[Optional[Path], typer.Option("--resume-from-checkpoint", help="Continue a run from one of its checkpoints, bit for bit.", dir_okay=False)] = None,
    allow_model_version_mismatch: AllowVersionMismatchOpt = None,
) -> None:
    """Train a model and save checkpoints on a schedule (step 0, log-spaced, epoch ends, final)."""
    from llcv.training import train as run_training

    with command_boundary():
        base = _resumed_settings(resume_from_checkpoint)
        settings = load_settings(
            ("data", "model", "train"),
            config=config,
            base=base,
            overrides={
                "data": dict(dataset=dataset, data_dir=data_dir, download=download, image_size=image_size, num_workers=num_workers, seed=data_seed),
                "model": dict(name=model, stem=stem, allow_version_mismatch=allow_model_version_mismatch),
                "train": dict(
                    epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                    weight_decay=weight_decay, schedule=schedule, step_every_epochs=step_every_epochs,
                    step_factor=step_factor, seed=seed, device=device, checkpoints_dir=checkpoints_dir,
                    checkpoint_every_epochs=checkpoint_every_epochs, log_checkpoints=log_checkpoints,
                    resume_from_checkpoint=resume_from_checkpoint,
                ),
            },
        )
        _show_settings(settings)
        with RichReporter() as reporter:
            result = run_training(settings, reporter)
        metrics = result.final_metrics
        console.info(
            f"wrote {len(result.checkpoints)} checkpoints to {result.checkpoints_dir} "
            f"({result.num_steps} steps); final val loss {metrics.get('val_loss', float('nan')):.4f}, "
            f"val acc {metrics.get('val_acc', float('nan')):.3f}"
        )


# Sampler flags, shared by every command that samples.
EpsilonOpt = Annotated[Optional[float], typer.Option("--epsilon", help="SGLD step size (devinterp's lr).")]
GammaOpt = Annotated[Optional[float], typer.Option("--gamma", help="Localization strength, pull toward the checkpoint (devinterp's localization).")]
NbetaOpt = Annotated[Optional[float], typer.Option("--nbeta", help="Inverse temperature n*beta (default batch_size/ln(batch_size)).")]
NumChainsOpt = Annotated[Optional[int], typer.Option("--num-chains", help="Independent SGLD chains.")]
NumDrawsOpt = Annotated[Optional[int], typer.Option("--num-draws", help="Draws per chain (after burn-in).")]
NumBurninOpt = Annotated[Optional[int], typer.Option("--num-burnin-steps", help="Steps discarded before the draws.")]
StepsBetweenOpt = Annotated[Optional[int], typer.Option("--num-steps-bw-draws", help="SGLD steps between two draws.")]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", help="sgld | rmsprop_sgld.")]
SampleBatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Minibatch size of the chains.")]
NumSamplesOpt = Annotated[Optional[int], typer.Option("--num-samples", help="Use a seeded subset of N training samples.")]
BnModeOpt = Annotated[Optional[str], typer.Option("--bn-mode", help="eval (BatchNorm running statistics fixed while sampling; default) | train (each batch's own; devinterp's behaviour).")]
BnStatsOpt = Annotated[Optional[str], typer.Option("--bn-stats", help="eval mode: recompute (BatchNorm statistics for the checkpoint's weights; default) | checkpoint (as saved).")]
BnSamplesOpt = Annotated[Optional[int], typer.Option("--bn-samples", help="Training samples the BatchNorm statistics are recomputed on (default 4096).")]
DivergenceOpt = Annotated[Optional[float], typer.Option("--divergence-bound", help="Per-draw LLC above this counts as diverged.")]
MalaOpt = Annotated[Optional[bool], typer.Option("--mala/--no-mala", help="Compute MALA acceptance (one more forward and backward pass per measured minibatch step).")]
MalaEveryOpt = Annotated[Optional[int], typer.Option("--mala-every", help="Measure MALA acceptance on every k-th draw only (default 1).")]
SamplerSeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed of batch order and noise (common random numbers across checkpoints).")]
CalibrationOpt = Annotated[Optional[Path], typer.Option("--from-calibration", help="recommended.json from `llcv calibrate sweep` (sets epsilon, gamma, nbeta, sampler).", dir_okay=False)]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="Checkpoint file (llcv or foreign).", dir_okay=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout and nothing else.")]
ParamsOpt = Annotated[Optional[list[str]], typer.Option("--params", help="Sample only parameters matching this glob (repeatable), e.g. 'layer3.*'; the rest stay frozen.")]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="Use only samples of these labels, e.g. 0,3,7.")]


def _class_list(classes: str | None) -> list[str] | None:
    """``--classes 0,3,7`` as a list; [sampler] validation checks each is a label."""
    return None if classes is None else [part.strip() for part in classes.split(",") if part.strip()]


def _sampler_flags(flags: dict[str, object]) -> dict[str, object]:
    """The ``[sampler]`` overrides among a command's flags (pass its ``locals()``).

    Flags mirror the settings fields (docs/conventions.md), so the fields are the selection:
    a sampler flag added to a command reaches the settings without a second list to update.
    """
    from llcv.settings import SamplerSettings

    values = {name: flags[name] for name in SamplerSettings.model_fields if name in flags}
    if "classes" in values:
        values["classes"] = _class_list(values["classes"])
    return values


def _target(
    checkpoint: Path, model: str | None, stem: str | None, dataset: str | None, data_dir: Path | None, config: Path | None,
    allow_version_mismatch: bool | None = None,
):
    """Load the checkpoint's model and training split; [data] in the config may relocate the data."""
    from llcv.targets import load_target

    data = load_settings(("data",), config=config).data if config is not None else None
    configured_dir = data.data_dir if data is not None else None
    target = load_target(
        checkpoint, model_name=model, stem=stem, dataset=dataset, data_dir=data_dir or configured_dir,
        allow_version_mismatch=_version_mismatch_allowed(config, allow_version_mismatch),
    )  # fmt: skip
    info = target.checkpoint
    if info.model_version_overridden:
        from llcv.models import model_version

        spec = info.model
        console.info(
            f"warning: {checkpoint.name} was saved with {spec.name} version {spec.version}, "
            f"loaded anyway into version {model_version(spec.name)} (--allow-model-version-mismatch)"
        )
    return target


def _version_mismatch_allowed(config: Path | None, flag: bool | None) -> bool:
    """[model] allow_version_mismatch, from the config file with the flag on top."""
    overrides = {"model": dict(allow_version_mismatch=flag)}
    return load_settings(("model",), config=config, overrides=overrides).model.allow_version_mismatch


@app.command(
    epilog=(
        "Example: llcv estimate --checkpoint checkpoints/digits/step_00000450.pt --epsilon 1e-4 --gamma 100 "
        "--num-chains 4 --num-draws 200\n\n"
        "With calibrated settings: llcv estimate --checkpoint CKPT --from-calibration results/calibration/step_00000450/recommended.json --json"
    )
)
def estimate(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    from_calibration: CalibrationOpt = None,
    epsilon: EpsilonOpt = None,
    gamma: GammaOpt = None,
    nbeta: NbetaOpt = None,
    num_chains: NumChainsOpt = None,
    num_draws: NumDrawsOpt = None,
    num_burnin_steps: NumBurninOpt = None,
    num_steps_bw_draws: StepsBetweenOpt = None,
    sampler: SamplerOpt = None,
    batch_size: SampleBatchOpt = None,
    num_samples: NumSamplesOpt = None,
    bn_mode: BnModeOpt = None,
    bn_stats: BnStatsOpt = None,
    bn_samples: BnSamplesOpt = None,
    divergence_bound: DivergenceOpt = None,
    mala: MalaOpt = None,
    mala_every: MalaEveryOpt = None,
    seed: SamplerSeedOpt = None,
    params: ParamsOpt = None,
    classes: ClassesOpt = None,
    device: DeviceOpt = None,
    model: ModelOpt = None,
    stem: StemOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    allow_model_version_mismatch: AllowVersionMismatchOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Estimate the LLC of one checkpoint and print it with its diagnostics."""
    flags = dict(locals())
    from llcv.sampling import estimate_llc

    with command_boundary():
        settings = load_settings(
            ("sampler", "estimate"),
            config=config,
            calibration=from_calibration,
            overrides={
                "sampler": _sampler_flags(flags),
                "estimate": dict(device=device),
            },
        )
        _show_settings(settings)
        target = _target(checkpoint, model, stem, dataset, data_dir, config, allow_model_version_mismatch)
        if json_output:
            Verbosity.level = 0
        with RichReporter() as reporter:
            result = estimate_llc(target.model, target.dataset, settings.sampler, device=settings.estimate.device, reporter=reporter)
        if json_output:
            import json

            typer.echo(json.dumps(result.to_dict()))
        else:
            console.render_llc_result(result, f"LLC of {checkpoint.name}")
        if result.llc_mean is None:
            raise typer.Exit(console.EXIT_FAILED)


ResultsDirOpt = Annotated[Optional[Path], typer.Option("--results-dir", help="Where results go: one folder per settings hash (default results/llc_estimations).", file_okay=False)]


def _steps_list(steps: str | None) -> list[str] | None:
    """``--steps 0,100,1000`` as a list; the [estimate] validation checks each is a step number."""
    return None if steps is None else [part.strip() for part in steps.split(",") if part.strip()]


@app.command(
    "estimate-all",
    epilog=(
        "Example: llcv estimate-all --checkpoints-dir checkpoints/digits --results-dir results/digits "
        "--num-chains 4 --num-draws 200\n\n"
        "A coarse pass now, the rest later by a plain rerun: llcv estimate-all --checkpoints-dir checkpoints/digits --every-nth 4\n\n"
        "One task of a 4-task Slurm array: llcv estimate-all --checkpoints-dir CKPTS --shard $SLURM_ARRAY_TASK_ID/4\n\n"
        "Every GPU of this machine, one worker each: llcv estimate-all --checkpoints-dir CKPTS --devices all  (see docs/cluster.md)\n\n"
        "On a Ray cluster: llcv estimate-all --checkpoints-dir CKPTS --executor ray --ray-address auto  (see docs/cluster.md)\n\n"
        "Refined LLCs, one per block and one per class beside the whole model: "
        "llcv estimate-all --checkpoints-dir checkpoints/digits --per-layer --per-class  (see docs/guide.md)"
    ),
)
def estimate_all_command(
    checkpoints_dir: Annotated[Path, typer.Option("--checkpoints-dir", help="A training run's checkpoints.", file_okay=False)],
    results_dir: ResultsDirOpt = None,
    config: ConfigOpt = None,
    from_calibration: CalibrationOpt = None,
    epsilon: EpsilonOpt = None,
    gamma: GammaOpt = None,
    nbeta: NbetaOpt = None,
    num_chains: NumChainsOpt = None,
    num_draws: NumDrawsOpt = None,
    num_burnin_steps: NumBurninOpt = None,
    num_steps_bw_draws: StepsBetweenOpt = None,
    sampler: SamplerOpt = None,
    batch_size: SampleBatchOpt = None,
    num_samples: NumSamplesOpt = None,
    bn_mode: BnModeOpt = None,
    bn_stats: BnStatsOpt = None,
    bn_samples: BnSamplesOpt = None,
    divergence_bound: DivergenceOpt = None,
    mala: MalaOpt = None,
    mala_every: MalaEveryOpt = None,
    seed: SamplerSeedOpt = None,
    every_nth: Annotated[Optional[int], typer.Option("--every-nth", help="Every K-th checkpoint from the first, plus the last; a plain rerun fills in the rest.")] = None,
    steps: Annotated[Optional[str], typer.Option("--steps", help="Only the checkpoints at these steps, comma-separated: 0,100,1000.")] = None,
    force: Annotated[Optional[bool], typer.Option("--force", help="Redo checkpoints that already have a result.")] = None,
    device: DeviceOpt = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="One worker per device of this machine, on one results folder: cuda:0,cuda:1 or cpu,cpu; all: every CUDA GPU. Replaces --device.")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="K/N: only share K (from 0) of N, by a stable hash of the file name.")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local (this process) | ray (one task per checkpoint).")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join (auto, ray://HOST:10001); default: a local instance.")] = None,
    cpus_per_task: Annotated[Optional[int], typer.Option("--cpus-per-task", help="Ray: CPUs and torch threads per task (default 1, or CPUs per GPU).")] = None,
    claim_timeout_seconds: Annotated[Optional[float], typer.Option("--claim-timeout-seconds", help="Take over a claim whose heartbeat is older than this.")] = None,
    params: ParamsOpt = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Use only samples of these labels, e.g. 0,3,7; with --per-class: which classes get their own LLC.")] = None,
    per_layer: Annotated[Optional[bool], typer.Option("--per-layer", help="Also one LLC per block of the model (only its weights sampled, the rest frozen), e.g. scope layer3.")] = None,
    per_class: Annotated[Optional[bool], typer.Option("--per-class", help="Also one LLC per class (the loss on its samples only), scope class=7.")] = None,
    model: ModelOpt = None,
    stem: StemOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    allow_model_version_mismatch: AllowVersionMismatchOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the end summary as JSON on stdout and nothing else.")] = False,
) -> None:
    """Estimate the LLC of every checkpoint of a run: resumable, crash-safe, shareable by workers.

    With --per-layer and/or --per-class, each checkpoint also gets one refined LLC per block or
    class, each in its own result file in the same settings folder as the whole model's.
    """
    flags = dict(locals())
    from llcv.estimation import estimate_all
    from llcv.results import settings_hash

    with command_boundary():
        settings = load_settings(
            ("sampler", "estimate"),
            config=config,
            calibration=from_calibration,
            overrides={
                "sampler": _sampler_flags(flags),
                "estimate": dict(
                    results_dir=results_dir, every_nth=every_nth, steps=_steps_list(steps), force=force, device=device,
                    devices=devices, shard=shard, executor=executor, ray_address=ray_address, cpus_per_task=cpus_per_task,
                    claim_timeout_seconds=claim_timeout_seconds, per_layer=per_layer, per_class=per_class,
                ),
            },
        )
        _show_settings(settings)
        options = settings.estimate
        configured = load_settings(("data",), config=config).data if config is not None else None
        allow_mismatch = _version_mismatch_allowed(config, allow_model_version_mismatch)
        sampler_settings, chosen_classes = settings.sampler, options.per_class
        if options.per_class and sampler_settings.classes is not None:
            # --per-class --classes 0,3,7: those classes get their own LLC; the whole model keeps all the data
            chosen_classes = list(sampler_settings.classes)
            sampler_settings = sampler_settings.model_copy(update={"classes": None})
        digest = settings_hash(sampler_settings)
        console.info(f"results: {options.results_dir / digest} (settings {digest})")
        if json_output:
            Verbosity.level = 0
        try:
            with RichReporter() as reporter:
                summary = estimate_all(
                    checkpoints_dir, options.results_dir, sampler_settings, per_layer=options.per_layer, per_class=chosen_classes,
                    device=options.device, shard=options.shard, executor=options.executor, reporter=reporter,
                    every_nth=options.every_nth, steps=options.steps, force=options.force,
                    ray_address=options.ray_address, cpus_per_task=options.cpus_per_task, devices=options.devices,
                    claim_timeout_seconds=options.claim_timeout_seconds, model_name=model, stem=stem,
                    dataset=dataset, data_dir=data_dir or (configured.data_dir if configured is not None else None),
                    allow_version_mismatch=allow_mismatch,
                )  # fmt: skip
        except (KeyboardInterrupt, console.Terminated) as stop:
            partial = getattr(stop, "estimate_summary", None)
            if partial is not None:
                _show_estimate_summary(partial, json_output)
            raise
        _show_estimate_summary(summary, json_output)
        if not summary.ok:
            raise typer.Exit(console.EXIT_FAILED)


def _show_estimate_summary(summary, json_output: bool) -> None:
    """The end summary: as JSON (every EstimateSummary field, plus ok and num_done), or as text."""
    import dataclasses

    if json_output:
        _emit_json({**dataclasses.asdict(summary), "ok": summary.ok, "num_done": summary.num_done})
    else:
        _render_estimate_summary(summary)


def _render_estimate_summary(summary) -> None:
    """What estimate-all did: done (now and before), failed with reasons, left, and where."""
    from rich.markup import escape  # labels ("step_1.pt [layer3]") and reasons ("[model] ...") keep their brackets

    out = console.stdout
    total = len(summary.selected)
    state = "stopped" if summary.interrupted else "finished"
    scopes = list(getattr(summary, "scopes", None) or ["model"])
    unit = "checkpoint(s)" if len(scopes) == 1 else f"estimate(s) over {len(scopes)} scopes ({', '.join(scopes)})"
    out.print(
        f"estimate-all {state} in {summary.elapsed_seconds:.1f} s: {summary.num_done} of {total} {unit} done "
        f"({len(summary.computed)} now, {len(summary.already_done)} before), {len(summary.failed)} failed, "
        f"{len(summary.elsewhere)} in progress elsewhere, {len(summary.left)} left",
        highlight=False,
    )
    for name, reason in summary.failed.items():
        out.print(f"[red]failed[/] {escape(name)}: {escape(reason)}", highlight=False)
    if summary.elsewhere:
        out.print(f"claimed by other workers: {escape(', '.join(summary.elsewhere))}", highlight=False)
    if summary.left:
        out.print(f"left to do (rerun the same command): {escape(', '.join(summary.left))}", highlight=False)
    if summary.failed and not summary.interrupted:
        out.print("a rerun retries the failed checkpoints", highlight=False)
    out.print(f"results in {escape(str(summary.folder))}", highlight=False)


# `plot` and `report`: the runs they read and the LLC figure's axes.
RunsDirOpt = Annotated[Optional[list[Path]], typer.Option("--results-dir", help="A folder written by estimate-all; repeat it to compare runs.", file_okay=False)]
RunLabelOpt = Annotated[Optional[list[str]], typer.Option("--label", help="The name of each --results-dir in the legend and on the page, in the same order.")]
RunSettingsOpt = Annotated[Optional[str], typer.Option("--settings", help="The settings hash to read (default: the most recently used).")]
XOpt = Annotated[Optional[str], typer.Option("--x", help="The training-time axis: step | epoch (epoch is used where steps are unknown).")]
LogXOpt = Annotated[Optional[bool], typer.Option("--log-x/--linear-x", help="Logarithmic training-time axis (step 0 kept).")]
PerParameterOpt = Annotated[Optional[bool], typer.Option("--per-parameter/--no-per-parameter", help="Divide each curve by its number of sampled parameters d (compares blocks of different sizes).")]


@app.command(
    epilog=(
        "Example: llcv plot --results-dir results/digits --out results/llc_plots/digits.png --log-x --mark-transitions\n\n"
        "Two runs overlaid: llcv plot --results-dir results/seed0 --label 'seed 0' --results-dir results/seed1 --label 'seed 1' --out seeds.pdf\n\n"
        "Per-block or per-class results (estimate-all --per-layer / --per-class) get their own panels: "
        "llcv plot --results-dir results/digits --out blocks.png --per-parameter"
    )
)
def plot(
    results_dir: RunsDirOpt = None,
    label: RunLabelOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="The figure file; its suffix picks the format: .png, .pdf or .svg.", dir_okay=False)] = None,
    x: XOpt = None,
    log_x: LogXOpt = None,
    settings_hash: RunSettingsOpt = None,
    mark_transitions: Annotated[Optional[bool], typer.Option("--mark-transitions/--no-mark-transitions", help="Mark and list candidate transitions.")] = None,
    per_parameter: PerParameterOpt = None,
    config: ConfigOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the figure's path and, per run, its settings hash, record count, missing checkpoints and candidate transitions as JSON on stdout, and nothing else.")] = False,
) -> None:
    """Plot the LLC over training, with loss and accuracy below, for one or several runs."""
    from rich.markup import escape

    from llcv.plotting import plot_llc
    from llcv.results import (
        ResultsStore, choose_settings, find_transitions, health_label, list_settings, missing_checkpoints, record_health,
        record_order, run_labels, scope_order,
    )  # fmt: skip
    from llcv.settings import EstimateSettings

    with command_boundary():
        settings = load_settings(
            ("plot",), config=config,
            overrides={"plot": dict(out=out, x=x, log_x=log_x, mark_transitions=mark_transitions, per_parameter=per_parameter)},
        )
        _show_settings(settings)
        options = settings.plot
        folders = results_dir or [EstimateSettings().results_dir]
        names = run_labels(folders, label)
        if json_output:
            Verbosity.level = 0
        runs, missing, hashes = {}, {}, {}
        for folder, name in zip(folders, names):
            chosen = choose_settings(folder, settings_hash)
            hashes[name] = chosen.settings_hash
            others = [entry.settings_hash for entry in list_settings(folder) if entry.settings_hash != chosen.settings_hash]
            how = "as asked" if settings_hash else "the most recent" + (f"; --settings picks one of {', '.join(others)}" if others else "")
            records = ResultsStore(chosen.path.parent, chosen.settings_hash).records()
            absent = missing_checkpoints(records)
            missing[name] = None if absent is None else len(absent)
            runs[name] = records
            console.info(f"{name}: {len(records)} result(s) with settings {chosen.settings_hash} ({how})")
            refined = list(dict.fromkeys(record.scope for record in sorted(records, key=scope_order) if not record.is_whole_model))
            if refined:
                console.info(f"{name}: refined scopes {', '.join(refined)}")
            if absent:
                console.info(f"{name}: partial results, {len(absent)} checkpoint(s) still missing")
            elif absent is None:
                console.info(f"{name}: the checkpoints folder is not reachable here, so missing checkpoints are unknown")
        path = plot_llc(
            runs, options.out, x=options.x, log_x=options.log_x, mark_transitions=options.mark_transitions,
            missing=missing, per_parameter=options.per_parameter,
        )
        if json_output:
            import dataclasses

            _emit_json({"figure": str(path), "runs": {
                name: {"settings_hash": hashes[name], "num_records": len(records), "missing_checkpoints": missing[name],
                       "transitions": [dataclasses.asdict(item) for item in find_transitions(records, options.x)]}
                for name, records in runs.items()
            }})  # fmt: skip
        elif options.mark_transitions:
            _render_transitions({name: find_transitions(records, options.x) for name, records in runs.items()})
        console.info(f"wrote {path}")
        for name, records in runs.items():  # which whole-model estimates the figure says not to read, and why
            whole = sorted((record for record in records if record.is_whole_model), key=record_order)
            judged = [(record, *record_health(record)) for record in whole]
            unhealthy = [(record, reasons) for record, healthy, reasons in judged if healthy is False]
            if not unhealthy:
                continue
            listed = ", ".join(health_label(record, reasons) for record, reasons in unhealthy[:5])
            listed += f", and {len(unhealthy) - 5} more" if len(unhealthy) > 5 else ""
            marks = "hollow markers" + ("; × where there is no estimate" if any(record.is_failed for record, _ in unhealthy) else "")
            prefix = f"{name}: " if len(runs) > 1 else ""
            console.info(escape(
                f"{prefix}{len(unhealthy)} of {len(whole)} checkpoints are unhealthy ({marks}): {listed}; see health_reasons in summary.csv"
            ))  # fmt: skip


def _render_transitions(transitions: dict) -> None:
    """One line per candidate transition: where, the LLC and the losses there, and what kind."""

    def number(value, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    out = console.stdout
    out.print("candidate transitions (the slope of LLC against log-step changes sign or peaks):", highlight=False)
    for name, found in transitions.items():
        prefix = f"{name}: " if len(transitions) > 1 else ""
        if not found:
            out.print(f"  {prefix}none (fewer than three estimates past step 0, or no turn in the curve)", highlight=False)
        for item in found:
            out.print(
                f"  {prefix}step {number(item.step, 'd')} (epoch {number(item.epoch, '.3g')}, {item.checkpoint}): "
                f"LLC {item.llc:.4g}, train loss {number(item.train_loss, '.4f')}, val loss {number(item.val_loss, '.4f')}: {item.kind}",
                highlight=False,
            )


@app.command(
    epilog=(
        "Example: llcv report --results-dir results/llc_estimations --calibration results/calibration --out results/report.html --log-x\n\n"
        "Two runs side by side: llcv report --results-dir results/seed0 --label 'seed 0' --results-dir results/seed1 "
        "--label 'seed 1' --out results/seeds.html"
    )
)
def report(
    results_dir: RunsDirOpt = None,
    label: RunLabelOpt = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", "--calibration-dir", help="A calibrate sweep folder, or the folder above several (default: the 'calibration' folder beside the results, left out if absent).", file_okay=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="The HTML page to write.", dir_okay=False)] = Path("results/report.html"),
    settings_hash: RunSettingsOpt = None,
    x: XOpt = None,
    log_x: LogXOpt = None,
    per_parameter: PerParameterOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write one self-contained HTML page on a run: figure, every checkpoint, calibration, chains, provenance."""
    from rich.markup import escape

    from llcv.report import write_report
    from llcv.settings import EstimateSettings

    with command_boundary():
        settings = load_settings(("plot",), config=config, overrides={"plot": dict(x=x, log_x=log_x, per_parameter=per_parameter)})
        _show_settings(settings)
        with RichReporter() as reporter:
            result = write_report(
                results_dir or [EstimateSettings().results_dir], out, labels=label, settings_hash=settings_hash,
                calibration_dir=calibration, plot=settings.plot, reporter=reporter,
            )  # fmt: skip
        for run in result.runs:
            missing = "missing checkpoints unknown (checkpoints folder not reachable)" if run.missing is None else (
                f"{len(run.missing)} checkpoint(s) not estimated yet" if run.missing else "none missing"
            )  # fmt: skip
            console.info(escape(
                f"{run.label}: {len(run.whole)} checkpoint(s) with settings {run.settings_hash}, "
                f"{len(run.unhealthy)} unhealthy or failed, {missing}"
            ))  # fmt: skip
        absent = f"none readable in {calibration}" if calibration else "none found beside the results (name a folder with --calibration)"
        sweeps = ", ".join(str(folder) for folder in result.sweeps) or absent
        console.info(escape(f"calibration sweeps: {sweeps}"))
        console.info(escape(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB); open it in a browser"))


# `llcv calibrate sweep | curve | chains`: pick SGLD settings by a stated rule (docs/calibration.md).
calibrate = typer.Typer(
    help=(
        "Choose SGLD settings for a checkpoint: sweep a grid of (epsilon, gamma, nbeta), inspect one LLC curve, "
        "compare several chains. Outputs go to <results-dir>/<checkpoint-stem>/.\n\n"
        "Example: llcv calibrate sweep --checkpoint checkpoints/digits/step_00000036.pt"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(calibrate, name="calibrate")

CalibrationResultsDirOpt = Annotated[Optional[Path], typer.Option("--results-dir", help="Parent folder of the outputs (default results/calibration).", file_okay=False)]
FigureFormatOpt = Annotated[Optional[str], typer.Option("--format", help="Figure format: png | pdf | svg.")]
GridHelp = "A list (1e-6,1e-5,1e-4) or a log range start:stop:count (1e-6:1e-2:5)."


def _calibration_settings(config, from_calibration, sampler: dict, calibrate_values: dict, base: dict | None = None):
    """[sampler] (+ recommended.json) and [calibrate] for a calibrate command, flags on top."""
    return load_settings(
        ("sampler", "calibrate"),
        config=config,
        calibration=from_calibration,
        base=base,
        overrides={"sampler": sampler, "calibrate": calibrate_values},
    )


@calibrate.command(
    "sweep",
    epilog=(
        "Example: llcv calibrate sweep --checkpoint checkpoints/digits/step_00000036.pt "
        "--epsilons 1e-6:1e-3:4 --gammas 1,100,10000 --num-draws 200\n\n"
        "Then: llcv estimate --checkpoint checkpoints/digits/step_00000036.pt "
        "--from-calibration results/calibration/step_00000036/recommended.json"
    ),
)
def calibrate_sweep_command(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    epsilons: Annotated[Optional[str], typer.Option("--epsilons", help="SGLD step sizes. " + GridHelp)] = None,
    gammas: Annotated[Optional[str], typer.Option("--gammas", help="Localization strengths. " + GridHelp)] = None,
    nbetas: Annotated[Optional[str], typer.Option("--nbetas", help="Inverse temperatures (default: the sampler's nbeta). " + GridHelp)] = None,
    num_chains: NumChainsOpt = None,
    num_draws: NumDrawsOpt = None,
    num_burnin_steps: NumBurninOpt = None,
    target_acceptance: Annotated[Optional[float], typer.Option("--target-acceptance", help="Least MALA acceptance a combination needs (default 0.9).")] = None,
    sampler: SamplerOpt = None,
    batch_size: SampleBatchOpt = None,
    num_samples: NumSamplesOpt = None,
    bn_mode: BnModeOpt = None,
    bn_stats: BnStatsOpt = None,
    bn_samples: BnSamplesOpt = None,
    mala_every: MalaEveryOpt = None,
    seed: SamplerSeedOpt = None,
    params: ParamsOpt = None,
    classes: ClassesOpt = None,
    results_dir: CalibrationResultsDirOpt = None,
    figure_format: FigureFormatOpt = None,
    device: DeviceOpt = None,
    model: ModelOpt = None,
    stem: StemOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    allow_model_version_mismatch: AllowVersionMismatchOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Estimate the LLC over a grid of (epsilon, gamma, nbeta) and recommend one by the rule."""
    from llcv import calibration

    with command_boundary():
        grid = {
            "epsilons": calibration.parse_grid(epsilons, "--epsilons") if epsilons is not None else None,
            "gammas": calibration.parse_grid(gammas, "--gammas", allow_zero=True) if gammas is not None else None,
            "nbetas": calibration.parse_grid(nbetas, "--nbetas") if nbetas is not None else None,
        }
        settings = _calibration_settings(
            config,
            None,
            dict(sampler=sampler, batch_size=batch_size, num_samples=num_samples, bn_mode=bn_mode, bn_stats=bn_stats,
                 bn_samples=bn_samples, mala_every=mala_every, seed=seed, params=params, classes=_class_list(classes)),
            dict(
                **grid, num_chains=num_chains, num_draws=num_draws, num_burnin_steps=num_burnin_steps,
                target_acceptance=target_acceptance, results_dir=results_dir, format=figure_format, device=device,
            ),
        )
        _show_settings(settings)
        options = settings.calibrate
        target = _target(checkpoint, model, stem, dataset, data_dir, config, allow_model_version_mismatch)
        out = calibration.output_dir(options.results_dir, checkpoint)
        if json_output:
            Verbosity.level = 0
        with RichReporter() as reporter:
            result = calibration.calibrate_sweep(
                target.model, target.dataset, options.epsilons, options.gammas, options.nbetas,
                base=calibration.sweep_base(settings.sampler, options), device=options.device,
                sweep_file=out / "sweep.json", checkpoint=str(checkpoint), reporter=reporter,
                **calibration.rule_thresholds(options),
            )
        calibration.save_sweep(result, out, options.format)
        if json_output:
            _emit_json(result.to_dict())
        else:
            _render_sweep(result, f"Sweep of {checkpoint.name}")
        if result.recommended is None:
            console.stderr.print(f"[bold red]error:[/] {result.reason}", highlight=False)
            console.info(f"table and figures in {out}; no recommended.json written")
            raise typer.Exit(console.EXIT_FAILED)
        console.info(f"recommended: {result.reason}")
        console.info(f"wrote {out / 'recommended.json'} (use it with --from-calibration), sweep.json, sweep.csv and figures in {out}")


def _render_sweep(result, title: str) -> None:
    """The sweep table: one row per combination, the recommended one starred."""
    from rich import box
    from rich.table import Table

    from llcv.health import short_reason

    def number(value, spec: str = ".3g") -> str:
        return "—" if value is None else format(value, spec)

    base = result.base
    nbetas = {row["nbeta"] for row in result.rows}
    one_nbeta = len(nbetas) == 1
    title += f" ({base.num_chains} chains x {base.num_draws} draws" + (f", nbeta {next(iter(nbetas)):.4g})" if one_nbeta else ")")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # llc_final is left to sweep.csv / sweep.json, so the table fits an 80-column terminal.
    columns = ["epsilon", "gamma", *([] if one_nbeta else ["nbeta"]), "MALA", "LLC", "± MCSE", "neg", "drift z", "R-hat", "verdict"]
    for column in columns:
        if column == "verdict":
            table.add_column(column, min_width=13, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    recommended = result.recommended_index
    for index, row in enumerate(result.rows):
        verdict = "★ recommended" if index == recommended else "ok" if row["qualifies"] else short_reason(row["reason"])
        cells = [f"{row['epsilon']:g}", f"{row['gamma']:g}", *([] if one_nbeta else [f"{row['nbeta']:.4g}"])]
        cells += [number(row["mala_acceptance"], ".2f"), number(row["llc_mean"]), number(row["llc_mcse"], ".2g")]
        cells += [number(row["negative_chains"], ".2f"), number(row["drift_z"], "+.1f"), number(row["r_hat"], ".2f"), verdict]
        table.add_row(*cells, style="bold green" if index == recommended else "dim" if row["diverged"] else None)
    console.stdout.print(table)


def _single_setting_command(checkpoint, config, from_calibration, sampler_values: dict, results_dir, figure_format, device, base=None):
    """Shared start of `calibrate curve` and `calibrate chains`: settings, target, output folder."""
    from llcv import calibration

    # Calibration measures MALA acceptance unless told not to; estimates leave it off by default.
    base = {"sampler": {"mala": True, **(base or {}).get("sampler", {})}}
    settings = _calibration_settings(
        config, from_calibration, sampler_values, dict(results_dir=results_dir, format=figure_format, device=device), base=base
    )
    _show_settings(settings)
    return settings, calibration.output_dir(settings.calibrate.results_dir, checkpoint)


@calibrate.command(
    "curve",
    epilog=(
        "Example: llcv calibrate curve --checkpoint checkpoints/digits/step_00000036.pt --epsilon 1e-4 --gamma 100 "
        "--num-draws 400 --num-burnin-steps 100\n\n"
        "With the sweep's pick: llcv calibrate curve --checkpoint CKPT --from-calibration results/calibration/step_00000036/recommended.json"
    ),
)
def calibrate_curve_command(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    from_calibration: CalibrationOpt = None,
    epsilon: EpsilonOpt = None,
    gamma: GammaOpt = None,
    nbeta: NbetaOpt = None,
    num_draws: NumDrawsOpt = None,
    num_burnin_steps: NumBurninOpt = None,
    mala: MalaOpt = None,
    mala_every: MalaEveryOpt = None,
    sampler: SamplerOpt = None,
    batch_size: SampleBatchOpt = None,
    num_samples: NumSamplesOpt = None,
    bn_mode: BnModeOpt = None,
    bn_stats: BnStatsOpt = None,
    bn_samples: BnSamplesOpt = None,
    seed: SamplerSeedOpt = None,
    params: ParamsOpt = None,
    classes: ClassesOpt = None,
    results_dir: CalibrationResultsDirOpt = None,
    figure_format: FigureFormatOpt = None,
    device: DeviceOpt = None,
    model: ModelOpt = None,
    stem: StemOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    allow_model_version_mismatch: AllowVersionMismatchOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Run one chain and judge its LLC-over-steps curve: stable, peaks or drift."""
    flags = dict(locals())
    from llcv import calibration

    with command_boundary():
        settings, out = _single_setting_command(
            checkpoint, config, from_calibration,
            _sampler_flags(flags),
            results_dir, figure_format, device,
        )
        target = _target(checkpoint, model, stem, dataset, data_dir, config, allow_model_version_mismatch)
        if json_output:
            Verbosity.level = 0
        with RichReporter() as reporter:
            curve = calibration.calibrate_curve(
                target.model, target.dataset, settings.sampler, device=settings.calibrate.device,
                max_trace_drift=settings.calibrate.max_trace_drift, checkpoint=str(checkpoint), reporter=reporter,
            )
        calibration.save_curve(curve, out, settings.calibrate.format)
        style = {"stable": "bold green", "diverged": "bold red"}.get(curve.verdict, "bold yellow")
        llc = "—" if curve.llc_mean is None else f"{curve.llc_mean:.4g}"
        mala = "—" if curve.mala_acceptance is None else f"{curve.mala_acceptance:.3f}"
        if json_output:
            _emit_json(curve.to_dict())
        else:
            console.stdout.print(f"[{style}]{curve.verdict}[/]: {curve.verdict_reason}", highlight=False)
            console.stdout.print(f"LLC {llc} (one chain), MALA acceptance {mala}", highlight=False)
        console.info(f"wrote curve.json and curve.{settings.calibrate.format} in {out}")
        if curve.verdict == "diverged":
            raise typer.Exit(console.EXIT_FAILED)


@calibrate.command(
    "chains",
    epilog=(
        "Example: llcv calibrate chains --checkpoint checkpoints/digits/step_00000036.pt --epsilon 1e-4 --gamma 100 --num-chains 5\n\n"
        "With the sweep's pick: llcv calibrate chains --checkpoint CKPT --from-calibration results/calibration/step_00000036/recommended.json"
    ),
)
def calibrate_chains_command(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    from_calibration: CalibrationOpt = None,
    epsilon: EpsilonOpt = None,
    gamma: GammaOpt = None,
    nbeta: NbetaOpt = None,
    num_chains: Annotated[Optional[int], typer.Option("--num-chains", help="Independent SGLD chains (default 5).")] = None,
    num_draws: NumDrawsOpt = None,
    num_burnin_steps: NumBurninOpt = None,
    mala: MalaOpt = None,
    mala_every: MalaEveryOpt = None,
    sampler: SamplerOpt = None,
    batch_size: SampleBatchOpt = None,
    num_samples: NumSamplesOpt = None,
    bn_mode: BnModeOpt = None,
    bn_stats: BnStatsOpt = None,
    bn_samples: BnSamplesOpt = None,
    seed: SamplerSeedOpt = None,
    params: ParamsOpt = None,
    classes: ClassesOpt = None,
    results_dir: CalibrationResultsDirOpt = None,
    figure_format: FigureFormatOpt = None,
    device: DeviceOpt = None,
    model: ModelOpt = None,
    stem: StemOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    allow_model_version_mismatch: AllowVersionMismatchOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Run several chains; show each one's running LLC, their mean and spread, R-hat, ESS and MALA acceptance."""
    flags = dict(locals())
    from llcv import calibration

    with command_boundary():
        settings, out = _single_setting_command(
            checkpoint, config, from_calibration,
            _sampler_flags(flags),
            results_dir, figure_format, device,
            base={"sampler": {"num_chains": calibration.CHAINS_DEFAULT_NUM_CHAINS}},
        )
        target = _target(checkpoint, model, stem, dataset, data_dir, config, allow_model_version_mismatch)
        if json_output:
            Verbosity.level = 0
        with RichReporter() as reporter:
            chains = calibration.calibrate_chains(
                target.model, target.dataset, settings.sampler, device=settings.calibrate.device,
                checkpoint=str(checkpoint), reporter=reporter,
            )
        calibration.save_chains(chains, out, settings.calibrate.format)
        if json_output:
            _emit_json(chains.to_dict())
        else:
            console.render_llc_result(chains.result, f"{settings.sampler.num_chains} chains on {checkpoint.name}")
        console.info(f"wrote chains.json and chains.{settings.calibrate.format} in {out}")
        if chains.llc_mean is None:
            raise typer.Exit(console.EXIT_FAILED)


@app.command(
    epilog="Example: llcv selftest --quick\n\nFull size on a GPU: llcv selftest --device cuda\n\n"
    "Side by side with devinterp 1.3 (pip install 'llcv[reference]'): llcv selftest --against devinterp"
)
def selftest(
    device: DeviceOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="CI size: fewer draws; goal is the truth within 3 standard errors.")] = False,
    precision: Annotated[str, typer.Option("--precision", help="fp32 | bf16 (forward/backward under bf16 autocast) | auto (the faster, timed on each case); fp32 is what the known values validate.")] = "fp32",
    auto: Annotated[bool, typer.Option("--auto", help="Also calibrate each case with recommend_settings and judge that estimate; both are shown.")] = False,
    against: Annotated[Optional[str], typer.Option("--against", help="devinterp: also run each case through devinterp 1.3's sampler at the same settings and show both (time, error); needs llcv[reference].")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Estimate models with known learning coefficients and print true vs estimated values."""
    from llcv.selftest import run_selftest

    with command_boundary():
        settings = load_settings(("sampler", "estimate"), overrides={"sampler": dict(precision=precision), "estimate": dict(device=device)})
        _show_settings(settings)
        if json_output:
            Verbosity.level = 0
        with RichReporter() as reporter:
            rows = run_selftest(
                quick=quick, device=settings.estimate.device, precision=settings.sampler.precision, reporter=reporter, auto=auto,
                against=against,
            )
        if json_output:
            import dataclasses
            import json

            typer.echo(json.dumps([dataclasses.asdict(row) for row in rows]))
        else:
            console.render_selftest(rows, quick, auto, against)
        if not all(row.passed for row in rows):
            raise typer.Exit(console.EXIT_FAILED)


@app.command(
    epilog="Example: llcv demo\n\nElsewhere, on a GPU: llcv demo --results-dir results/my-demo --device cuda"
)
def demo(
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where every output of the demo goes.", file_okay=False)] = Path("results/demo"),
    device: DeviceOpt = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="A seconds-long run of the same pipeline, for CI.")] = False,
) -> None:
    """Train on the embedded digits data, calibrate, estimate the LLC at every checkpoint, plot it."""
    from llcv.demo import run_demo

    with command_boundary():
        settings = load_settings(("estimate",), overrides={"estimate": dict(device=device)})
        _show_settings(settings)
        with RichReporter() as reporter:
            result = run_demo(results_dir, device=settings.estimate.device, tiny=tiny, reporter=reporter)
        console.render_demo(result)


def _resumed_settings(checkpoint: Path | None) -> dict | None:
    """A resumed run starts from the settings stored in its checkpoint, beneath config and flags."""
    if checkpoint is None:
        return None
    from llcv.checkpoints import read_checkpoint

    stored = read_checkpoint(checkpoint).get("settings") or {}
    train_settings = {key: value for key, value in stored.get("train", {}).items() if key != "resume_from_checkpoint"}
    # allowing a model-version mismatch is asked for each time, never inherited from a checkpoint
    model_settings = {key: value for key, value in stored.get("model", {}).items() if key != "allow_version_mismatch"}
    return {**stored, "train": train_settings, "model": model_settings}


def main() -> None:
    """Console-script entry point."""
    app()
