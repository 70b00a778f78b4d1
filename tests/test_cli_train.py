"""Tests for `llcv train` and the app's global options, driven through typer's CliRunner.

Every user mistake must end in one message naming the field or file, exit code 2, and no
traceback. The settings a command resolves are checked by patching `llcv.training.train`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import llcv
from _helpers import without_whitespace
from llcv.checkpoints import checkpoint_name, load_checkpoint
from llcv.cli import app
from llcv.training import TrainResult

from conftest import SHARED_RUN

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("isolated_cli")


def _assert_usage_error(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for text in expected:
        assert without_whitespace(text) in without_whitespace(result.output), f"{text!r} not in {result.output!r}"


@pytest.fixture
def received(monkeypatch):
    """Patch the training entry point; the list collects the settings each call received."""
    calls = []

    def fake_train(settings, reporter=None):
        calls.append(settings)
        return TrainResult(Path(settings.train.checkpoints_dir), [], 0, 1, {"val_loss": 0.5, "val_acc": 0.75})

    monkeypatch.setattr("llcv.training.train", fake_train)
    return calls


# Help and version


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["train", "-h"]])
def test_help_exits_zero_and_shows_an_example(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "llcv train" in result.output


def test_train_help_lists_the_flags():
    output = runner.invoke(app, ["train", "--help"]).output
    for flag in ("--config", "--dataset", "--epochs", "--log-checkpoints", "--checkpoint-every-epochs", "--resume-from-checkpoint"):
        assert flag in output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"llcv {llcv.__version__}"


# Settings reach the library with the documented precedence


def test_train_receives_config_overridden_by_flags(received, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        '[data]\ndataset = "synthetic"\nseed = 3\n'
        '[model]\nname = "resnet18"\nstem = "imagenet"\n'
        "[train]\nepochs = 3\nbatch_size = 32\nlr = 0.2\nlog_checkpoints = 4\n"
        "[sampler]\nepsilon = 1e-3\n"  # another command's section: ignored by train
    )
    result = runner.invoke(
        app,
        ["train", "--config", str(config), "--epochs", "2", "--stem", "cifar", "--device", "cpu",
         "--checkpoints-dir", str(tmp_path / "ckpts"), "--data-seed", "4", "--no-download"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [settings] = received
    assert settings.train.epochs == 2 and settings.model.stem == "cifar" and settings.data.seed == 4  # flags
    assert settings.train.batch_size == 32 and settings.train.lr == 0.2 and settings.train.log_checkpoints == 4  # config
    assert settings.model.name == "resnet18" and settings.data.dataset == "synthetic"  # config
    assert settings.train.momentum == 0.9 and settings.train.checkpoint_every_epochs == 1  # defaults
    assert settings.train.device == "cpu" and settings.train.checkpoints_dir == tmp_path / "ckpts"
    assert settings.data.download is False and settings.train.resume_from_checkpoint is None
    assert settings.sampler is None
    assert "final val loss 0.5000" in result.output


def test_train_without_config_uses_the_defaults(received):
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 0, result.output
    [settings] = received
    assert settings == llcv.load_settings(("data", "model", "train"))


def test_resume_starts_from_the_checkpoints_settings(received, trained_run):
    stored_settings, run = trained_run
    checkpoint = run.checkpoints[4]
    result = runner.invoke(app, ["train", "--resume-from-checkpoint", str(checkpoint)])
    assert result.exit_code == 0, result.output
    [settings] = received
    assert settings.data == stored_settings.data and settings.model == stored_settings.model
    assert settings.train == stored_settings.train.model_copy(update={"resume_from_checkpoint": checkpoint})

    # A flag still wins over what the checkpoint stored.
    runner.invoke(app, ["train", "--resume-from-checkpoint", str(checkpoint), "--epochs", "5"])
    assert received[1].train.epochs == 5 and received[1].train.batch_size == SHARED_RUN["batch_size"]


def test_verbose_prints_the_resolved_settings(received):
    result = runner.invoke(app, ["--verbose", "train", "--dataset", "synthetic", "--epochs", "7"])
    assert result.exit_code == 0, result.output
    assert "resolved settings" in result.output and '"epochs": 7' in result.output


# Every bad input: one message, exit code 2, no traceback


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "unknown-config-key": (lambda tmp: ["--config", _config(tmp, "[train]\nepochz = 3\n")], ["train.epochz", "unknown setting"]),
    "wrong-type": (lambda tmp: ["--config", _config(tmp, '[train]\nepochs = "ten"\n')], ["train.epochs", "'ten'"]),
    "unknown-model": (lambda tmp: ["--model", "vgg11"], ["model.name", "vgg11", "resnet18"]),
    "unknown-dataset": (lambda tmp: ["--dataset", "imagenet21k"], ["data.dataset", "imagenet21k", "synthetic"]),
    "bad-device": (lambda tmp: ["--device", "gpu"], ["train.device", "'gpu'"]),
    "bad-stem": (lambda tmp: ["--stem", "wide"], ["model.stem"]),
    "missing-config": (lambda tmp: ["--config", str(tmp / "missing.toml")], ["missing.toml", "does not exist"]),
    "invalid-toml": (lambda tmp: ["--config", _config(tmp, "[train\nepochs = 3\n")], ["bad.toml", "not valid TOML"]),
    "cifar10-without-data": (lambda tmp: ["--dataset", "cifar10", "--data-dir", str(tmp / "nowhere")], ["CIFAR-10", "nowhere", "data_batch_1"]),
    "negative-epochs": (lambda tmp: ["--epochs", "-1"], ["train.epochs", "greater than 0"]),
    "zero-batch-size": (lambda tmp: ["--batch-size", "0"], ["train.batch_size"]),
    "flag-not-a-number": (lambda tmp: ["--epochs", "ten"], ["--epochs"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_a_message(case, tmp_path):
    make_args, expected = BAD_INPUTS[case]
    result = runner.invoke(app, ["train", "--dataset", "synthetic", "--device", "cpu", *make_args(tmp_path)])
    _assert_usage_error(result, *expected)
    assert not (tmp_path / "checkpoints").exists()


def test_unavailable_gpu_exits_2(tmp_path):
    device = "cuda:99"  # no machine has it: "not available" without CUDA, "does not exist" with
    result = runner.invoke(app, ["train", "--dataset", "synthetic", "--device", device])
    _assert_usage_error(result, device)


@pytest.mark.parametrize("content", [b"hello\n", b"", b"PK\x03\x04 truncated zip"], ids=["text", "empty", "truncated"])
def test_resume_from_a_file_that_is_not_a_checkpoint_exits_2(tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    _assert_usage_error(runner.invoke(app, ["train", "--resume-from-checkpoint", str(path)]), str(path))


def test_resume_from_a_foreign_checkpoint_exits_2(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(llcv.build_model("smallcnn", 4, 3).state_dict(), path)
    result = runner.invoke(app, ["train", "--dataset", "synthetic", "--resume-from-checkpoint", str(path)])
    _assert_usage_error(result, str(path), "only llcv training checkpoints can be resumed")


def test_resume_from_a_missing_checkpoint_exits_2(tmp_path):
    result = runner.invoke(app, ["train", "--resume-from-checkpoint", str(tmp_path / "step_00000001.pt")])
    _assert_usage_error(result, "step_00000001.pt", "does not exist")


# The real thing


def test_train_end_to_end_writes_the_scheduled_checkpoints(tmp_path):
    # 512 images / 128 = 4 steps; round(geomspace(1, 4, 3)) = 1, 2, 4.
    out = tmp_path / "ckpts"
    result = runner.invoke(
        app,
        ["--quiet", "train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "128", "--log-checkpoints", "3",
         "--device", "cpu", "--checkpoints-dir", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == [checkpoint_name(step) for step in (0, 1, 2, 4)]
    model, info = load_checkpoint(out / checkpoint_name(4))
    assert info.step == 4 and info.settings["train"]["epochs"] == 1
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
