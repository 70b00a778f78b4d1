"""Exit codes (docs/conventions.md) for every command: 0, 1, 2, 130 and 143.

Each command runs through typer's CliRunner with its library entry point replaced: a fake that
succeeds, one that fails the work, one that raises Ctrl-C's KeyboardInterrupt or the
``Terminated`` a SIGTERM raises. Bad flags exit 2 before the library is reached. Real signals
sent to real processes are in tests/test_reliability.py; the mapping itself is checked on
``console.command_boundary`` here.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from _helpers import fake_record, use_steady_trials
from llcv import LLCResult, SamplerSettings, cli_render, console, estimate_llc
from llcv.checkpoints import CheckpointInfo, ModelSpec
from llcv.cli import app
from llcv.health import trace_evidence
from llcv.figures.report import ReportResult
from llcv.errors import CheckpointError, DataError, EstimationError, LLCVError, SettingsError
from llcv.estimation.run import EstimateSummary
from llcv.fileio import WriteError
from llcv.results.records import RecordError
from llcv.results import ResultsStore
from llcv.figures.runs import PlotResult
from llcv.sampling import nbeta_rule, resolve_burnin
from llcv.selftest import SelftestRow
from llcv.training import TrainResult

runner = CliRunner()
DISK_FULL = "could not write x.json: No space left on device; any previous version of it is intact"


pytestmark = pytest.mark.usefixtures("isolated_cli")


@pytest.fixture(scope="module")
def template() -> LLCResult:
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    return estimate_llc(nn.Linear(2, 1), data, SamplerSettings(num_chains=1, num_draws=4), loss="mse", device="cpu")


def steady(template: LLCResult, settings: SamplerSettings, healthy: bool = True) -> LLCResult:
    """An LLCResult shaped by ``settings``: a steady LLC near 5 with MALA 0.95, or every chain diverged."""
    chains, draws = settings.num_chains, settings.num_draws
    trace = 5.0 + 0.01 * np.random.default_rng(0).standard_normal((chains, draws))
    burnin = resolve_burnin(settings)
    return template.model_copy(
        update={
            "llc_mean": float(trace.mean()) if healthy else None,
            "llc_std": float(trace.mean(axis=1).std(ddof=1)) if healthy and chains > 1 else None,
            "llc_per_chain": [float(value) if healthy else None for value in trace.mean(axis=1)],
            "llc_trace": trace.tolist(),
            "loss_trace": (trace / 10.0).tolist(),
            "burnin_loss_trace": [[0.0] * burnin.steps for _ in range(chains)],
            "burnin_steps": burnin.steps,
            "burnin_rule": burnin.rule,
            "init_loss": 0.0,
            "nbeta": 10.0 if isinstance(settings.nbeta, str) else settings.nbeta,  # a rule: 10 stands for what it resolves to
            "nbeta_rule": nbeta_rule(settings.nbeta),
            "mala_acceptance": 0.95 if healthy else None,
            "mala_acceptance_per_chain": [0.95 if healthy else None] * chains,
            "diagnostics": template.diagnostics.model_copy(
                update={
                    "r_hat": 1.0 if chains > 1 else None, "ess": float(chains * draws), "diverged_chains": 0 if healthy else chains,
                    **trace_evidence(trace, np.full(chains, healthy)),
                }
            ),
            "settings": settings.model_dump(mode="json"),
        }
    )


class Command:
    """One command line, how to make its library calls succeed, and the call that failures come from."""

    def __init__(self, name, args, entry, succeed, natural_failure=None):
        self.name, self.args, self.entry, self.succeed, self.natural_failure = name, args, entry, succeed, natural_failure


def _tiny_target(target):
    torch.manual_seed(0)
    info = CheckpointInfo(path=str(target.checkpoint), format="state_dict", model=ModelSpec(name="Linear", num_classes=3, in_channels=None))
    return SimpleNamespace(model=nn.Linear(2, 3), dataset=TensorDataset(torch.randn(32, 2), torch.randint(3, (32,))), checkpoint=info)


def _fake_estimate(template, healthy=True):
    def estimate(model, data, settings, loss="cross_entropy", device="auto", reporter=None):
        return steady(template, settings, healthy)

    return estimate


def _commands(tmp: Path, template: LLCResult) -> dict[str, Command]:
    from llcv import calibration

    checkpoint = tmp / "step_00000001.pt"
    checkpoint.write_bytes(b"never read: Target.load is replaced")
    results = tmp / "results"
    store = ResultsStore(results, "abcdef012345")
    store.write_settings(SamplerSettings())
    store.write_record(fake_record(checkpoint, 1, 2.0, settings_hash="abcdef012345"))

    def calibrate_fakes(mp, healthy=True):
        mp.setattr("llcv.targets.Target.load", _tiny_target)
        mp.setattr("llcv.sampling.estimate_llc", _fake_estimate(template, healthy))
        for save in ("save_sweep", "save_curve", "save_chains"):
            mp.setattr(calibration, save, lambda *args, **kwargs: [])

    def estimate_fakes(mp, healthy=True):
        mp.setattr("llcv.targets.Target.load", _tiny_target)
        mp.setattr("llcv.sampling.estimate_llc", _fake_estimate(template, healthy))

    def summary(failed: bool):
        def fake(checkpoints_dir, sampler, options, **kwargs):
            return EstimateSummary(
                settings_hash="abc", folder=Path(options.results_dir) / "abc", selected=["a"], computed=[] if failed else ["a"],
                failed={"a": "every chain diverged"} if failed else {},
            )  # fmt: skip

        return fake

    def selftest_rows(passed: bool):
        row = SelftestRow("case", "a known case", 1.0, 1.0 if passed else 3.0, 0.1, 0.1, 0.0 if passed else 2.0, passed, 0.1)
        return lambda **kwargs: [row]

    def auto_fakes(mp, level=5.0):
        mp.setattr("llcv.targets.Target.load", _tiny_target)
        use_steady_trials(mp, level=lambda settings: level)  # below 0: every trial escapes, and no settings are found

    calibrate_args = ["--checkpoint", str(checkpoint), "--device", "cpu", "--num-draws", "8", "--results-dir", str(tmp / "cal")]
    commands = [
        Command(
            "train", ["train", "--dataset", "synthetic", "--device", "cpu", "--checkpoints-dir", str(tmp / "ckpts")], "llcv.training.train",
            lambda mp: mp.setattr("llcv.training.train", lambda settings, reporter=None: TrainResult(tmp / "ckpts", [], 8, 8, {"val_loss": 0.5, "val_acc": 0.9})),
        ),
        Command(
            "estimate", ["estimate", "--checkpoint", str(checkpoint), "--device", "cpu"], "llcv.sampling.estimate_llc",
            estimate_fakes, lambda mp: estimate_fakes(mp, healthy=False),
        ),
        Command(
            "estimate-all", ["estimate-all", "--checkpoints-dir", str(tmp), "--results-dir", str(tmp / "r"), "--device", "cpu"],
            "llcv.estimation.estimate_all",
            lambda mp: mp.setattr("llcv.estimation.estimate_all", summary(False)),
            lambda mp: mp.setattr("llcv.estimation.estimate_all", summary(True)),
        ),
        Command(
            "plot", ["plot", "--results-dir", str(results), "--out", str(tmp / "llc.png")], "llcv.figures.plot_runs",
            lambda mp: mp.setattr("llcv.figures.plot_runs", lambda *args, **kwargs: PlotResult(tmp / "llc.png", [])),
        ),
        Command(
            "report", ["report", "--results-dir", str(results), "--out", str(tmp / "report.html")], "llcv.figures.write_report",
            lambda mp: mp.setattr("llcv.figures.write_report", lambda *args, **kwargs: ReportResult(tmp / "report.html", 1000, [])),
        ),
        Command(
            "calibrate-sweep", ["calibrate", "sweep", *calibrate_args, "--epsilons", "1e-5,1e-4", "--gammas", "10000"],
            "llcv.calibration.calibrate_sweep", calibrate_fakes, lambda mp: calibrate_fakes(mp, healthy=False),
        ),
        Command(
            "calibrate-auto", ["calibrate", "auto", *calibrate_args[:4], "--results-dir", str(tmp / "cal"), "--budget-steps", "1200"],
            "llcv.calibration.calibrate_and_save", auto_fakes, lambda mp: auto_fakes(mp, level=-5.0),
        ),
        Command(
            "calibrate-curve", ["calibrate", "curve", *calibrate_args], "llcv.calibration.calibrate_curve",
            calibrate_fakes, lambda mp: calibrate_fakes(mp, healthy=False),
        ),
        Command(
            "calibrate-chains", ["calibrate", "chains", *calibrate_args, "--num-chains", "3"], "llcv.calibration.calibrate_chains",
            calibrate_fakes, lambda mp: calibrate_fakes(mp, healthy=False),
        ),
        Command(
            "selftest", ["selftest", "--quick", "--device", "cpu"], "llcv.selftest.run_selftest",
            lambda mp: mp.setattr("llcv.selftest.run_selftest", selftest_rows(True)),
            lambda mp: mp.setattr("llcv.selftest.run_selftest", selftest_rows(False)),
        ),
    ]
    if "demo" in typer.main.get_command(app).commands:
        commands.append(
            Command(
                "demo", ["demo", "--results-dir", str(tmp / "demo"), "--device", "cpu", "--tiny"], "llcv.demo.run_demo",
                lambda mp: (mp.setattr("llcv.demo.run_demo", lambda *args, **kwargs: SimpleNamespace()),
                            mp.setattr(cli_render, "render_demo", lambda result: None)),
            )  # fmt: skip
        )
    return {command.name: command for command in commands}


COMMANDS = [
    "train", "estimate", "estimate-all", "plot", "report", "calibrate-sweep", "calibrate-auto", "calibrate-curve", "calibrate-chains",
    "selftest", "demo",
]  # fmt: skip


@pytest.fixture
def command(request, tmp_path, template, monkeypatch) -> Command:
    commands = _commands(tmp_path, template)
    if request.param not in commands:
        pytest.skip(f"llcv has no {request.param} command in this checkout")
    chosen = commands[request.param]
    chosen.succeed(monkeypatch)
    return chosen


def _raising(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


def _invoke(args: list[str]):
    result = runner.invoke(app, args)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_every_command_is_in_the_exit_code_table():
    names = set()
    for name, command in typer.main.get_command(app).commands.items():
        subcommands = getattr(command, "commands", None)
        names |= {f"{name}-{sub}" for sub in subcommands} if subcommands else {name}
    assert names <= set(COMMANDS), f"add {sorted(names - set(COMMANDS))} to COMMANDS"


@pytest.mark.parametrize("command", COMMANDS, indirect=True)
def test_exit_0_on_success(command):
    result = _invoke(command.args)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", COMMANDS, indirect=True)
def test_exit_1_when_a_file_cannot_be_written(command, monkeypatch):
    monkeypatch.setattr(command.entry, _raising(WriteError(DISK_FULL)))
    result = _invoke(command.args)
    assert result.exit_code == 1, result.output
    assert "No space left on device" in " ".join(result.output.split())


@pytest.mark.parametrize("command", COMMANDS, indirect=True)
def test_exit_1_when_the_work_fails(command, monkeypatch):
    if command.natural_failure is None:
        monkeypatch.setattr(command.entry, _raising(EstimationError("every chain diverged")))
    else:
        command.natural_failure(monkeypatch)
    result = _invoke(command.args)
    assert result.exit_code == 1, result.output


@pytest.mark.parametrize("command", COMMANDS, indirect=True)
@pytest.mark.parametrize("flags", [["--device", "tpu"], ["--no-such-flag"]], ids=["bad-value", "unknown-flag"])
def test_exit_2_on_bad_usage(command, flags, monkeypatch):
    monkeypatch.setattr(command.entry, _raising(AssertionError("bad usage must stop before the library")))
    if command.name in ("plot", "report") and flags[0] == "--device":
        flags = ["--x", "time"]  # plot and report have no --device
    result = _invoke([*command.args, *flags])
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("command", COMMANDS, indirect=True)
@pytest.mark.parametrize(
    "interruption, code, message",
    [(KeyboardInterrupt(), 130, "interrupted"), (console.Terminated(), 143, "terminated (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
def test_exit_130_on_ctrl_c_and_143_on_sigterm(command, interruption, code, message, monkeypatch):
    monkeypatch.setattr(command.entry, _raising(interruption))
    result = _invoke(command.args)
    assert result.exit_code == code, result.output
    assert message in result.output and "rerun the same command to continue" in " ".join(result.output.split())


# --- the mapping itself


@pytest.mark.parametrize(
    "error, code",
    [(SettingsError("s"), 2), (DataError("d"), 2), (CheckpointError("c"), 2), (RecordError("r"), 2), (EstimationError("e"), 1), (WriteError("w"), 1),
     (LLCVError("l"), 1)],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_command_boundary_maps_each_user_error_to_its_code_and_one_line(error, code, capsys):
    with pytest.raises(SystemExit) as raised:
        with console.command_boundary():
            raise error
    assert raised.value.code == code
    assert capsys.readouterr().err.strip() == f"error: {error}"


def test_command_boundary_prints_square_brackets_as_written(capsys, tmp_path):
    """Messages name settings sections ([data], [model]); Rich markup must not delete them."""
    message = "[data] data_dir: set it under [data] [bold]"
    with pytest.raises(SystemExit):
        with console.command_boundary():
            raise SettingsError(message)
    assert capsys.readouterr().err.strip() == f"error: {message}"
    config = tmp_path / "experiment.toml"
    config.write_text("data = 3\n")
    result = _invoke(["estimate-all", "--checkpoints-dir", str(tmp_path), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "[data] must be a table of settings" in " ".join(result.output.split())


def test_command_boundary_maps_interruptions_and_restores_the_sigterm_handler():
    before = signal.getsignal(signal.SIGTERM)
    for interruption, code in ((KeyboardInterrupt(), 130), (console.Terminated(), 143)):
        with pytest.raises(SystemExit) as raised:
            with console.command_boundary():
                raise interruption
        assert raised.value.code == code
    with pytest.raises(SystemExit) as raised:
        with console.command_boundary():
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled in this (the main) thread
            time.sleep(5)  # the handler interrupts this at once
    assert raised.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before


class _SignalsFromAFinalizer:
    """Garbage whose finalizer sends ``how`` to this process and runs Python code, where the handler then runs."""

    def __init__(self, how: signal.Signals):
        self.how, self.cycle = how, self  # a cycle: only the garbage collector finalizes it

    def __del__(self):
        os.kill(os.getpid(), self.how)
        sum(range(10_000))  # bytecodes: the handler runs in here, and its exception is swallowed


@pytest.mark.parametrize("how, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stop_swallowed_by_a_finalizer_is_raised_again_at_the_next_progress_event(how, code):
    """A signal handled inside a __del__ is lost to Python ("Exception ignored"): the command would run to its end."""
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(SystemExit) as raised:
            with console.command_boundary(), console.RichReporter() as reporter:
                reporter.start("chain", "chain", 3)
                _SignalsFromAFinalizer(how)
                gc.collect()
                reached.append("after the swallowed stop")  # as Python itself leaves it: the command goes on
                reporter.advance("chain")
                reached.append("after the next progress event")
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    assert raised.value.code == code
    assert reached == ["after the swallowed stop"]


def test_other_unraisable_errors_still_reach_the_previous_hook(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_type))

    class Broken:
        def __del__(self):
            raise ValueError("a bug in a finalizer")

    with console.command_boundary():
        Broken()
        gc.collect()
    assert seen == [ValueError]


def test_command_boundary_lets_programming_errors_through():
    """A bug is not a user error: it keeps its traceback instead of becoming exit 1."""
    with pytest.raises(ZeroDivisionError):
        with console.command_boundary():
            1 / 0
