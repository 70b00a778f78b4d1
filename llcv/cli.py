"""The ``llcv`` command line: parse flags, resolve settings, call the library, render the result.

Each command does four things in order: its flags become settings overrides through the tables
of ``llcv.cli_options`` (where every option is declared once), ``load_settings`` resolves them
with the precedence of docs/conventions.md, one library call does the work, and
``llcv.cli_render`` shows the result. Every user error leaves through
``console.command_boundary`` as one message and a documented exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llcv import calibration, cli_render, console, demo, estimation, figures, model_sources, sampling, selftest, targets, training
from llcv.calibration import Budget
from llcv.cli_options import (
    CHAINS_DEFAULTS,
    CURVE_DEFAULTS,
    RESULTS_READ,
    AxesFlags,
    BudgetFlags,
    CalibrateOutputFlags,
    CalibrationOpt,
    CheckpointOpt,
    ConfigOpt,
    DeviceOpt,
    DrawFlags,
    EstimateFlags,
    GridFlags,
    JsonOpt,
    LengthFlags,
    PlotFlags,
    RunLabelOpt,
    RunsDirOpt,
    RunSettingsOpt,
    SamplerFlags,
    StepFlags,
    SweepLengthFlags,
    TargetFlags,
    TemperatureFlags,
    TrainFlags,
    flag_groups,
    merge,
)
from llcv.console import RichReporter, Verbosity, command_boundary
from llcv.settings import DEFAULT_BUDGET_STEPS, SettingsBundle, load_settings
from llcv.version import __version__

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

# The sections a command that loads a checkpoint resolves besides its own: [data] for data_dir
# and [model] for allow_version_mismatch (TargetFlags).
TARGET_SECTIONS = ("data", "model")
# estimate-all reads [calibrate] for --calibrate alone: the budget and the figures' format.
ESTIMATE_ALL_READ = {**TargetFlags.READ, "calibrate": ("budget_steps", "budget_seconds", "format")}


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


def _quiet_for_json(json_output: bool) -> None:
    """--json: stdout holds the JSON alone, and progress bars and messages stop as with --quiet."""
    if json_output:
        Verbosity.level = 0


def _target(target: TargetFlags, settings: SettingsBundle) -> targets.Target:
    """What the command estimates, built once from --model/--stem/--dataset, [data] data_dir
    (which may relocate the data), [model] allow_version_mismatch and [model] factory (imported
    here, and only because a flag or the config names it)."""
    factory = settings.model.factory
    return targets.Target(
        **target.arguments(), model_factory=model_sources.import_factory(factory) if factory is not None else None,
        data_dir=settings.data.data_dir, allow_version_mismatch=settings.model.allow_version_mismatch,
    )  # fmt: skip


def _load_target(checkpoint: Path, target: TargetFlags, settings: SettingsBundle) -> targets.LoadedTarget:
    """The checkpoint's model and training split."""
    loaded = _target(target, settings).at(checkpoint).load()
    if loaded.checkpoint.model_version_overridden:
        cli_render.render_version_override(checkpoint, loaded.checkpoint)
    return loaded


@app.command(
    "train",
    epilog=(
        "Example: llcv train --config configs/digits-smallcnn.toml --checkpoints-dir checkpoints/digits "
        "--log-checkpoints 8\n\n"
        "Resume an interrupted run: llcv train --resume-from-checkpoint checkpoints/digits/step_00000120.pt\n\n"
        "Any torchvision or timm model, randomly initialised: llcv train --model torchvision:resnet18 --dataset cifar10 "
        "--checkpoints-dir checkpoints/tv-resnet18  (or --model timm:vit_tiny_patch16_224 --model-arg patch_size=4, with llcv[timm])\n\n"
        "Your own architecture: llcv train --model-factory mypackage.nets:build --dataset cifar10 --checkpoints-dir checkpoints/mine  "
        "(estimating its checkpoints needs --model-factory again; see docs/api.md, \"Models\")"
    ),
)
@flag_groups
def train_command(config: ConfigOpt = None, *, flags: TrainFlags) -> None:
    """Train a model and save checkpoints on a schedule (step 0, log-spaced, epoch ends, final)."""
    with command_boundary():
        base = training.resumed_settings(flags.resume_from_checkpoint)
        settings = load_settings(("data", "model", "train"), config=config, base=base, overrides=flags.overrides())
        cli_render.show_settings(settings)
        with RichReporter() as reporter:
            result = training.train(settings, reporter)
        cli_render.render_training(result)


@app.command(
    "estimate",
    epilog=(
        "Example: llcv estimate --checkpoint checkpoints/digits/step_00000450.pt --epsilon 1e-4 --gamma 100 "
        "--num-chains 4 --num-draws 200\n\n"
        "With calibrated settings: llcv estimate --checkpoint CKPT --from-calibration results/calibration/step_00000450/recommended.json --json\n\n"
        "A checkpoint of your own architecture (train --model-factory): llcv estimate --checkpoint CKPT --model-factory mypackage.nets:build"
    ),
)
@flag_groups
def estimate_command(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    from_calibration: CalibrationOpt = None,
    *,
    step: StepFlags,
    length: LengthFlags,
    sampler_flags: SamplerFlags,
    device: DeviceOpt = None,
    target: TargetFlags,
    json_output: JsonOpt = False,
) -> None:
    """Estimate the LLC of one checkpoint and print it with its diagnostics."""
    with command_boundary():
        flags = merge(step.overrides(), length.overrides(), sampler_flags.overrides(), target.overrides(), {"estimate": {"device": device}})
        settings = load_settings(("sampler", "estimate", *TARGET_SECTIONS), config=config, calibration=from_calibration, overrides=flags)
        cli_render.show_settings(settings, read=TargetFlags.READ)
        loaded = _load_target(checkpoint, target, settings)
        _quiet_for_json(json_output)
        with RichReporter() as reporter:
            result = sampling.estimate_llc(loaded.model, loaded.dataset, settings.sampler, device=settings.estimate.device, reporter=reporter)
        cli_render.render_estimate(result, checkpoint, json_output)
        if result.llc_mean is None:
            raise typer.Exit(console.EXIT_FAILED)


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
        "llcv estimate-all --checkpoints-dir checkpoints/digits --per-layer --per-class  (see docs/guide.md)\n\n"
        "Per-layer LLCs of any model, blocks two levels down its module tree: "
        "llcv estimate-all --checkpoints-dir checkpoints/tv-vit --per-layer --block-depth 2\n\n"
        "Calibrated once on the run's last checkpoint, then every checkpoint with those settings: "
        "llcv estimate-all --checkpoints-dir checkpoints/digits --calibrate  (see docs/calibration.md)"
    ),
)
@flag_groups
def estimate_all_command(
    checkpoints_dir: Annotated[Path, typer.Option("--checkpoints-dir", help="A training run's checkpoints.", file_okay=False)],
    config: ConfigOpt = None,
    from_calibration: CalibrationOpt = None,
    *,
    options: EstimateFlags,
    budget: BudgetFlags,
    step: StepFlags,
    length: LengthFlags,
    sampler_flags: SamplerFlags,
    target: TargetFlags,
    json_output: Annotated[bool, typer.Option("--json", help="Print the end summary as JSON on stdout and nothing else.")] = False,
) -> None:
    """Estimate the LLC of every checkpoint of a run: resumable, crash-safe, shareable by workers.

    With --per-layer and/or --per-class, each checkpoint also gets one refined LLC per block or
    class, each in its own result file in the same settings folder as the whole model's.

    With --calibrate, the run is first calibrated once (calibrate auto, within --budget-steps /
    --budget-seconds) on its last checkpoint or --calibrate-on's, and its recommended.json then
    sets the sampler as --from-calibration would; a rerun reuses the calibration.
    """
    with command_boundary():
        flags = merge(options.overrides(), budget.overrides(), step.overrides(), length.overrides(), sampler_flags.overrides(), target.overrides())
        sections = ("sampler", "estimate", "calibrate", *TARGET_SECTIONS)
        # Resolved twice with --calibrate: first the base the calibration starts from, then with the
        # recommended.json it wrote in --from-calibration's place, so that flags still come last.
        settings = load_settings(sections, config=config, overrides=flags)
        what = _target(target, settings)  # a calibration's recommended.json sets [sampler] fields only
        calibrated = None
        if settings.estimate.calibrate:
            estimation.check_calibrate_request(from_calibration, flags["sampler"])
            cli_render.show_settings(settings, read=ESTIMATE_ALL_READ)
            calibrated = _calibrate_run(checkpoints_dir, settings, what, json_output)
            from_calibration = calibrated.recommended_file
        settings = load_settings(sections, config=config, calibration=from_calibration, overrides=flags)
        cli_render.show_settings(settings, read=ESTIMATE_ALL_READ)
        folder = estimation.results_folder(settings.sampler, settings.estimate)
        console.info(f"results: {folder} (settings {folder.name})")
        _quiet_for_json(json_output)
        try:
            with RichReporter() as reporter:
                summary = estimation.estimate_all(
                    checkpoints_dir, settings.sampler, settings.estimate, target=what,
                    calibration=calibrated.settings_entry() if calibrated else None, reporter=reporter,
                )  # fmt: skip
        except (KeyboardInterrupt, console.Terminated) as stop:
            partial = getattr(stop, "estimate_summary", None)  # estimate_all's summary so far
            if partial is not None:
                cli_render.render_estimate_summary(partial, json_output)
            raise
        cli_render.render_estimate_summary(summary, json_output)
        if not summary.ok:
            raise typer.Exit(console.EXIT_FAILED)


def _calibrate_run(
    checkpoints_dir: Path, settings: SettingsBundle, target: targets.Target, json_output: bool
) -> estimation.RunCalibration:
    """estimate-all --calibrate: calibrate the run once, on its reference checkpoint, and say what was chosen."""
    _quiet_for_json(json_output)
    with RichReporter() as reporter:
        calibrated = estimation.calibrate_run(
            checkpoints_dir, settings.sampler, settings.estimate, budget=calibration.auto_budget(settings.calibrate),
            figure_format=settings.calibrate.format, target=target, reporter=reporter,
        )  # fmt: skip
    cli_render.render_run_calibration(calibrated)
    return calibrated


@app.command(
    "plot",
    epilog=(
        "Example: llcv plot --results-dir results/digits --out results/llc_plots/digits.png --log-x --mark-transitions\n\n"
        "Two runs overlaid: llcv plot --results-dir results/seed0 --label 'seed 0' --results-dir results/seed1 --label 'seed 1' --out seeds.pdf\n\n"
        "Per-block or per-class results (estimate-all --per-layer / --per-class) get their own panels: "
        "llcv plot --results-dir results/digits --out blocks.png --per-parameter"
    ),
)
@flag_groups
def plot_command(
    results_dir: RunsDirOpt = None,
    label: RunLabelOpt = None,
    *,
    figure: PlotFlags,
    settings_hash: RunSettingsOpt = None,
    config: ConfigOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the figure's path and, per run, its settings hash, record count, missing checkpoints and candidate transitions as JSON on stdout, and nothing else.")] = False,
) -> None:
    """Plot the LLC over training, with loss and accuracy below, for one or several runs."""
    with command_boundary():
        settings = load_settings(("plot", "estimate"), config=config, overrides=figure.overrides())
        cli_render.show_settings(settings, read=RESULTS_READ)
        _quiet_for_json(json_output)
        folders = results_dir or [settings.estimate.results_dir]  # the flag, else [estimate] results_dir (config, default)
        result = figures.plot_runs(folders, settings.plot, labels=label, settings_hash=settings_hash)
        if json_output:
            cli_render.emit_json(result.to_dict())
        else:
            cli_render.render_plot(result, settings.plot.mark_transitions)


@app.command(
    "report",
    epilog=(
        "Example: llcv report --results-dir results/llc_estimations --calibration results/calibration --out results/report.html --log-x\n\n"
        "Two runs side by side: llcv report --results-dir results/seed0 --label 'seed 0' --results-dir results/seed1 "
        "--label 'seed 1' --out results/seeds.html"
    ),
)
@flag_groups
def report_command(
    results_dir: RunsDirOpt = None,
    label: RunLabelOpt = None,
    calibration_dir: Annotated[Optional[Path], typer.Option("--calibration", "--calibration-dir", help="A calibrate auto or sweep folder, or the folder above several (default: the 'calibration' folders beside and inside the results, left out if absent).", file_okay=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="The HTML page to write.", dir_okay=False)] = Path("results/report.html"),
    settings_hash: RunSettingsOpt = None,
    *,
    axes: AxesFlags,
    config: ConfigOpt = None,
) -> None:
    """Write one self-contained HTML page on a run: figure, every checkpoint, calibration, chains, provenance."""
    with command_boundary():
        settings = load_settings(("plot", "estimate"), config=config, overrides=axes.overrides())
        cli_render.show_settings(settings, read=RESULTS_READ)
        folders = results_dir or [settings.estimate.results_dir]  # the flag, else [estimate] results_dir (config, default)
        with RichReporter() as reporter:
            result = figures.write_report(
                folders, out, labels=label, settings_hash=settings_hash, calibration_dir=calibration_dir, plot=settings.plot, reporter=reporter
            )
        cli_render.render_report(result, calibration_dir)


# `llcv calibrate auto | sweep | curve | chains`: pick SGLD settings by a stated rule (docs/calibration.md).
calibrate = typer.Typer(
    help=(
        "Choose SGLD settings for a checkpoint: search them automatically within a budget, sweep a grid of "
        "(epsilon, gamma, nbeta), inspect one LLC curve, compare several chains. Outputs go to <results-dir>/<checkpoint-stem>/.\n\n"
        "Example: llcv calibrate auto --checkpoint checkpoints/digits/step_00000036.pt"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(calibrate, name="calibrate")


def _calibration_start(
    checkpoint: Path, config: Path | None, from_calibration: Path | None, flags: dict, target: TargetFlags, json_output: bool,
    defaults: dict | None = None,
) -> tuple[SettingsBundle, targets.LoadedTarget, Path]:
    """What every calibrate command does first: resolve and show its settings, load the checkpoint, name the output folder.

    Returns:
        The settings (``sampler``, ``calibrate``, ``data``, ``model``), the loaded target and
        ``<results-dir>/<checkpoint-stem>/``.
    """
    settings = load_settings(
        ("sampler", "calibrate", *TARGET_SECTIONS), config=config, calibration=from_calibration, base=defaults, overrides=flags
    )
    cli_render.show_settings(settings, read=TargetFlags.READ)
    loaded = _load_target(checkpoint, target, settings)
    _quiet_for_json(json_output)
    return settings, loaded, calibration.output_dir(settings.calibrate.results_dir, checkpoint)


@calibrate.command(
    "auto",
    epilog=(
        "Example: llcv calibrate auto --checkpoint checkpoints/digits/step_00000036.pt --budget-steps 200000\n\n"
        "Then: llcv estimate-all --checkpoints-dir checkpoints/digits "
        "--from-calibration results/calibration/step_00000036/recommended.json  "
        "(or, in one command for a whole run: llcv estimate-all --checkpoints-dir checkpoints/digits --calibrate)"
    ),
)
@flag_groups
def calibrate_auto_command(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    *,
    temperature: TemperatureFlags,
    budget: BudgetFlags,
    sampler_flags: SamplerFlags,
    output: CalibrateOutputFlags,
    target: TargetFlags,
    json_output: JsonOpt = False,
) -> None:
    """Find epsilon, gamma and the burn-in by short trial estimates within a budget, and measure how the pick's LLC depends on them.

    Every trial runs 4 chains on the [sampler] settings (batch size, nbeta, samples, sampler,
    seed, ...); the search halves epsilon and gamma while that moves the LLC by more than its
    noise. The pick's sensitivity (halving gamma, halving epsilon, doubling the batch) is
    printed with a verdict per knob. recommended.json carries the decided sampler fields;
    calibration.json keeps every trial, so an interrupted run resumes.
    """
    with command_boundary():
        flags = merge(temperature.overrides(), budget.overrides(), sampler_flags.overrides(), output.overrides(), target.overrides())
        settings, loaded, out = _calibration_start(checkpoint, config, None, flags, target, json_output)
        options = settings.calibrate
        with RichReporter() as reporter:
            result = calibration.calibrate_and_save(
                out, loaded, device=options.device, base=settings.sampler, budget=calibration.auto_budget(options), figure_format=options.format,
                reporter=reporter,
            )  # fmt: skip
        cli_render.render_auto_outcome(result, checkpoint, out, json_output)
        if result.recommended is None:
            raise typer.Exit(console.EXIT_FAILED)


@calibrate.command(
    "sweep",
    epilog=(
        "Example: llcv calibrate sweep --checkpoint checkpoints/digits/step_00000036.pt "
        "--epsilons 1e-6:1e-3:4 --gammas 1,100,10000 --num-draws 200\n\n"
        "Then: llcv estimate --checkpoint checkpoints/digits/step_00000036.pt "
        "--from-calibration results/calibration/step_00000036/recommended.json"
    ),
)
@flag_groups
def calibrate_sweep_command(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    *,
    grid: GridFlags,
    length: SweepLengthFlags,
    sampler_flags: SamplerFlags,
    output: CalibrateOutputFlags,
    target: TargetFlags,
    json_output: JsonOpt = False,
) -> None:
    """Estimate the LLC over a grid of (epsilon, gamma, nbeta) and recommend one by the rule.

    --num-chains, --num-draws and --num-burnin-steps set [calibrate]: what each grid point runs
    (default 2 chains of 200 draws, each row burning in until its chains have relaxed from the
    checkpoint, 2/(epsilon*gamma) steps, where that is at most 4 times the draws: a row that needs
    more cannot qualify and runs without); everything else comes from [sampler].
    recommended.json carries the pick's burn-in with its epsilon, gamma and nbeta.
    """
    with command_boundary():
        flags = merge(grid.overrides(), length.overrides(), sampler_flags.overrides(), output.overrides(), target.overrides())
        settings, loaded, out = _calibration_start(checkpoint, config, None, flags, target, json_output)
        options = settings.calibrate
        with RichReporter() as reporter:
            result = calibration.calibrate_sweep(
                loaded.model, loaded.dataset, calibration.SweepGrid.from_settings(options),
                base=calibration.sweep_base(settings.sampler, options), device=options.device,
                sweep_file=out / "sweep.json", checkpoint=str(checkpoint), reporter=reporter,
            )  # fmt: skip
        calibration.save_sweep(result, out, options.format)
        cli_render.render_sweep_outcome(result, checkpoint, out, json_output)
        if result.recommended is None:
            raise typer.Exit(console.EXIT_FAILED)


@calibrate.command(
    "curve",
    epilog=(
        "Example: llcv calibrate curve --checkpoint checkpoints/digits/step_00000036.pt --epsilon 1e-4 --gamma 100 "
        "--num-draws 400 --num-burnin-steps 100\n\n"
        "With the sweep's pick: llcv calibrate curve --checkpoint CKPT --from-calibration results/calibration/step_00000036/recommended.json"
    ),
)
@flag_groups
def calibrate_curve_command(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    from_calibration: CalibrationOpt = None,
    *,
    step: StepFlags,
    draws: DrawFlags,
    sampler_flags: SamplerFlags,
    output: CalibrateOutputFlags,
    target: TargetFlags,
    json_output: JsonOpt = False,
) -> None:
    """Run one chain and judge its LLC-over-steps curve: stable, peaks or drift.

    Measures MALA acceptance unless --no-mala (or [sampler] mala = false) says otherwise.
    """
    with command_boundary():
        flags = merge(step.overrides(), draws.overrides(), sampler_flags.overrides(), output.overrides(), target.overrides())
        settings, loaded, out = _calibration_start(checkpoint, config, from_calibration, flags, target, json_output, CURVE_DEFAULTS)
        options = settings.calibrate
        with RichReporter() as reporter:
            curve = calibration.calibrate_curve(
                loaded.model, loaded.dataset, settings.sampler, device=options.device,
                max_trace_drift=options.max_trace_drift, checkpoint=str(checkpoint), reporter=reporter,
            )  # fmt: skip
        calibration.save_curve(curve, out, options.format)
        cli_render.render_curve(curve, out, options.format, json_output)
        if curve.verdict == "diverged":
            raise typer.Exit(console.EXIT_FAILED)


@calibrate.command(
    "chains",
    epilog=(
        "Example: llcv calibrate chains --checkpoint checkpoints/digits/step_00000036.pt --epsilon 1e-4 --gamma 100 --num-chains 5\n\n"
        "With the sweep's pick: llcv calibrate chains --checkpoint CKPT --from-calibration results/calibration/step_00000036/recommended.json"
    ),
)
@flag_groups
def calibrate_chains_command(
    checkpoint: CheckpointOpt,
    config: ConfigOpt = None,
    from_calibration: CalibrationOpt = None,
    *,
    step: StepFlags,
    length: LengthFlags,
    sampler_flags: SamplerFlags,
    output: CalibrateOutputFlags,
    target: TargetFlags,
    json_output: JsonOpt = False,
) -> None:
    """Run several chains; show each one's running LLC, their mean and spread, R-hat, ESS and MALA acceptance.

    Runs 5 chains unless --num-chains (or [sampler] num_chains) says otherwise, and measures MALA
    acceptance unless --no-mala (or [sampler] mala = false) does.
    """
    with command_boundary():
        flags = merge(step.overrides(), length.overrides(), sampler_flags.overrides(), output.overrides(), target.overrides())
        settings, loaded, out = _calibration_start(checkpoint, config, from_calibration, flags, target, json_output, CHAINS_DEFAULTS)
        options = settings.calibrate
        with RichReporter() as reporter:
            chains = calibration.calibrate_chains(
                loaded.model, loaded.dataset, settings.sampler, device=options.device, checkpoint=str(checkpoint), reporter=reporter
            )
        calibration.save_chains(chains, out, options.format)
        title = f"{settings.sampler.num_chains} chains on {checkpoint.name}"
        cli_render.render_chains(chains, title, out, options.format, json_output)
        if chains.llc_mean is None:
            raise typer.Exit(console.EXIT_FAILED)


@app.command(
    "selftest",
    epilog="Example: llcv selftest --quick\n\nFull size on a GPU: llcv selftest --device cuda\n\n"
    "Generated suites, errors per family: llcv selftest --families dln,rrr,polynomial,classifier --per-family 8 --seed 1\n\n"
    "The automatic calibration on them, with each sampler: llcv selftest --auto --families all --per-family 5 --sampler sgld\n\n"
    "At 10^4 and 10^5 weights: llcv selftest --auto --scale --batch-size 256\n\n"
    "Side by side with devinterp 1.3 (pip install 'llcv[reference]'): llcv selftest --against devinterp",
)
def selftest_command(
    device: DeviceOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="CI size: fewer draws; goal is the truth within 3 standard errors.")] = False,
    precision: Annotated[str, typer.Option("--precision", help="fp32 | bf16 (forward/backward under bf16 autocast) | auto (the faster, timed on each case); fp32 is what the known values validate.")] = "fp32",
    auto: Annotated[bool, typer.Option("--auto", help="Also calibrate each case with calibrate auto (full batches, the case's nbeta) and judge that estimate; both are shown.")] = False,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="With --auto: sgld | rmsprop_sgld, the sampler the calibration and its estimate use (default: [sampler]'s default).")] = None,
    budget_steps: Annotated[int, typer.Option("--budget-steps", min=1, help="With --auto: chain-steps each case's calibration may spend.")] = DEFAULT_BUDGET_STEPS,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="With --auto: the minibatch the calibration and its estimate sample with (default: full batches; e.g. 256 for --scale).")] = None,
    against: Annotated[Optional[str], typer.Option("--against", help="devinterp: also run each case through devinterp 1.3's sampler at the same settings and show both (time, error); needs llcv[reference].")] = None,
    families: Annotated[Optional[str], typer.Option("--families", help="Instead of the hand-listed cases, cases drawn at random shapes from --seed: a comma-separated list of dln, rrr, polynomial, classifier, or all. Generated cases run at their builders' uncalibrated rules of thumb.")] = None,
    per_family: Annotated[int, typer.Option("--per-family", min=1, help="With --families: cases drawn per family.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="With --families or --scale: the seed every shape, rank and dataset is drawn from; the same seed gives the same cases.")] = 0,
    scale: Annotated[bool, typer.Option("--scale", help="Add deep linear networks of about 10^4 and 10^5 weights (for a GPU: tens of minutes on a CPU); alone, run only those.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Estimate models with known learning coefficients and print true vs estimated values, and the errors per family."""
    with command_boundary():
        settings = load_settings(
            ("sampler", "estimate"), overrides={"sampler": {"precision": precision, "sampler": sampler}, "estimate": {"device": device}}
        )
        cli_render.show_settings(settings)
        _quiet_for_json(json_output)
        check = selftest.AutoCheck(settings.sampler.sampler, Budget(chain_steps=budget_steps), batch_size) if auto else None
        with RichReporter() as reporter:
            rows = selftest.run_selftest(
                suite=selftest.Suite(quick, families, per_family, seed, scale), device=settings.estimate.device,
                precision=settings.sampler.precision, reporter=reporter, auto=check, against=against,
            )  # fmt: skip
        cli_render.render_selftest(rows, quick, check, against, json_output, families=selftest.family_summary(rows))
        if not all(row.passed for row in rows):
            raise typer.Exit(console.EXIT_FAILED)


@app.command(
    "demo",
    epilog="Example: llcv demo\n\nElsewhere, on a GPU: llcv demo --results-dir results/my-demo --device cuda",
)
def demo_command(
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where every output of the demo goes.", file_okay=False)] = Path("results/demo"),
    device: DeviceOpt = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="A seconds-long run of the same pipeline, for CI.")] = False,
) -> None:
    """Train on the embedded digits data, calibrate, estimate the LLC at every checkpoint, plot it."""
    with command_boundary():
        settings = load_settings(("estimate",), overrides={"estimate": {"device": device}})
        cli_render.show_settings(settings)
        with RichReporter() as reporter:
            result = demo.run_demo(results_dir, device=settings.estimate.device, tiny=tiny, reporter=reporter)
        cli_render.render_demo(result)


def main() -> None:
    """Console-script entry point."""
    app()
