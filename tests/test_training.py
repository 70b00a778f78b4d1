"""Tests for llcv.training: the checkpoint schedule, the files a run writes, exact resume, data loading."""

from __future__ import annotations

import math
import multiprocessing
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from llcv import training
from llcv.checkpoints import checkpoint_name, list_checkpoints, read_checkpoint, save_checkpoint
from llcv.errors import SettingsError
from llcv.progress import Reporter
from llcv.training import TrainResult, checkpoint_steps, epoch_order, train

from conftest import SHARED_RUN, SHARED_RUN_STEPS


# The schedule


@pytest.mark.parametrize(
    "num_steps, steps_per_epoch, log_checkpoints, every_epochs, expected",
    [
        (16, 8, 0, 0, [0, 16]),  # step 0 and the final step, always
        (16, 8, 8, 1, [0, 1, 2, 3, 5, 7, 8, 11, 16]),  # 1, 1, 2, 3, 5, 7, 11, 16 merged with 8 and 16
        (100, 10, 0, 3, [0, 30, 60, 90, 100]),  # every third epoch, then the final step
        (100, 10, 5, 0, [0, 1, 3, 10, 32, 100]),  # geomspace(1, 100, 5) = 1, 3.16, 10, 31.6, 100
        (10, 5, 20, 0, list(range(11))),  # more log points than steps: every step, once
        (7, 7, 1, 1, [0, 1, 7]),  # geomspace(1, T, 1) is [1]
        (45, 9, 4, 2, [0, 1, 4, 13, 18, 36, 45]),  # 1, 3.6, 12.6, 45; the final step is no multiple of 2 epochs
    ],
)
def test_checkpoint_steps_table(num_steps, steps_per_epoch, log_checkpoints, every_epochs, expected):
    assert checkpoint_steps(num_steps, steps_per_epoch, log_checkpoints, every_epochs) == expected


@pytest.mark.parametrize("num_steps, steps_per_epoch", [(1, 1), (16, 8), (391 * 50, 391), (5005 * 90, 5005)])
@pytest.mark.parametrize("log_checkpoints", [0, 1, 7, 40])
@pytest.mark.parametrize("every_epochs", [0, 1, 5])
def test_checkpoint_steps_is_the_documented_union(num_steps, steps_per_epoch, log_checkpoints, every_epochs):
    expected = {0, num_steps}
    if log_checkpoints:
        expected |= {int(round(value)) for value in np.geomspace(1, num_steps, log_checkpoints)}
    if every_epochs:
        expected |= {epoch * steps_per_epoch for epoch in range(every_epochs, num_steps // steps_per_epoch + 1, every_epochs)}
    steps = checkpoint_steps(num_steps, steps_per_epoch, log_checkpoints, every_epochs)
    assert steps == sorted(expected)
    assert len(steps) == len(set(steps)) and 0 <= steps[0] and steps[-1] == num_steps


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(100, seed=0, epoch=3)
    assert sorted(order.tolist()) == list(range(100))
    assert torch.equal(order, epoch_order(100, seed=0, epoch=3))
    assert not torch.equal(order, epoch_order(100, seed=0, epoch=4))
    assert not torch.equal(order, epoch_order(100, seed=1, epoch=3))


# What a run writes


def test_a_run_writes_exactly_the_scheduled_checkpoints(trained_run):
    settings, result = trained_run
    assert isinstance(result, TrainResult)
    assert (result.num_steps, result.steps_per_epoch) == (16, 8)
    assert checkpoint_steps(16, 8, SHARED_RUN["log_checkpoints"], SHARED_RUN["checkpoint_every_epochs"]) == SHARED_RUN_STEPS
    expected = [checkpoint_name(step) for step in SHARED_RUN_STEPS]
    assert sorted(path.name for path in result.checkpoints_dir.iterdir()) == expected  # nothing else either
    assert [path.name for path in result.checkpoints] == expected
    steps = [read_checkpoint(path)["step"] for path in result.checkpoints]
    assert steps == SHARED_RUN_STEPS


def test_a_run_learns_and_reports_its_final_metrics(trained_run):
    _, result = trained_run
    first = read_checkpoint(result.checkpoints[0])["metrics"]
    last = read_checkpoint(result.checkpoints[-1])["metrics"]
    assert result.final_metrics == last
    assert last["val_loss"] < first["val_loss"]
    assert last["val_acc"] > 0.5  # four classes: chance is 0.25
    assert math.isfinite(last["train_loss"])


def test_partial_last_batch_and_epoch_end_checkpoints(train_settings):
    # 512 images in batches of 96: 6 steps per epoch, the last one of 32 images.
    result = train(train_settings(epochs=3, batch_size=96, checkpoint_every_epochs=2, log_checkpoints=0))
    assert (result.num_steps, result.steps_per_epoch) == (18, 6)
    assert [path.name for path in result.checkpoints] == [checkpoint_name(step) for step in (0, 12, 18)]
    assert read_checkpoint(result.checkpoints[1])["epoch"] == 2.0


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(train_settings):
    first = train(train_settings("a", epochs=1, batch_size=128, checkpoint_every_epochs=0))
    second = train(train_settings("b", epochs=1, batch_size=128, checkpoint_every_epochs=0))
    other = train(train_settings("c", epochs=1, batch_size=128, checkpoint_every_epochs=0, seed=1))
    weights = [read_checkpoint(result.checkpoints[-1])["state_dict"] for result in (first, second, other)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert not torch.equal(weights[0]["conv1.weight"], weights[2]["conv1.weight"])


@pytest.mark.parametrize("optimizer, schedule", [("adamw", "step"), ("sgd", "constant")])
def test_other_optimizers_and_schedules_train(train_settings, optimizer, schedule):
    settings = train_settings(epochs=2, batch_size=128, lr=0.01, optimizer=optimizer, schedule=schedule, step_every_epochs=1, step_factor=0.5)
    result = train(settings)
    final = read_checkpoint(result.checkpoints[-1])
    assert final["step"] == 8
    expected_lr = 0.01 * (0.5**2 if schedule == "step" else 1.0)
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected_lr)


# Resume


class _InterruptAfter(Reporter):
    """Raises KeyboardInterrupt (as Ctrl-C would) once ``num_steps`` training steps are done."""

    def __init__(self, num_steps: int):
        self.num_steps, self.done = num_steps, 0

    def advance(self, key: str, amount: int = 1, **fields: object) -> None:
        if key == "batches":
            self.done += amount
            if self.done >= self.num_steps:
                raise KeyboardInterrupt


def _interrupted_then_resumed(settings, stop_after: int, expected_resume_step: int) -> list:
    """Train until Ctrl-C after ``stop_after`` steps, then resume from the newest checkpoint."""
    with pytest.raises(KeyboardInterrupt):
        train(settings, _InterruptAfter(stop_after))
    directory = settings.train.checkpoints_dir
    latest = list_checkpoints(directory)[-1]
    assert read_checkpoint(latest)["step"] == expected_resume_step
    resumed = settings.model_copy(update={"train": settings.train.model_copy(update={"resume_from_checkpoint": latest})})
    result = train(resumed)
    assert result.checkpoints[0].name > latest.name  # nothing before the resume point is rewritten
    return list_checkpoints(directory)


def _assert_same_state(first_path, second_path) -> None:
    first, second = read_checkpoint(first_path), read_checkpoint(second_path)
    assert first["step"] == second["step"]
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for key in first["state_dict"]:
        assert torch.equal(first["state_dict"][key], second["state_dict"][key]), f"step {first['step']}: {key}"
    for index, state in first["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, second["optimizer"]["state"][index][name]), f"optimizer {index} {name}"
    assert first["scheduler"] == second["scheduler"]
    assert torch.equal(first["rng"]["torch"], second["rng"]["torch"])


@pytest.mark.parametrize(
    "stop_after, resume_step",
    [(4, 3), (13, 11), (9, 8)],
    ids=["mid-first-epoch", "mid-second-epoch", "epoch-end"],
)
def test_resume_equals_an_uninterrupted_run(trained_run, train_settings, stop_after, resume_step):
    _, uninterrupted = trained_run
    files = _interrupted_then_resumed(train_settings(**SHARED_RUN), stop_after, resume_step)
    assert [path.name for path in files] == [path.name for path in uninterrupted.checkpoints]
    for resumed_file, reference_file in zip(files, uninterrupted.checkpoints):
        _assert_same_state(resumed_file, reference_file)  # every checkpoint, the final one included


# 40 CIFAR-format images in batches of 8: 5 steps per epoch, 10 steps; round(geomspace(1, 10, 6)) = 1, 2, 3, 4, 6, 10.
_AUGMENTED_RUN = dict(dataset="cifar10", epochs=2, batch_size=8, log_checkpoints=6, checkpoint_every_epochs=0)


def _augmented_run(train_settings, name: str, data_dir, num_workers: int):
    return train_settings(name, data={"data_dir": data_dir, "num_workers": num_workers}, **_AUGMENTED_RUN)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_with_augmentation_equals_an_uninterrupted_run(train_settings, cifar10_dir, num_workers):
    # cifar10 augments (random crop and flip); each sample is seeded by (run seed, epoch, index),
    # so the DataLoader workers' RNG states, which no checkpoint holds, do not matter.
    uninterrupted = train(_augmented_run(train_settings, "uninterrupted", cifar10_dir, num_workers))
    assert [int(path.stem[5:]) for path in uninterrupted.checkpoints] == [0, 1, 2, 3, 4, 6, 10]
    resumed = _augmented_run(train_settings, "resumed", cifar10_dir, num_workers)
    files = _interrupted_then_resumed(resumed, stop_after=7, expected_resume_step=6)
    for resumed_file, reference_file in zip(files, uninterrupted.checkpoints):
        _assert_same_state(resumed_file, reference_file)


def test_workers_load_exactly_what_the_main_process_loads(train_settings, cifar10_dir):
    without = train(_augmented_run(train_settings, "without", cifar10_dir, num_workers=0))
    with_workers = train(_augmented_run(train_settings, "with", cifar10_dir, num_workers=2))
    for first, second in zip(without.checkpoints, with_workers.checkpoints, strict=True):
        _assert_same_state(first, second)


@pytest.mark.skipif(
    multiprocessing.get_start_method() != "fork", reason="the patched method reaches the workers only through fork"
)
def test_augmenting_from_the_workers_own_rng_would_break_resume(train_settings, cifar10_dir, monkeypatch):
    # The tests above have teeth: a plain DataLoader augments from each worker's RNG stream,
    # which persists across epochs, so a run resumed mid-epoch (fresh workers) augments differently.
    monkeypatch.setattr(training._SeededSamples, "__getitems__", lambda self, keys: [self.dataset[index] for index, _ in keys])
    uninterrupted = train(_augmented_run(train_settings, "uninterrupted", cifar10_dir, num_workers=2))
    resumed = _augmented_run(train_settings, "resumed", cifar10_dir, num_workers=2)
    step_6 = next(path for path in uninterrupted.checkpoints if read_checkpoint(path)["step"] == 6)
    resumed = resumed.model_copy(update={"train": resumed.train.model_copy(update={"resume_from_checkpoint": step_6})})
    final = read_checkpoint(train(resumed).checkpoints[-1])["state_dict"]
    assert not torch.equal(final["conv1.weight"], read_checkpoint(uninterrupted.checkpoints[-1])["state_dict"]["conv1.weight"])


def _resume_settings(train_settings, checkpoint, **train_fields):
    settings = train_settings("resumed", **{**SHARED_RUN, **train_fields})
    return settings.model_copy(update={"train": settings.train.model_copy(update={"resume_from_checkpoint": checkpoint})})


def test_resume_refuses_a_foreign_checkpoint(train_settings, trained_run, tmp_path):
    _, result = trained_run
    plain = tmp_path / "plain.pt"
    torch.save(read_checkpoint(result.checkpoints[3])["state_dict"], plain)
    with pytest.raises(SettingsError, match=f"{plain}: only llcv training checkpoints can be resumed"):
        train(_resume_settings(train_settings, plain))
    without_optimizer = tmp_path / checkpoint_name(3)
    payload = {key: value for key, value in read_checkpoint(result.checkpoints[3]).items() if key != "optimizer"}
    save_checkpoint(without_optimizer, payload)
    with pytest.raises(SettingsError, match="only llcv training checkpoints"):
        train(_resume_settings(train_settings, without_optimizer))


def test_resume_refuses_another_model_or_a_shorter_run(train_settings, trained_run):
    _, result = trained_run
    other_model = _resume_settings(train_settings, result.checkpoints[3])
    other_model = other_model.model_copy(update={"model": other_model.model.model_copy(update={"name": "resnet18"})})
    with pytest.raises(SettingsError, match="model .* differs"):
        train(other_model)
    with pytest.raises(SettingsError, match="step 16 is past this run's 8 steps"):
        train(_resume_settings(train_settings, result.checkpoints[-1], epochs=1))


def test_resuming_a_finished_run_writes_nothing(train_settings, trained_run):
    _, result = trained_run
    resumed = train(_resume_settings(train_settings, result.checkpoints[-1]))
    assert resumed.checkpoints == [] and resumed.num_steps == 16


# Data loading


def test_a_sample_is_augmented_by_run_seed_epoch_and_index_alone(cifar10_dir):
    from llcv.data import load_dataset

    train_set, _, _ = load_dataset("cifar10", cifar10_dir, augment=True)
    samples = training._SeededSamples(train_set)

    def images(seed: int, epoch: int, indices=range(16)) -> torch.Tensor:
        seeds = training.sample_seeds(len(train_set), seed, epoch)
        return torch.stack([samples[(index, seeds[index])][0] for index in indices])

    state = torch.get_rng_state()
    first = images(0, 0)
    assert torch.equal(torch.get_rng_state(), state)  # the reader's own RNG stream is left as it was
    assert torch.equal(images(0, 0, reversed(range(16))).flip(0), first)  # whatever was read before
    seeds = training.sample_seeds(16, 0, 0)
    batch = samples.__getitems__([(index, seeds[index]) for index in range(16)])  # how DataLoader reads
    assert torch.equal(torch.stack([image for image, _ in batch]), first)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(images(0, 1), first)
    assert not torch.equal(images(1, 0), first)
    assert training.sample_seeds(16, 0, 0) == training.sample_seeds(40, 0, 0)[:16]  # not a function of the size


class _Notes(Reporter):
    def __init__(self):
        self.messages: list[str] = []

    def note(self, message: str) -> None:
        self.messages.append(message)


def test_workers_are_capped_at_the_available_cpus_and_built_once_per_run(train_settings, monkeypatch):
    built = []

    class RecordingLoader(DataLoader):
        def __init__(self, *args, **kwargs):
            built.append((kwargs["num_workers"], kwargs["persistent_workers"]))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(training, "DataLoader", RecordingLoader)
    monkeypatch.setattr(training, "_available_cpus", lambda: 1)
    notes = _Notes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # torch's, at every loader with more workers than CPUs
        result = train(train_settings(epochs=3, batch_size=128, checkpoint_every_epochs=1, data={"num_workers": 3}), notes)
    assert len(result.checkpoints) == 4  # step 0 and three epoch ends: four evaluations
    assert built == [(1, True), (1, True)]  # one training and one validation loader for the whole run
    capped = [message for message in notes.messages if "capped" in message]
    assert capped == ["DataLoader workers capped at 1 (the CPUs available to this process); [data] num_workers asked for 3"]


def test_a_run_within_the_cpus_says_nothing_about_workers(train_settings, monkeypatch):
    monkeypatch.setattr(training, "_available_cpus", lambda: 2)
    notes = _Notes()
    train(train_settings(epochs=1, batch_size=128, data={"num_workers": 2}), notes)
    assert notes.messages and not any("workers" in message for message in notes.messages)


def test_an_interrupted_run_leaves_no_worker_processes(train_settings):
    before = set(multiprocessing.active_children())
    with pytest.raises(KeyboardInterrupt):  # pytest keeps the traceback, and so train's frame
        train(train_settings(epochs=2, batch_size=64, data={"num_workers": 2}), _InterruptAfter(3))
    assert set(multiprocessing.active_children()) <= before
