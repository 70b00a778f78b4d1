"""Training: ``train(settings)`` fits a model and keeps every scheduled checkpoint.

The checkpoint schedule over T steps is step 0 (the initialisation), K log-spaced steps
``round(geomspace(1, T, K))``, the end of every N-th epoch, and the final step. A run resumed
from any of its checkpoints continues bit for bit, with any number of DataLoader workers: the
optimizer, scheduler and RNG states are stored; the data order of each epoch is a pure function
of (seed, epoch), so the position inside an epoch is just the number of batches already taken;
and each sample's augmentation is a pure function of (seed, epoch, sample index), so no worker
holds state that a checkpoint would have to store.

A run builds one training and one validation DataLoader; with workers they persist, so worker
start-up is paid once per run, not once per epoch and per checkpoint.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from llcv.checkpoints import ModelSpec, check_spec_version, checkpoint_name, read_checkpoint, save_checkpoint
from llcv.data import load_dataset
from llcv.devices import resolve_device
from llcv.errors import SettingsError
from llcv.model_sources import import_factory
from llcv.models import new_model
from llcv.progress import SILENT, Reporter
from llcv.settings import SettingsBundle, TrainSettings

EVAL_BATCH_SIZE = 512


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoints_dir: Path
    checkpoints: list[Path] = field(default_factory=list)
    num_steps: int = 0
    steps_per_epoch: int = 0
    final_metrics: dict[str, float | None] = field(default_factory=dict)
    metrics_step: int | None = None  # the step final_metrics were measured at (the latest checkpoint)


def checkpoint_steps(
    num_steps: int, steps_per_epoch: int, log_checkpoints: int = 0, checkpoint_every_epochs: int = 0
) -> list[int]:
    """The sorted steps at which a run of ``num_steps`` steps saves checkpoints."""
    steps = {0, num_steps}
    if log_checkpoints > 0 and num_steps > 0:
        steps.update(int(step) for step in np.round(np.geomspace(1, num_steps, log_checkpoints)))
    if checkpoint_every_epochs > 0:
        epochs = num_steps // steps_per_epoch
        steps.update(epoch * steps_per_epoch for epoch in range(checkpoint_every_epochs, epochs + 1, checkpoint_every_epochs))
    return sorted(steps)


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a pure function of (seed, epoch), so resume needs no state."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return torch.randperm(num_samples, generator=generator)


def _available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (which Slurm and taskset narrow), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def sample_seeds(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The augmentation seed of every sample in one epoch, by sample index.

    A pure function of (seed, epoch, index): element ``index`` does not depend on
    ``num_samples``. Distinct from ``epoch_order``'s seed, so order and augmentation differ.
    """
    return np.random.SeedSequence([seed, epoch, 1]).generate_state(num_samples).tolist()


class _EpochBatches(Sampler[list[tuple[int, int]]]):
    """The batch sampler of a run's one training loader, switched to each epoch's batches.

    A batch sampler runs in the main process even when workers load the data, so persistent
    workers see the batches set here. It yields ``(index, seed)`` keys: which sample, and the
    seed of its augmentation in this epoch (``sample_seeds``), for ``_SeededSamples``.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.seeds: list[int] = []

    def set_epoch(self, batches: list[list[int]], seeds: list[int]) -> None:
        """Make the next pass over the loader yield ``batches`` (sample indices), seeded by ``seeds``."""
        self.batches, self.seeds = batches, seeds

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches:
            yield [(index, self.seeds[index]) for index in batch]

    def __len__(self) -> int:
        return len(self.batches)


class _SeededSamples(Dataset):
    """``dataset`` read by ``(index, seed)`` keys: sample ``index``, augmented from ``seed``.

    A sample then comes out the same in whichever process reads it and whatever that process
    read before, so resume is exact with any number of workers, and the same as with none.
    llcv's CIFAR transform and torchvision's transforms both draw from torch's default CPU
    generator; it is seeded before each read and restored after the batch, so the reader's own
    stream (with no workers, the main process's, which checkpoints store) is left as it was.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list:
        """The items of one batch; DataLoader calls this instead of ``__getitem__`` per key."""
        # The reader's generator is saved once per batch, not per sample: saving and restoring it
        # costs as much as seeding it, and both together as much as reading a small image. By
        # hand, as torch.random.fork_rng adds more; and the CPU generator only, since
        # torch.manual_seed would reseed every CUDA generator too.
        state = torch.get_rng_state()
        try:
            items = []
            for index, seed in keys:
                torch.default_generator.manual_seed(seed)
                items.append(self.dataset[index])
            return items
        finally:
            torch.set_rng_state(state)


def _loader(dataset: Dataset, batch_sampler, num_workers: int) -> DataLoader:
    # Every pass over a loader draws a base seed from its generator, by default the global RNG
    # that checkpoints store; a private generator keeps loading from shifting that stream.
    generator = torch.Generator()
    return DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=num_workers, persistent_workers=num_workers > 0, generator=generator
    )


def _eval_loader(dataset: Dataset, num_workers: int) -> DataLoader:
    """A loader over ``dataset`` in order, in batches of ``EVAL_BATCH_SIZE``, for ``evaluate``."""
    indices = list(range(len(dataset)))  # type: ignore[arg-type]
    batches = [indices[start : start + EVAL_BATCH_SIZE] for start in range(0, len(indices), EVAL_BATCH_SIZE)]
    return _loader(dataset, batches, num_workers)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset | DataLoader, device: torch.device, num_workers: int = 0
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``dataset``, in eval mode; restores the mode.

    Args:
        model: the classifier.
        dataset: ``(image, label)`` items, or a DataLoader over them to reuse across calls
            (``train`` keeps one whose workers persist from checkpoint to checkpoint).
        device: where the model is.
        num_workers: DataLoader workers when ``dataset`` is a dataset, capped at the CPUs
            available to this process; ignored for a DataLoader.
    """
    if isinstance(dataset, DataLoader):
        loader = dataset
    else:
        loader = _eval_loader(dataset, min(num_workers, _available_cpus()))
    was_training = model.training
    model.eval()
    total_loss, correct, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
        count += len(labels)
    model.train(was_training)
    return {"val_loss": total_loss.item() / max(count, 1), "val_acc": correct.item() / max(count, 1)}


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


def _scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, num_steps: int, steps_per_epoch: int):
    # Schedulers step once per optimisation step, so checkpoints may fall mid-epoch.
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(num_steps, 1))
    if settings.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=settings.step_every_epochs * steps_per_epoch, gamma=settings.step_factor
        )
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def resumed_settings(checkpoint: Path | None) -> dict[str, Any] | None:
    """The settings stored in ``checkpoint``, as the base a resumed run starts from (beneath its
    config file and flags); None when not resuming.

    The checkpoint's own ``resume_from_checkpoint`` is dropped, and so are ``allow_version_mismatch``
    and ``factory``: allowing a model-version mismatch, and importing a factory (which runs its
    code), are asked for each time, never inherited from a checkpoint.
    """
    if checkpoint is None:
        return None
    stored = read_checkpoint(checkpoint).get("settings") or {}
    train_settings = {key: value for key, value in stored.get("train", {}).items() if key != "resume_from_checkpoint"}
    model_settings = {key: value for key, value in stored.get("model", {}).items() if key not in ("allow_version_mismatch", "factory")}
    return {**stored, "train": train_settings, "model": model_settings}


def train(settings: SettingsBundle, reporter: Reporter = SILENT) -> TrainResult:
    """Train ``settings.model`` on ``settings.data`` as ``settings.train`` says, saving checkpoints.

    Args:
        settings: resolved ``data``, ``model`` and ``train`` sections.
        reporter: receives progress (epochs and batches, live loss and accuracy) and epoch summaries.

    Returns:
        The checkpoints written by this call, in training order, and the final metrics.

    Raises:
        SettingsError, DataError, CheckpointError: bad settings, data, or resume checkpoint.
    """
    run = _start_run(settings, reporter)
    try:
        if settings.train.resume_from_checkpoint is not None:
            step = _resume(run, reporter)
            reporter.note(f"resuming from step {step} of {run.num_steps}")
        else:
            step = 0
            run.save(0, None)
        _train_epochs(run, step, reporter)
    finally:
        reporter.finish("batches")
        reporter.finish("epochs")
        # Persistent workers stop when their loader is freed. An exception's traceback keeps this
        # frame, and so the run and its loaders, alive for as long as the caller holds it: free them now.
        run.train_loader = run.val_loader = None
    return run.result


@dataclass
class _Run:
    """One training run, set up: the model, its optimiser and schedule, its loaders, and what
    each checkpoint records of the model and the data."""

    settings: SettingsBundle
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch.optim.lr_scheduler, stepped once per optimisation step
    num_train_samples: int
    steps_per_epoch: int
    num_steps: int
    schedule: set[int]  # the steps that save a checkpoint (checkpoint_steps)
    model_spec: dict[str, Any]
    dataset_spec: dict[str, Any]
    batch_sampler: _EpochBatches
    train_loader: DataLoader | None
    val_loader: DataLoader | None
    result: TrainResult

    def save(self, step: int, train_loss: float | None) -> None:
        """Validate, then save the checkpoint of ``step`` with everything a resume needs."""
        metrics = {"train_loss": train_loss, **evaluate(self.model, self.val_loader, self.device)}
        payload = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "model": self.model_spec,
            "dataset": self.dataset_spec,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(self.device),
            "metrics": metrics,
            "settings": self.settings.to_json_dict(),
        }
        self.result.checkpoints.append(save_checkpoint(self.result.checkpoints_dir / checkpoint_name(step), payload))
        self.result.final_metrics = metrics
        self.result.metrics_step = step


def _start_run(settings: SettingsBundle, reporter: Reporter) -> _Run:
    """Load the data, build the model (initialised from ``[train] seed``), its optimiser and
    schedule, and the run's one training and one validation loader."""
    data_settings, model_settings, train_settings = settings.data, settings.model, settings.train
    device = resolve_device(train_settings.device)
    train_set, val_set, info = load_dataset(
        data_settings.dataset,
        data_settings.data_dir,
        data_settings.seed,
        augment=True,
        download=data_settings.download,
        image_size=data_settings.image_size,
    )
    factory = import_factory(model_settings.factory) if model_settings.factory is not None else None
    torch.manual_seed(train_settings.seed)
    model, model_spec = new_model(
        model_settings.name, info.num_classes, info.in_channels, stem=model_settings.stem, image_size=info.image_size,
        arguments=model_settings.arguments, factory=factory,
    )  # fmt: skip
    model.to(device)
    optimizer = _optimizer(model, train_settings)
    steps_per_epoch = math.ceil(len(train_set) / train_settings.batch_size)
    num_steps = train_settings.epochs * steps_per_epoch
    dataset_spec = {"name": info.name, "data_dir": info.data_dir, "seed": data_settings.seed, "image_size": data_settings.image_size}
    num_workers = _worker_count(data_settings.num_workers, reporter)
    batch_sampler = _EpochBatches()
    return _Run(
        settings=settings,
        device=device,
        model=model,
        optimizer=optimizer,
        scheduler=_scheduler(optimizer, train_settings, num_steps, steps_per_epoch),
        num_train_samples=len(train_set),
        steps_per_epoch=steps_per_epoch,
        num_steps=num_steps,
        schedule=set(
            checkpoint_steps(num_steps, steps_per_epoch, train_settings.log_checkpoints, train_settings.checkpoint_every_epochs)
        ),
        model_spec=model_spec,
        dataset_spec=dataset_spec,
        batch_sampler=batch_sampler,
        train_loader=_loader(_SeededSamples(train_set), batch_sampler, num_workers),
        val_loader=_eval_loader(val_set, num_workers),
        result=TrainResult(Path(train_settings.checkpoints_dir), num_steps=num_steps, steps_per_epoch=steps_per_epoch),
    )


def _worker_count(requested: int, reporter: Reporter) -> int:
    """``[data] num_workers``, capped at the CPUs available to this process."""
    num_workers = min(requested, _available_cpus())
    if num_workers < requested:
        # Said once here: torch would otherwise warn at every loader it builds with too many workers.
        reporter.note(
            f"DataLoader workers capped at {num_workers} (the CPUs available to this process); "
            f"[data] num_workers asked for {requested}"
        )
    return num_workers


def _train_epochs(run: _Run, step: int, reporter: Reporter) -> None:
    """Train from ``step`` to the end of the run, saving the scheduled checkpoints."""
    epochs = run.settings.train.epochs
    run.model.train()
    since_checkpoint = _RunningLoss(run.device)
    reporter.start("epochs", "Epochs", epochs)
    reporter.advance("epochs", step // run.steps_per_epoch)
    for epoch in range(step // run.steps_per_epoch, epochs):
        step, totals = _train_epoch(run, epoch, step, since_checkpoint, reporter)
        reporter.advance("epochs", 1)
        last = run.result.final_metrics
        # Validation runs only at checkpoints, so say which step its numbers are from.
        validation = (
            f"val loss {last['val_loss']:.4f}, val acc {last['val_acc']:.3f} at step {run.result.metrics_step}"
            if last
            else "no validation yet"
        )
        reporter.note(
            f"epoch {epoch + 1}/{epochs} (step {step}): train loss "
            f"{totals.loss.item() / max(totals.count, 1):.4f}, train acc {totals.correct.item() / max(totals.count, 1):.3f}; "
            f"{validation}"
        )


def _train_epoch(run: _Run, epoch: int, step: int, since_checkpoint: _RunningLoss, reporter: Reporter) -> tuple[int, _EpochTotals]:
    """Train the rest of ``epoch`` from ``step`` (a resumed run starts mid-epoch); returns the step
    reached and the epoch's totals over the batches this call trained."""
    settings = run.settings.train
    order = epoch_order(run.num_train_samples, settings.seed, epoch).tolist()
    batches = [order[start : start + settings.batch_size] for start in range(0, len(order), settings.batch_size)]
    seeds = sample_seeds(run.num_train_samples, settings.seed, epoch)
    run.batch_sampler.set_epoch(batches[step - epoch * run.steps_per_epoch :], seeds)
    totals = _EpochTotals(torch.zeros((), device=run.device), torch.zeros((), device=run.device), 0)
    reporter.start("batches", f"Epoch {epoch + 1}", run.steps_per_epoch)
    reporter.advance("batches", run.steps_per_epoch - len(run.batch_sampler))
    for images, labels in run.train_loader:
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        logits = run.model(images)
        loss = F.cross_entropy(logits, labels)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        step += 1
        totals.loss += loss.detach() * len(labels)
        totals.correct += (logits.argmax(dim=1) == labels).sum()
        totals.count += len(labels)
        since_checkpoint.add(loss)
        reporter.advance("batches", 1, loss=_LazyRatio(totals.loss, totals.count), acc=_LazyRatio(totals.correct, totals.count))
        if step in run.schedule:
            run.save(step, since_checkpoint.take_mean())
    reporter.finish("batches")
    return step, totals


@dataclass
class _EpochTotals:
    """An epoch's summed loss and correct predictions (device scalars) over ``count`` samples."""

    loss: torch.Tensor
    correct: torch.Tensor
    count: int


class _RunningLoss:
    """The training loss summed over the batches since the last checkpoint, on the device."""

    def __init__(self, device: torch.device):
        self.total, self.batches = torch.zeros((), device=device), 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach()
        self.batches += 1

    def take_mean(self) -> float:
        """The mean batch loss since the last checkpoint (a host synchronisation), and start afresh."""
        mean = (self.total / self.batches).item()
        self.total.zero_()
        self.batches = 0
        return mean


class _LazyRatio:
    """A device scalar divided by a count, read only when a progress display formats it.

    Reading a CUDA tensor synchronises the device; deferring the read to the (throttled)
    display refresh keeps the training loop free of per-step host synchronisation.
    """

    def __init__(self, total: torch.Tensor, count: int):
        self.total, self.count = total, count

    def __format__(self, spec: str) -> str:
        return format(self.total.item() / max(self.count, 1), spec)


def _resume(run: _Run, reporter: Reporter) -> int:
    """Load ``[train] resume_from_checkpoint`` into the run's model, optimiser, schedule and RNG; returns its step.

    Raises:
        SettingsError: not an llcv training checkpoint, another model, or past this run's steps.
        CheckpointError: the checkpoint records another version of the model, not allowed.
    """
    path, model_spec, num_steps = run.settings.train.resume_from_checkpoint, run.model_spec, run.num_steps
    payload = read_checkpoint(path)
    if payload.get("format") != "llcv-checkpoint" or "optimizer" not in payload:
        raise SettingsError(f"--resume-from-checkpoint {path}: only llcv training checkpoints can be resumed")
    # The versions are compared on their own: a checkpoint written before model versions has none.
    stored_model = payload["model"] if isinstance(payload["model"], dict) else {}
    versionless = {"version": None, "library_version": None}
    recorded_factory = stored_model.get("factory")
    if recorded_factory is not None and model_spec.get("factory") is None:
        raise SettingsError(
            f"--resume-from-checkpoint {path}: the checkpoint's model was built by the factory {recorded_factory!r}; "
            f"importing it runs its code, so llcv does that only when asked: pass --model-factory {recorded_factory} again"
        )
    try:
        same = ModelSpec(**{**stored_model, **versionless}) == ModelSpec(**{**model_spec, **versionless})
    except (TypeError, ValueError):  # a malformed record of the model: not this run's
        same = False
    if not same:
        raise SettingsError(
            f"--resume-from-checkpoint {path}: the checkpoint's model {payload['model']} differs from the settings' {model_spec}"
        )
    recorded = ModelSpec(**stored_model)
    if check_spec_version(recorded, path=path, allow=run.settings.model.allow_version_mismatch):
        key = "version" if recorded.library_version is None else "library_version"
        was, now = getattr(recorded, key), model_spec.get(key)
        reporter.note(
            f"resuming a checkpoint of {model_spec['name']!r} version {was} as version {now} "
            f"(the mismatch was allowed); the checkpoints written from now on record version {now}"
        )
    if payload["step"] > num_steps:
        raise SettingsError(f"--resume-from-checkpoint {path}: step {payload['step']} is past this run's {num_steps} steps")
    run.model.load_state_dict(payload["state_dict"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    _restore_rng_state(payload["rng"], run.device)
    return int(payload["step"])
