"""Whether an LLC's reported standard error is the size of its actual error over seeds.

Run: ``python -m benchmarks standard_error [--seeds N] [--cases NAME,...]``.

A 258-parameter CNN trained for five epochs on 20,000 noisy 8 x 8 images (labels: whether the
top half is bright, 10% flipped) is estimated at ``--seeds`` seeds per case, 4 chains x 200
draws after 200 burn-in steps at devinterp's temperature (``nbeta = "batch"``, the default
when the table in docs/calibration.md was measured), default settings otherwise. A seed changes the chains and the
initial loss's subset, so the LLC's spread over seeds is the error a single estimate carries;
each case prints it beside the mean MCSE and the mean ``llc_se`` (docs/calibration.md, "The
standard error"). About a minute per case at 12 seeds on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from llcv import SamplerSettings, estimate_llc

NUM_SAMPLES = 20_000
CASES = {  # name: what differs from the defaults, besides the temperature, the burn-in and the seed
    "subset": {},  # the initial loss on a subset of 4,096 samples, as by default
    "every_sample": {"init_loss_samples": None},
    "every_sample_800": {"init_loss_samples": None, "num_draws": 800},
    "gamma_1000": {"init_loss_samples": None, "gamma": 1000.0},
}


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(images)).flatten(1))


def trained_model() -> tuple[nn.Module, TensorDataset]:
    """The CNN after five epochs of SGD, and its training data."""
    torch.manual_seed(0)
    images = torch.randn(NUM_SAMPLES, 1, 8, 8)
    labels = images[:, 0, :4].mean(dim=(1, 2)).gt(0).long()
    labels = torch.where(torch.rand(NUM_SAMPLES) < 0.1, 1 - labels, labels)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        for batch in torch.randperm(NUM_SAMPLES).split(64):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, TensorDataset(images, labels)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks standard_error")
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    options = parser.parse_args(argv)
    model, data = trained_model()
    print(f"{'case':<18} {'LLC':>7} {'spread over seeds':>18} {'mean MCSE':>10} {'mean llc_se':>12}  healthy")
    for name in options.cases.split(","):
        started = time.perf_counter()
        results = [
            estimate_llc(model, data, SamplerSettings(nbeta="batch", num_burnin_steps=200, seed=seed, **CASES[name]), device="cpu")
            for seed in range(options.seeds)
        ]
        llcs = np.array([result.llc_mean for result in results])
        mcse = np.mean([result.diagnostics.llc_mcse for result in results])
        se = np.mean([result.diagnostics.llc_se for result in results])
        healthy = sum(bool(result.healthy) for result in results)
        print(
            f"{name:<18} {llcs.mean():>7.3f} {llcs.std(ddof=1):>18.3f} {mcse:>10.3f} {se:>12.3f}  {healthy}/{len(results)}"
            f"  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
