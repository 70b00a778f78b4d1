"""Every option of the command line sets the settings field its table names (llcv.cli_options).

The tables are checked on their own (every option mapped once, every field real, flag names
mirror field names except where docs/conventions.md says otherwise), and end to end: each
sampler flag given to `estimate`, `calibrate sweep` and `calibrate chains` arrives in the
settings the library receives, with the library replaced.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import typer
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from _helpers import unwrapped, without_whitespace
from llcv import cli_options
from llcv.calibration import ROW_FIELDS, SweepResult
from llcv.checkpoints import CheckpointInfo, ModelSpec
from llcv.cli import app
from llcv.cli_options import FlagGroup
from llcv.settings import SECTION_MODELS, SamplerSettings

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("isolated_cli")

GROUPS = [value for value in vars(cli_options).values() if isinstance(value, type) and issubclass(value, FlagGroup) and value is not FlagGroup]

# Flags whose name is not their field's (docs/conventions.md, "Flags"): the section is named
# where the bare name would be ambiguous, and `--model` names the architecture.
NAMED_OTHERWISE = {
    "--data-seed": "data.seed", "--allow-model-version-mismatch": "model.allow_version_mismatch", "--model": "model.name",
    "--model-factory": "model.factory", "--model-arg": "model.arguments",
}  # fmt: skip


def _flag(group: type[FlagGroup], name: str) -> str:
    """The option's first flag, ``--mala`` for ``--mala/--no-mala``."""
    hint = typing.get_type_hints(group, include_extras=True)[name]
    (option,) = [item for item in hint.__metadata__ if isinstance(item, typer.models.OptionInfo)]
    declared = [option.default, *(option.param_decls or ())]
    return declared[0].split("/")[0]


def test_the_groups_are_found():
    assert {group.__name__ for group in GROUPS} >= {"SamplerFlags", "StepFlags", "LengthFlags", "SweepLengthFlags", "TargetFlags", "TrainFlags"}


@pytest.mark.parametrize("group", GROUPS, ids=lambda group: group.__name__)
def test_every_option_of_a_group_is_mapped_once_to_a_real_field(group):
    names = {field.name for field in dataclasses.fields(group)}
    assert set(group.SETTINGS) | set(group.ARGUMENTS) == names, "an option without a table entry would be dropped"
    assert not set(group.SETTINGS) & set(group.ARGUMENTS)
    assert set(group.CONVERT) <= set(group.SETTINGS)
    for name, target in group.SETTINGS.items():
        section, field = target.split(".")
        assert field in SECTION_MODELS[section].model_fields, f"{group.__name__}.{name} -> {target}: no such setting"
        flag = _flag(group, name)
        if flag in NAMED_OTHERWISE:
            assert NAMED_OTHERWISE[flag] == target
        else:
            assert flag.removeprefix("--").replace("-", "_") == field, f"{flag} sets {target}"


def test_two_groups_setting_one_field_is_refused():
    with pytest.raises(ValueError, match=r"sampler\.num_burnin_steps is set by two flags"):
        cli_options.merge(cli_options.LengthFlags(num_chains=2).overrides(), cli_options.LengthFlags().overrides())


@dataclasses.dataclass(frozen=True)
class _Forgotten(FlagGroup):
    """A group whose table misses one of its options."""

    epsilon: typing.Optional[float] = None
    gamma: typing.Optional[float] = None

    SETTINGS: typing.ClassVar = {"epsilon": "sampler.epsilon"}


def test_an_option_no_table_maps_is_refused_when_the_command_is_declared():
    def command(*, flags: _Forgotten) -> None: ...

    with pytest.raises(TypeError, match="gamma in neither SETTINGS nor ARGUMENTS"):
        cli_options.flag_groups(command)


TARGET_FIELDS = ("model_name", "stem", "dataset", "data_dir", "allow_version_mismatch")


def _tiny_target(calls: dict):
    def load(target):
        calls["target"] = {field: getattr(target, field) for field in TARGET_FIELDS}
        info = CheckpointInfo(path=str(target.checkpoint), format="state_dict", model=ModelSpec(name="Linear", num_classes=3, in_channels=None))
        return SimpleNamespace(model=nn.Linear(2, 3), dataset=TensorDataset(torch.randn(8, 2), torch.randint(3, (8,))), checkpoint=info)

    return load


@pytest.fixture
def calls(monkeypatch) -> dict:
    """Target.load and the library entry points replaced; each records what it received and stops the command."""
    calls: dict = {}
    monkeypatch.setattr("llcv.targets.Target.load", _tiny_target(calls))

    def stop(name: str):
        def fake(*args, **kwargs):
            calls[name] = (args, kwargs)
            raise typer.Exit(0)

        return fake

    monkeypatch.setattr("llcv.sampling.estimate_llc", stop("estimate_llc"))
    for command in ("sweep", "curve", "chains"):
        monkeypatch.setattr(f"llcv.calibration.calibrate_{command}", stop(command))
    monkeypatch.setattr("llcv.calibration.calibrate_and_save", stop("auto"))
    return calls


# Every [sampler] flag with a value other than its default, and the field it must set.
SAMPLER_FLAGS = {
    "--sampler": ("rmsprop_sgld", "sampler", "rmsprop_sgld"), "--batch-size": ("32", "batch_size", 32),
    "--num-samples": ("6", "num_samples", 6), "--num-steps-bw-draws": ("2", "num_steps_bw_draws", 2),
    "--bn-mode": ("eval", "bn_mode", "eval"), "--bn-stats": ("checkpoint", "bn_stats", "checkpoint"),
    "--bn-samples": ("128", "bn_samples", 128), "--divergence-bound": ("1000", "divergence_bound", 1000.0),
    "--mala-every": ("2", "mala_every", 2), "--seed": ("9", "seed", 9), "--params": ("fc.*", "params", ["fc.*"]),
    "--classes": ("1,2", "classes", [1, 2]),
}  # fmt: skip
STEP_FLAGS = {"--epsilon": ("2e-4", "epsilon", 2e-4), "--gamma": ("50", "gamma", 50.0), "--nbeta": ("7", "nbeta", 7.0)}
LENGTH_FLAGS = {"--num-chains": ("3", "num_chains", 3), "--num-draws": ("11", "num_draws", 11), "--num-burnin-steps": ("5", "num_burnin_steps", 5)}
TARGET_FLAGS = ["--model", "smallcnn", "--stem", "imagenet", "--dataset", "synthetic", "--data-dir", ".", "--allow-model-version-mismatch"]


def _args(*tables: dict) -> list[str]:
    return [item for table in tables for flag, (value, _, _) in table.items() for item in (flag, value)]


def _check(settings: SamplerSettings, *tables: dict) -> None:
    for table in tables:
        for flag, (_, field, expected) in table.items():
            assert getattr(settings, field) == expected, flag


def _check_target(received: dict) -> None:
    """--model, --stem and --dataset go to the Target as they are; --data-dir and the mismatch through [data] and [model]."""
    assert {key: value for key, value in received.items() if key != "data_dir"} == dict(
        model_name="smallcnn", stem="imagenet", dataset="synthetic", allow_version_mismatch=True
    )
    assert Path(received["data_dir"]) == Path(".")


def test_every_sampler_flag_of_estimate_reaches_the_settings(calls, tmp_path):
    args = ["estimate", "--checkpoint", str(tmp_path / "step_00000001.pt"), "--mala", "--device", "cpu", *TARGET_FLAGS]
    result = runner.invoke(app, [*args, *_args(SAMPLER_FLAGS, STEP_FLAGS, LENGTH_FLAGS)])
    assert result.exit_code == 0, result.output
    (model, data, settings), kwargs = calls["estimate_llc"]
    _check(settings, SAMPLER_FLAGS, STEP_FLAGS, LENGTH_FLAGS)
    assert settings.mala is True and kwargs["device"] == "cpu"
    _check_target(calls["target"])


def test_nbeta_and_the_burn_in_flags_take_their_words(calls, tmp_path):
    args = ["estimate", "--checkpoint", str(tmp_path / "step_00000001.pt"), "--device", "cpu"]
    assert runner.invoke(app, [*args, "--nbeta", "batch", "--num-burnin-steps", "auto"]).exit_code == 0
    settings = calls["estimate_llc"][0][2]
    assert (settings.nbeta, settings.num_burnin_steps) == ("batch", "auto")
    assert runner.invoke(app, args).exit_code == 0
    settings = calls["estimate_llc"][0][2]
    assert (settings.nbeta, settings.num_burnin_steps) == ("data", "auto")  # the defaults
    # a sweep's rows each burn in on their own unless given a number: no word there
    sweep = ["calibrate", "sweep", "--checkpoint", str(tmp_path / "step_00000001.pt"), "--device", "cpu", "--num-burnin-steps", "auto"]
    assert runner.invoke(app, sweep).exit_code == 2


def test_calibrate_sweep_budget_flags_set_calibrate_and_the_rest_sampler(calls, tmp_path):
    args = ["calibrate", "sweep", "--checkpoint", str(tmp_path / "step_00000001.pt"), "--epsilons", "1e-5,1e-4", "--gammas", "0,10",
            "--nbetas", "3", "--target-acceptance", "0.8", "--results-dir", str(tmp_path / "cal"), "--format", "svg", "--device", "cpu",
            *TARGET_FLAGS]  # fmt: skip
    result = runner.invoke(app, [*args, *_args(SAMPLER_FLAGS, LENGTH_FLAGS)])
    assert result.exit_code == 0, result.output
    (model, data, grid), kwargs = calls["sweep"]
    assert (grid.epsilons, grid.gammas, grid.nbetas) == ([1e-5, 1e-4], [0.0, 10.0], [3.0])
    assert grid.target_acceptance == 0.8 and kwargs["device"] == "cpu"
    assert grid.relax_burnin is False  # --num-burnin-steps sets every row's burn-in
    _check(kwargs["base"], SAMPLER_FLAGS, LENGTH_FLAGS)  # [calibrate]'s budget, laid over [sampler] by sweep_base
    _check_target(calls["target"])


def test_calibrate_auto_takes_the_sampler_flags_as_its_base_and_its_budget_in_calibrate(calls, tmp_path):
    args = ["calibrate", "auto", "--checkpoint", str(tmp_path / "step_00000001.pt"), "--nbeta", "7", "--budget-steps", "5000",
            "--budget-seconds", "60", "--results-dir", str(tmp_path / "cal"), "--format", "pdf", "--device", "cpu", *TARGET_FLAGS]  # fmt: skip
    result = runner.invoke(app, [*args, *_args(SAMPLER_FLAGS)])
    assert result.exit_code == 0, result.output
    (directory, loaded), kwargs = calls["auto"]
    _check(kwargs["base"], SAMPLER_FLAGS, {"--nbeta": STEP_FLAGS["--nbeta"]})
    assert (kwargs["budget"].chain_steps, kwargs["budget"].seconds) == (5000, 60.0)
    assert loaded.checkpoint.path == str(tmp_path / "step_00000001.pt") and kwargs["device"] == "cpu" and kwargs["figure_format"] == "pdf" and directory == tmp_path / "cal" / "step_00000001"
    _check_target(calls["target"])
    # the search decides the step, the localization and the length
    for flag in ("--epsilon", "--gamma", "--num-draws", "--num-chains", "--num-burnin-steps"):
        assert runner.invoke(app, [*args, flag, "1"]).exit_code == 2, flag


def test_calibrate_chains_runs_5_chains_with_mala_unless_told_otherwise(calls, tmp_path):
    checkpoint = ["--checkpoint", str(tmp_path / "step_00000001.pt"), "--device", "cpu"]
    assert runner.invoke(app, ["calibrate", "chains", *checkpoint]).exit_code == 0
    settings = calls["chains"][0][2]
    assert settings.num_chains == 5 and settings.mala is True

    config = tmp_path / "experiment.toml"
    config.write_text("[sampler]\nnum_chains = 3\nmala = false\n")
    assert runner.invoke(app, ["calibrate", "chains", *checkpoint, "--config", str(config)]).exit_code == 0
    settings = calls["chains"][0][2]
    assert settings.num_chains == 3 and settings.mala is False  # the config is above the command's defaults

    result = runner.invoke(app, ["calibrate", "chains", *checkpoint, "--config", str(config), *_args(SAMPLER_FLAGS, STEP_FLAGS, LENGTH_FLAGS)])
    assert result.exit_code == 0, result.output
    _check(calls["chains"][0][2], SAMPLER_FLAGS, STEP_FLAGS, LENGTH_FLAGS)


def test_calibrate_curve_takes_draws_and_burn_in_but_no_chain_count(calls, tmp_path):
    checkpoint = ["--checkpoint", str(tmp_path / "step_00000001.pt"), "--device", "cpu"]
    draws = {flag: LENGTH_FLAGS[flag] for flag in ("--num-draws", "--num-burnin-steps")}
    result = runner.invoke(app, ["calibrate", "curve", *checkpoint, *_args(SAMPLER_FLAGS, STEP_FLAGS, draws)])
    assert result.exit_code == 0, result.output
    settings = calls["curve"][0][2]
    _check(settings, SAMPLER_FLAGS, STEP_FLAGS, draws)
    assert settings.mala is True
    assert runner.invoke(app, ["calibrate", "curve", *checkpoint, "--num-chains", "3"]).exit_code == 2


def test_a_reason_with_square_brackets_prints_as_written(monkeypatch, tmp_path):
    """The sweep's reason comes from data; Rich markup must neither eat nor style its brackets."""
    monkeypatch.setattr("llcv.targets.Target.load", _tiny_target({}))
    reason = "no combination qualified: [bold]MALA[/bold] below [calibrate] target_acceptance"
    row = dict.fromkeys(ROW_FIELDS) | dict(epsilon=1e-4, gamma=100.0, nbeta=10.0, diverged=False, qualifies=False, reason="[red]x[/red]")
    sweep = SweepResult(rows=[row], traces=[[None]], recommended=None, reason=reason, base=SamplerSettings(), rule={})
    monkeypatch.setattr("llcv.calibration.calibrate_sweep", lambda *args, **kwargs: sweep)
    monkeypatch.setattr("llcv.calibration.save_sweep", lambda *args, **kwargs: [])
    out = tmp_path / "cal [1]"
    args = ["calibrate", "sweep", "--checkpoint", str(tmp_path / "step_00000001.pt"), "--device", "cpu", "--results-dir", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    text = unwrapped(result.output)
    assert f"error: {reason}" in text
    assert "[red]x[/red]" in text
    assert without_whitespace(f"table and figures in {out / 'step_00000001'}") in without_whitespace(result.output)
