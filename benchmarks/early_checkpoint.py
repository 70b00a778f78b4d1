"""The LLC of an early, high-learning-rate ResNet18 checkpoint in each BatchNorm mode.

Run: ``python -m benchmarks early_checkpoint [--image-size N] [--steps N] [--draws N] [--modes batch,eval,train]``.

Issue 10's situation, at a size a CPU can sample: a CIFAR-stem ResNet18 trained with the
CIFAR-10 recipe (SGD, learning rate 0.1, momentum 0.9, weight decay 5e-4, batch 128) for
``--steps`` steps on 1,536 random ``--image-size`` images with random labels (so the checkpoint is
overconfident, far above ln 10, and far from any minimum), then estimated with the CIFAR config's
sampler (epsilon 1e-5, gamma 1000, batch 256) at 2 chains x ``--draws`` draws in each BatchNorm
mode, with the same seed. Frozen running statistics (``eval``, even recomputed for the weights)
give large negative LLCs here; batch statistics (the default) sample the function training
descended and agree with devinterp's ``train`` mode. Every estimate prints its health.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from llcv import SamplerSettings, build_model, estimate_llc

NUM_SAMPLES = 1536
NUM_CLASSES = 10


def early_checkpoint(image_size: int, steps: int) -> tuple[nn.Module, TensorDataset, float]:
    """A ResNet18 after ``steps`` steps of the CIFAR-10 recipe on random data, the data, and its last loss."""
    torch.manual_seed(0)
    inputs = torch.randn(NUM_SAMPLES, 3, image_size, image_size)
    labels = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,))
    model = build_model("resnet18", num_classes=NUM_CLASSES, in_channels=3, stem="cifar")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, NUM_SAMPLES, (128,), generator=order)
        loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, TensorDataset(inputs, labels), loss.item()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks early_checkpoint")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--modes", default="batch,eval,train")
    options = parser.parse_args(argv)
    model, data, last_loss = early_checkpoint(options.image_size, options.steps)
    print(f"ResNet18 after {options.steps} steps at lr 0.1 on {options.image_size}px random data: last training loss {last_loss:.2f}")
    # devinterp's temperature and no burn-in: the defaults when docs/calibration.md's table was measured
    settings = SamplerSettings(
        epsilon=1e-5, gamma=1000.0, nbeta="batch", num_burnin_steps=0, batch_size=256, num_chains=2, num_draws=options.draws, precision="fp32"
    )
    print(f"{'bn_mode':8} {'LLC':>16} {'init loss':>10} {'time':>7}  health")
    for mode in options.modes.split(","):
        started = time.perf_counter()
        result = estimate_llc(model, data, settings.model_copy(update={"bn_mode": mode}), device="cpu")
        llc = f"{result.llc_mean:.2f} ± {result.llc_std:.2f}" if result.llc_mean is not None else "diverged"
        health = "healthy" if result.healthy else "; ".join(result.health_reasons)
        print(f"{mode:8} {llc:>16} {result.init_loss:10.4f} {time.perf_counter() - started:6.0f}s  {health}", flush=True)
