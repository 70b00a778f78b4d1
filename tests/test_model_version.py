"""Model versions in checkpoints: written by training, checked on loading, overridable on request.

A registered model that keeps its weights' shapes but changes its function (smallcnn's first
stride once did) bumps its version; a checkpoint of the old version must not load silently.
Tests simulate such a bump by re-registering smallcnn with another version in a copy of the
registry, and use the shared trained run (tiny smallcnn on `synthetic`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _helpers import copy_checkpoints, unwrapped, without_whitespace
from conftest import SHARED_RUN, SHARED_RUN_STEPS, make_train_settings
from llcv import models
from llcv.checkpoints import load_checkpoint, read_checkpoint
from llcv.cli import app
from llcv.errors import CheckpointError, SettingsError
from llcv.models import model_version, register_model
from llcv.results import list_settings, load_results
from llcv.targets import Target

runner = CliRunner()
QUICK = ["--num-chains", "1", "--num-draws", "4", "--batch-size", "32", "--num-samples", "64", "--device", "cpu"]


@pytest.fixture
def bumped(monkeypatch):
    """smallcnn as if its function had changed since the shared run: registered as version 2."""
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # leave the real registry alone
    models._REGISTRY["smallcnn"] = dataclasses.replace(models._REGISTRY["smallcnn"], version=2)
    return 2


@pytest.fixture
def final_checkpoint(trained_run) -> Path:
    return trained_run[1].checkpoints[-1]


def _rewrite(source: Path, destination: Path, **model_changes) -> Path:
    """A copy of ``source`` whose model metadata has ``model_changes`` (a None value removes the key)."""
    payload = read_checkpoint(source)
    model = {**payload["model"], **model_changes}
    payload["model"] = {key: value for key, value in model.items() if value is not None}
    torch.save(payload, destination)
    return destination


# Registration and training


def test_every_built_in_model_declares_version_1():
    for name in ("smallcnn", "resnet18", "resnet34", "resnet50"):
        assert model_version(name) == 1


@pytest.mark.parametrize("version", [0, -1, 1.5, "2", True])
def test_a_version_must_be_a_positive_integer(version):
    with pytest.raises(SettingsError, match="version must be a positive integer"):
        register_model("tiny-bad-version", version=version)


def test_every_checkpoint_of_a_run_records_the_model_version(trained_run):
    for path in trained_run[1].checkpoints:
        assert read_checkpoint(path)["model"]["version"] == model_version("smallcnn") == 1
    _, info = load_checkpoint(trained_run[1].checkpoints[-1])
    assert info.model.version == 1 and info.model_version_overridden is False


# Loading


def test_another_version_is_refused_naming_both_versions_and_the_model(final_checkpoint, bumped):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(final_checkpoint)
    message = str(caught.value)
    assert str(final_checkpoint) in message and "'smallcnn'" in message
    assert "version 1" in message and "version 2" in message
    assert "--allow-model-version-mismatch" in message and "allow_version_mismatch=True" in message


def test_a_recorded_version_the_code_does_not_have_yet_is_refused(final_checkpoint, tmp_path):
    newer = _rewrite(final_checkpoint, tmp_path / "step_00000016.pt", version=7)
    with pytest.raises(CheckpointError, match="version 7.*now version 1"):
        load_checkpoint(newer)


def test_the_override_loads_it_and_says_so(final_checkpoint, bumped):
    model, info = load_checkpoint(final_checkpoint, allow_version_mismatch=True)
    assert info.model.version == 1 and info.model_version_overridden is True
    stored = read_checkpoint(final_checkpoint)["state_dict"]
    assert all(torch.equal(model.state_dict()[key], stored[key]) for key in stored)
    assert Target(final_checkpoint, allow_version_mismatch=True).load().checkpoint.model_version_overridden is True
    with pytest.raises(CheckpointError, match="version 1.*now version 2"):
        Target(final_checkpoint).load()


def test_a_checkpoint_without_a_version_loads_as_the_current_version(final_checkpoint, tmp_path, bumped):
    older = _rewrite(final_checkpoint, tmp_path / "step_00000016.pt", version=None)
    assert "version" not in read_checkpoint(older)["model"]
    _, info = load_checkpoint(older)
    assert info.model.version is None and info.model_version_overridden is False


def test_a_model_given_by_the_caller_is_not_version_checked(final_checkpoint, bumped):
    given = models.build_model("smallcnn", 4, 3)
    loaded, info = load_checkpoint(final_checkpoint, given)
    assert loaded is given and info.model_version_overridden is False


# Resuming training


def test_resuming_another_version_is_refused_unless_allowed(trained_run, tmp_path, bumped):
    from llcv.training import train

    checkpoint = trained_run[1].checkpoints[SHARED_RUN_STEPS.index(8)]
    resumed = dict(SHARED_RUN, resume_from_checkpoint=checkpoint)
    with pytest.raises(CheckpointError, match="version 1.*now version 2"):
        train(make_train_settings(tmp_path / "run", **resumed))
    result = train(make_train_settings(tmp_path / "run", model={"allow_version_mismatch": True}, **resumed))
    assert read_checkpoint(result.checkpoints[-1])["model"]["version"] == 2  # what trained from there on


# The command line


def _assert_usage_error(outcome, *expected: str) -> None:
    assert outcome.exit_code == 2, outcome.output
    assert "Traceback" not in outcome.output and isinstance(outcome.exception, SystemExit)
    assert outcome.output.count("error:") == 1, outcome.output
    for text in expected:
        assert without_whitespace(text) in without_whitespace(outcome.output), f"{text!r} not in {outcome.output!r}"


@pytest.mark.usefixtures("isolated_cli")
def test_estimate_refuses_another_version_with_one_message_and_exit_2(final_checkpoint, bumped):
    outcome = runner.invoke(app, ["estimate", "--checkpoint", str(final_checkpoint), *QUICK])
    _assert_usage_error(outcome, "'smallcnn' version 1", "now version 2", "--allow-model-version-mismatch")


@pytest.mark.usefixtures("isolated_cli")
def test_estimate_with_the_flag_or_the_config_setting_loads_it(final_checkpoint, bumped, tmp_path):
    outcome = runner.invoke(app, ["estimate", "--checkpoint", str(final_checkpoint), *QUICK, "--allow-model-version-mismatch"])
    assert outcome.exit_code == 0, outcome.output
    assert "saved with smallcnn version 1, loaded anyway into version 2" in unwrapped(outcome.output)
    config = tmp_path / "experiment.toml"
    config.write_text("[model]\nallow_version_mismatch = true\n")
    outcome = runner.invoke(app, ["estimate", "--checkpoint", str(final_checkpoint), *QUICK, "--config", str(config), "--json"])
    assert outcome.exit_code == 0, outcome.output


# estimate-all: the mismatch is written into the file (version 2, while smallcnn is registered as 1
# everywhere), so that worker processes, which start with the real registry, see it too.


def _mismatched_folder(final_checkpoint: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return _rewrite(final_checkpoint, folder / final_checkpoint.name, version=2)


@pytest.mark.usefixtures("isolated_cli")
def test_estimate_all_fails_another_versions_checkpoint_naming_both_versions_and_the_flag(final_checkpoint, tmp_path):
    mismatched = _mismatched_folder(final_checkpoint, tmp_path / "checkpoints")
    command = ["estimate-all", "--checkpoints-dir", str(mismatched.parent), "--results-dir", str(tmp_path / "results"), *QUICK]
    outcome = runner.invoke(app, command)
    assert outcome.exit_code == 1 and "Traceback" not in outcome.output, outcome.output
    [record] = load_results(tmp_path / "results")
    assert record.status == "failed" and record.model is None
    expected = ("'smallcnn' version 2", "now version 1", "--allow-model-version-mismatch", "[model] allow_version_mismatch = true")
    for text in expected:
        assert text in record.error, record.error
        assert without_whitespace(text) in without_whitespace(outcome.output), f"{text!r} not in {outcome.output!r}"

    outcome = runner.invoke(app, [*command, "--allow-model-version-mismatch"])  # the rerun retries it
    assert outcome.exit_code == 0, outcome.output
    assert len(list_settings(tmp_path / "results")) == 1  # the flag does not change the settings hash
    [record] = load_results(tmp_path / "results")
    assert record.status == "done"
    assert record.model.to_dict() == {"name": "smallcnn", "version": 1, "checkpoint_version": 2, "version_overridden": True}


@pytest.mark.usefixtures("isolated_cli")
def test_estimate_all_with_the_flag_loads_another_version_in_device_workers(trained_run, final_checkpoint, tmp_path):
    folder = copy_checkpoints(trained_run[1].checkpoints_dir, tmp_path / "checkpoints", steps=[0])
    mismatched = _mismatched_folder(final_checkpoint, folder)
    outcome = runner.invoke(
        app,
        ["estimate-all", "--checkpoints-dir", str(folder), "--results-dir", str(tmp_path / "results"), *QUICK,
         "--devices", "cpu,cpu", "--allow-model-version-mismatch"],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    records = {record.checkpoint: record for record in load_results(tmp_path / "results")}
    assert len(records) == 2
    assert all(record.status == "done" and record.worker.executor == "devices" for record in records.values())
    assert records[mismatched.name].model.to_dict() == {"name": "smallcnn", "version": 1, "checkpoint_version": 2, "version_overridden": True}
    unchanged = next(name for name in records if name != mismatched.name)
    assert records[unchanged].model.to_dict() == {"name": "smallcnn", "version": 1, "checkpoint_version": 1, "version_overridden": False}


@pytest.mark.usefixtures("isolated_cli")
def test_a_resumed_run_does_not_inherit_the_allowance(trained_run, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("llcv.training.train", lambda settings, reporter=None: calls.append(settings) or _no_result(settings))
    payload = read_checkpoint(trained_run[1].checkpoints[4])
    payload["settings"]["model"]["allow_version_mismatch"] = True  # as a run resumed with the flag stores it
    checkpoint = tmp_path / "step_00000005.pt"
    torch.save(payload, checkpoint)
    assert runner.invoke(app, ["train", "--resume-from-checkpoint", str(checkpoint)]).exit_code == 0
    assert calls[-1].model.allow_version_mismatch is False
    assert runner.invoke(app, ["train", "--resume-from-checkpoint", str(checkpoint), "--allow-model-version-mismatch"]).exit_code == 0
    assert calls[-1].model.allow_version_mismatch is True


def _no_result(settings):
    from llcv.training import TrainResult

    return TrainResult(Path(settings.train.checkpoints_dir), [], 0, 1, {"val_loss": 0.5, "val_acc": 0.75})
