"""Training throughput: ``llcv.training.train`` against a plain PyTorch loop, in images per second.

Both sides train the same model (same seed) on the same training split with the same batch
size, DataLoader workers, optimiser (SGD with momentum, weight decay) and per-step cosine
schedule. The plain loop is the textbook one: a shuffling DataLoader (with persistent workers
when there are workers, as a careful user would write it), forward, cross-entropy, backward, step.

What is timed, on both sides: from the end of the first (warm-up) epoch to the end of the
last, so one-off costs (loading the data, building the model, starting persistent workers,
allocator and kernel warm-up) are left out. llcv's run keeps only the two checkpoints every run
has (step 0, before the timed span, and the final step, inside it); the final one evaluates the
validation split and writes a file, which the plain loop does not do, so that time is measured
separately and subtracted, and reported on its own. On CUDA the device is synchronised at every
boundary.

The ``cifar10`` dataset here is CIFAR-10's python format with random pixels, written to a
temporary folder (``--cifar-images`` training images; no download), so ``resnet18:cifar10`` is
the CIFAR-stem ResNet18 with llcv's real CIFAR path: crop-and-flip augmentation, seeded per
sample. ``--data-dir`` reads real CIFAR-10 instead.

    python -m benchmarks train_throughput
    python -m benchmarks train_throughput --cases resnet18:cifar10 --cifar-images 1000 --num-workers 2 --threads 1
    python -m benchmarks train_throughput --cases smallcnn:digits resnet18:digits --epochs 3 --device cuda

The target is llcv >= 0.95x the plain loop. On a shared CPU the numbers are noisy: the best of
``--repeats`` alternating runs is the headline, the median shows the spread, and only the two
columns of one run compare. ``--threads 1`` steadies a CPU that other jobs share.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from llcv import training
from llcv.data import load_dataset
from llcv.devices import resolve_device
from llcv.models import build_model, default_stem
from llcv.progress import Reporter
from llcv.settings import load_settings

SEED = 0
CIFAR_VAL_IMAGES = 200  # the validation split only feeds llcv's final evaluation, which is not counted


@dataclass(frozen=True)
class Setup:
    """What both sides of one case train: the same model, data, workers and schedule."""

    model: str
    dataset: str
    data_dir: Path | None  # None: the dataset's default (digits and synthetic need no files)
    epochs: int  # timed epochs, after one warm-up epoch
    batch_size: int
    num_workers: int
    device: str


def write_cifar10(folder: Path, num_train: int) -> Path:
    """A CIFAR-10 python-format folder of random images: ``num_train`` in 5 batches, ``CIFAR_VAL_IMAGES`` to validate.

    The files are what llcv's cifar10 loader reads (protocol-2 pickles with bytes keys, N x 3072
    uint8 rows), so training goes through the same decoding and augmentation as real CIFAR-10.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    counts = [len(part) for part in np.array_split(np.arange(num_train), 5)]
    files = {f"data_batch_{index}": count for index, count in enumerate(counts, start=1)}
    files["test_batch"] = CIFAR_VAL_IMAGES
    for name, count in files.items():
        batch = {
            b"labels": rng.integers(0, 10, size=count).tolist(),
            b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class_{label}".encode() for label in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


@dataclass
class Measurement:
    """One side of one repeat: the timed span and what was subtracted from it."""

    images: int
    seconds: float  # training only
    checkpoint_seconds: float = 0.0  # llcv's in-span evaluation and checkpoint write, excluded above

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _EpochClock(Reporter):
    """Records when each of llcv's epochs ends (its 'batches' progress loop finishes)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.epoch_ends: list[float] = []
        self.open = False

    def start(self, key: str, description: str, total: int | None) -> None:
        if key == "batches":
            self.open = True

    def finish(self, key: str) -> None:
        if key == "batches" and self.open:  # train() also finishes it once more on the way out
            _synchronize(self.device)
            self.epoch_ends.append(time.perf_counter())
            self.open = False

    def note(self, message: str) -> None:
        pass


def _timed(function, spans: list[tuple[float, float]], device: torch.device):
    def wrapper(*args, **kwargs):
        _synchronize(device)
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _synchronize(device)
            spans.append((started, time.perf_counter()))

    return wrapper


def run_llcv(setup: Setup) -> Measurement:
    """``llcv.training.train`` for one warm-up epoch plus ``setup.epochs`` timed ones."""
    resolved = resolve_device(setup.device)
    with tempfile.TemporaryDirectory(prefix="llcv-bench-") as directory:
        settings = load_settings(
            ("data", "model", "train"),
            overrides={
                "data": {"dataset": setup.dataset, "data_dir": setup.data_dir, "num_workers": setup.num_workers},
                "model": {"name": setup.model},
                "train": {
                    "epochs": 1 + setup.epochs, "batch_size": setup.batch_size, "device": setup.device, "seed": SEED,
                    "checkpoints_dir": Path(directory), "checkpoint_every_epochs": 0, "log_checkpoints": 0,
                },
            },
        )  # fmt: skip
        spans: list[tuple[float, float]] = []
        clock = _EpochClock(resolved)
        original_evaluate, original_save = training.evaluate, training.save_checkpoint
        training.evaluate = _timed(original_evaluate, spans, resolved)
        training.save_checkpoint = _timed(original_save, spans, resolved)
        try:
            training.train(settings, clock)
        finally:
            training.evaluate, training.save_checkpoint = original_evaluate, original_save
    begin, end = clock.epoch_ends[0], clock.epoch_ends[-1]
    # The spans never overlap (evaluate returns before save_checkpoint starts), so they add up.
    inside = sum(stop - start for start, stop in spans if start >= begin and stop <= end)
    images = load_dataset(setup.dataset, setup.data_dir)[2].num_train * setup.epochs
    return Measurement(images=images, seconds=(end - begin) - inside, checkpoint_seconds=inside)


def run_plain(setup: Setup) -> Measurement:
    """The textbook loop on the same model, data, batch size, workers, optimiser and schedule."""
    resolved = resolve_device(setup.device)
    defaults = load_settings(("train",)).train
    train_set, _, info = load_dataset(setup.dataset, setup.data_dir, augment=True)
    torch.manual_seed(SEED)
    model = build_model(setup.model, info.num_classes, info.in_channels, default_stem(info.image_size)).to(resolved)
    optimizer = torch.optim.SGD(model.parameters(), lr=defaults.lr, momentum=defaults.momentum, weight_decay=defaults.weight_decay)
    loader = DataLoader(
        train_set, batch_size=setup.batch_size, shuffle=True, num_workers=setup.num_workers,
        persistent_workers=setup.num_workers > 0, generator=torch.Generator().manual_seed(SEED),
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=(1 + setup.epochs) * len(loader))
    model.train()
    epoch_ends = []
    for _ in range(1 + setup.epochs):
        for images, labels in loader:
            images, labels = images.to(resolved, non_blocking=True), labels.to(resolved, non_blocking=True)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        _synchronize(resolved)
        epoch_ends.append(time.perf_counter())
    return Measurement(images=len(train_set) * setup.epochs, seconds=epoch_ends[-1] - epoch_ends[0])


def benchmark(setup: Setup, repeats: int) -> dict:
    """Alternate the two sides ``repeats`` times, so drifting machine load hits both alike.

    Returns the best and the median images/s of each side. Other processes only ever slow a
    run down, so on a shared machine the best of several repeats (as ``timeit`` reports) is
    the steadier estimate; the medians show how much the load moved things.
    """
    runs: dict[str, list[Measurement]] = {"llcv": [], "plain": []}
    sides = [("llcv", run_llcv), ("plain", run_plain)]
    for repeat in range(repeats):
        for side, run in sides if repeat % 2 == 0 else sides[::-1]:
            runs[side].append(run(setup))
    numbers = {}
    for side, measured in runs.items():
        speeds = [run.images_per_second for run in measured]
        numbers[side] = {"best": max(speeds), "median": statistics.median(speeds)}
    numbers["checkpoint_seconds"] = statistics.median(run.checkpoint_seconds for run in runs["llcv"])
    return numbers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks train_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", metavar="MODEL:DATASET", help="default: smallcnn:digits, resnet18:cifar10 "
                        "(CIFAR stem), and resnet18 on digits with CUDA or on synthetic (512 images, 16 px) on a CPU")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers, on both sides (default 0)")
    parser.add_argument("--cifar-images", type=int, default=1000, help="training images of the generated cifar10 (default 1000)")
    parser.add_argument("--data-dir", type=Path, default=None, help="real CIFAR-10 for cifar10 cases, instead of generated images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats; best and median are reported (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, args.cifar_images, args.repeats) < 1 or args.num_workers < 0:
        parser.error("--epochs, --batch-size, --cifar-images and --repeats must be positive, --num-workers at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # llcv caps its workers at the CPUs this process may use; the plain loop gets the same number.
    num_workers = min(args.num_workers, training._available_cpus())
    cases = args.cases or ["smallcnn:digits", "resnet18:cifar10", "resnet18:digits" if device.type == "cuda" else "resnet18:synthetic"]
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, {num_workers} DataLoader workers, "
          f"1 warm-up + {args.epochs} timed epochs, {args.repeats} alternating repeats")  # fmt: skip
    print(f"{'model':<10} {'dataset':<10} {'llcv img/s':>19} {'plain img/s':>19} {'llcv/plain':>16}  excluded eval+save")
    print(f"{'':<21} {'best (median)':>19} {'best (median)':>19} {'best (median)':>16}")
    with tempfile.TemporaryDirectory(prefix="llcv-bench-cifar-") as scratch:
        for case in cases:
            model, _, dataset = case.partition(":")
            dataset = dataset or "digits"
            data_dir = None
            if dataset == "cifar10":
                data_dir = args.data_dir or write_cifar10(Path(scratch) / "cifar10", args.cifar_images)
            setup = Setup(model, dataset, data_dir, args.epochs, args.batch_size, num_workers, args.device)
            numbers = benchmark(setup, args.repeats)
            llcv, plain = numbers["llcv"], numbers["plain"]
            print(
                f"{model:<10} {dataset:<10} {llcv['best']:>10.0f} ({llcv['median']:>6.0f}) {plain['best']:>10.0f} ({plain['median']:>6.0f})"
                f" {llcv['best'] / plain['best']:>8.2f}x ({llcv['median'] / plain['median']:.2f}x)"
                f"  {numbers['checkpoint_seconds']:.2f} s",
                flush=True,
            )
