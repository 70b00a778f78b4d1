"""Every shipped file in configs/ validates, and opens with a comment showing how to use it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llcv.errors import SettingsError
from llcv.settings import SECTION_MODELS, load_settings, read_config, validate_section
from llcv.training import checkpoint_steps

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.toml"))
REQUIRED_SECTIONS = {"data", "model", "train", "sampler"}


def test_configs_exist():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_config_validates_every_section(path):
    raw = read_config(path)
    assert REQUIRED_SECTIONS <= set(raw), f"{path.name} lacks {REQUIRED_SECTIONS - set(raw)}"
    # A misspelt section, or a key outside any section, would be silently ignored by every command.
    assert set(raw) <= set(SECTION_MODELS), f"{path.name}: unknown sections {set(raw) - set(SECTION_MODELS)}"
    for section, values in raw.items():
        validate_section(section, values)  # raises, naming the field, on an unknown key or a bad value
    load_settings(tuple(raw), config=path)  # and through the one precedence function


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_config_opens_with_a_comment_showing_llcv_commands(path):
    lines = path.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert header, f"{path.name} does not open with a comment"
    commands = [line.lstrip("# ").strip() for line in header if line.lstrip("# ").startswith("llcv ")]
    assert any(command.startswith("llcv train ") for command in commands), f"{path.name}: no `llcv train` example"
    for command in commands:
        configs = re.findall(r"--config (\S+)", command)
        assert configs in ([], [f"configs/{path.name}"]), f"{path.name}: example points at {configs}"


def test_an_unknown_key_in_a_config_fails_validation(tmp_path):
    text = CONFIGS[0].read_text().replace("[train]\n", "[train]\nepochz = 3\n")
    broken = tmp_path / CONFIGS[0].name
    broken.write_text(text)
    with pytest.raises(SettingsError, match=r"train\.epochz: unknown setting"):
        load_settings(("train",), config=broken)


# Training images per dataset: the official splits (digits: llcv's seeded 80% of 1,797).
TRAIN_SIZES = {"digits": 1438, "cifar10": 50_000, "imagenet1k": 1_281_167}
# Examples naming a checkpoint that the config's own training run never writes.


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_example_checkpoints_are_ones_the_config_writes(path):
    settings = load_settings(("data", "train"), config=path)
    if settings.data.dataset not in TRAIN_SIZES:
        pytest.skip(f"train size of {settings.data.dataset} unknown")
    steps_per_epoch = -(-TRAIN_SIZES[settings.data.dataset] // settings.train.batch_size)
    train = settings.train
    schedule = checkpoint_steps(train.epochs * steps_per_epoch, steps_per_epoch, train.log_checkpoints, train.checkpoint_every_epochs)
    named = [int(step) for step in re.findall(r"step_(\d+)\.pt", path.read_text())]
    assert all(step in schedule for step in named), f"{named} not in the schedule ending at {schedule[-1]}"


def test_digits_train_size_matches_the_loader():
    from llcv.data import load_dataset

    assert load_dataset("digits")[2].num_train == TRAIN_SIZES["digits"]
