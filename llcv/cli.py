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
