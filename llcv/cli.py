"""The ``llcv`` command line: parse flags, resolve settings, call the library, render the result.

Each command is thin: everything it computes comes from a library function, and every user
error leaves through ``console.command_boundary`` as one message and a documented exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llcv import __version__
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
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="DataLoader workers (0 keeps resume bit-exact).")] = None,
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
                "model": dict(name=model, stem=stem),
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
BnModeOpt = Annotated[Optional[str], typer.Option("--bn-mode", help="eval (running statistics frozen; default) | train (devinterp's behaviour).")]
DivergenceOpt = Annotated[Optional[float], typer.Option("--divergence-bound", help="Per-draw LLC above this counts as diverged.")]
MalaOpt = Annotated[Optional[bool], typer.Option("--mala/--no-mala", help="Compute MALA acceptance.")]
SamplerSeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed of batch order and noise (common random numbers across checkpoints).")]
CalibrationOpt = Annotated[Optional[Path], typer.Option("--from-calibration", help="recommended.json from `llcv calibrate sweep` (sets epsilon, gamma, nbeta, sampler).", dir_okay=False)]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", help="Checkpoint file (llcv or foreign).", dir_okay=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout and nothing else.")]


def _target(checkpoint: Path, model: str | None, stem: str | None, dataset: str | None, data_dir: Path | None, config: Path | None):
    """Load the checkpoint's model and training split; [data] in the config may relocate the data."""
    from llcv.targets import load_target

    data = load_settings(("data",), config=config).data if config is not None else None
    configured_dir = data.data_dir if data is not None else None
    return load_target(checkpoint, model_name=model, stem=stem, dataset=dataset, data_dir=data_dir or configured_dir)


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
    divergence_bound: DivergenceOpt = None,
    mala: MalaOpt = None,
    seed: SamplerSeedOpt = None,
    device: DeviceOpt = None,
    model: ModelOpt = None,
    stem: StemOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Estimate the LLC of one checkpoint and print it with its diagnostics."""
    from llcv.sampling import estimate_llc

    with command_boundary():
        settings = load_settings(
            ("sampler", "estimate"),
            config=config,
            calibration=from_calibration,
            overrides={
                "sampler": dict(
                    epsilon=epsilon, gamma=gamma, nbeta=nbeta, num_chains=num_chains, num_draws=num_draws,
                    num_burnin_steps=num_burnin_steps, num_steps_bw_draws=num_steps_bw_draws, sampler=sampler,
                    batch_size=batch_size, num_samples=num_samples, bn_mode=bn_mode,
                    divergence_bound=divergence_bound, mala=mala, seed=seed,
                ),
                "estimate": dict(device=device),
            },
        )
        _show_settings(settings)
        target = _target(checkpoint, model, stem, dataset, data_dir, config)
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


def _resumed_settings(checkpoint: Path | None) -> dict | None:
    """A resumed run starts from the settings stored in its checkpoint, beneath config and flags."""
    if checkpoint is None:
        return None
    from llcv.checkpoints import read_checkpoint

    stored = read_checkpoint(checkpoint).get("settings") or {}
    train_settings = {key: value for key, value in stored.get("train", {}).items() if key != "resume_from_checkpoint"}
    return {**stored, "train": train_settings}


def main() -> None:
    """Console-script entry point."""
    app()
