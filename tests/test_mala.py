"""MALA acceptance scores both ends of a step on the same batch, so it measures the step size.

With full batches it is what the chain computes anyway (tests/test_sampling.py replays it
against devinterp's formula); with minibatches the proposal gets one more pass on its step's
batch, and the result must track the full-batch acceptance instead of batch-to-batch noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from llcv import SamplerSettings, SweepGrid, calibrate_sweep
from llcv.sampling import estimate_llc
from llcv.settings import load_settings
from llcv.targets import Target
from llcv.training import train

EPSILONS = [1e-6, 1e-5, 1e-4, 3e-4, 1e-3]


def linear_gaussian(dim: int = 10, size: int = 4000, input_scale: float = 4.0, noise: float = 0.1, seed: int = 0):
    """A linear model at its least-squares fit to Gaussian inputs and Gaussian label noise.

    The inputs' scale sets the curvature, so that the epsilons of the sweep span acceptance
    from 1 down to about 0.7; the noise level is that of llcv.known_models.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = input_scale * torch.randn(size, dim, generator=generator)
    targets = inputs @ torch.randn(dim, 1, generator=generator) + noise * torch.randn(size, 1, generator=generator)
    model = nn.Linear(dim, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets).solution.T)
    return model, TensorDataset(inputs, targets)


def acceptances(model, data, batch_size: int, nbeta: float, epsilons=EPSILONS, gamma: float = 1.0, **changes) -> list[float]:
    # fp32 pinned: the ratio compares potentials at both ends of a step, and this test is about
    # the minibatch, not about bf16's rounding (auto would pick fp32 for a model this small anyway)
    base = SamplerSettings(num_chains=2, num_draws=100, num_burnin_steps=50, batch_size=batch_size, **{"precision": "fp32", **changes})
    sweep = calibrate_sweep(model, data, SweepGrid(epsilons, [gamma], nbetas=[nbeta]), base=base, loss="mse", device="cpu")
    return [row["mala_acceptance"] for row in sweep.rows]


def test_minibatch_acceptance_tracks_full_batch_acceptance_on_a_linear_gaussian_model():
    model, data = linear_gaussian()
    batch = len(data) // 20  # 5% of the data
    nbeta = batch / math.log(batch)  # the minibatch's temperature (devinterp's batch rule), used for both
    full = acceptances(model, data, len(data), nbeta)
    mini = acceptances(model, data, batch, nbeta)
    assert np.abs(np.subtract(full, mini)).max() <= 0.05, (full, mini)
    assert all(later <= earlier + 0.005 for earlier, later in zip(mini, mini[1:])), mini
    assert mini[0] >= 0.99 and mini[-1] <= 0.85, mini


def test_measuring_every_kth_draw_scores_only_those_draws(monkeypatch):
    model, data = linear_gaussian(size=400)
    settings = SamplerSettings(epsilon=3e-4, gamma=1.0, num_chains=1, num_draws=40, batch_size=20, mala=True, mala_every=4)
    calls = []
    from llcv.sampling import chains

    original = chains._mala_acceptance

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(chains, "_mala_acceptance", counting)
    every_fourth = estimate_llc(model, data, settings, loss="mse", device="cpu")
    monkeypatch.undo()
    every_draw = estimate_llc(model, data, settings.model_copy(update={"mala_every": 1}), loss="mse", device="cpu")
    assert len(calls) == 10  # draws 3, 7, ..., 39
    # scoring never moves the chain (the update only takes another rounding route on scored steps)
    assert np.allclose(every_fourth.loss_trace, every_draw.loss_trace, rtol=1e-4)
    assert 0.5 < every_fourth.mala_acceptance <= 1.0


def test_mala_is_off_in_estimates_unless_asked():
    model, data = linear_gaussian(size=200)
    settings = SamplerSettings(epsilon=1e-4, num_chains=1, num_draws=5, batch_size=50)
    assert estimate_llc(model, data, settings, loss="mse", device="cpu").mala_acceptance is None


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """The final checkpoint of a smallcnn trained on the bundled digits as the demo trains it."""
    folder = tmp_path_factory.mktemp("digits") / "checkpoints"
    settings = load_settings(
        ("data", "model", "train"),
        overrides={
            "data": {"dataset": "digits"},
            "model": {"name": "smallcnn"},
            "train": {"epochs": 6, "batch_size": 64, "lr": 0.05, "device": "cpu", "checkpoints_dir": folder,
                      "checkpoint_every_epochs": 0},
        },
    )  # fmt: skip
    return train(settings).checkpoints[-1]


def test_minibatch_sweep_on_trained_digits_falls_monotonically_with_epsilon(digits_checkpoint):
    target = Target(digits_checkpoint).load()
    base = SamplerSettings(num_chains=2, num_draws=40, batch_size=32)
    sweep = calibrate_sweep(target.model, target.dataset, SweepGrid([1e-6, 1e-5, 1e-4, 1e-3], [100.0]), base=base, device="cpu")
    accepted = [row["mala_acceptance"] for row in sweep.rows]
    assert accepted[0] >= 0.9, accepted
    assert all(later < earlier for earlier, later in zip(accepted, accepted[1:])), accepted
