"""How BatchNorm normalises while sampling (issue 10).

By default (``bn_mode="batch"``) every batch is normalised by its own statistics, which follow
the weights as they move: the function training descended, with BatchNorm's symmetries intact.
In eval mode the running statistics are frozen; a checkpoint's saved ones lag its weights early
in training, so they are recomputed for the checkpoint's weights first.
"""

from __future__ import annotations

import copy
import math

import numpy
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from llcv import SamplerSettings
from llcv.sampling.batchnorm import batchnorm_layers, recompute_batchnorm_statistics
from llcv.sampling import resolve_loss
from llcv.models import build_model
from llcv.results.store import hashed_settings, settings_hash
from llcv.sampling import estimate_llc, working_copy
from llcv.sampling import SamplingData

SETTINGS = SamplerSettings(num_chains=2, num_draws=4, batch_size=16, epsilon=1e-5, gamma=1000.0, bn_mode="eval")


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.norm(self.conv(x)))


def small_resnet() -> tuple[nn.Module, TensorDataset]:
    """A residual network whose every convolution feeds a BatchNorm, as a ResNet's does, small
    enough that a test samples it in a second (the early-checkpoint test below runs ResNet18)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        _ResidualBlock(8), _ResidualBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    # trained statistics, not BatchNorm's initial 0 and 1: a few passes in train mode
    model.train()
    data = TensorDataset(torch.randn(48, 3, 8, 8), torch.randint(0, 4, (48,)))
    with torch.no_grad():
        for _ in range(3):
            model(data.tensors[0])
    return model, data


def with_scaled_statistics(model: nn.Module, factor: float) -> nn.Module:
    corrupted = copy.deepcopy(model)
    for layer in batchnorm_layers(corrupted):
        layer.running_mean.mul_(factor)
        layer.running_var.mul_(factor)
    return corrupted


def test_recomputed_statistics_are_the_cumulative_average_over_the_batches():
    layer = nn.BatchNorm1d(3)
    batches = [[torch.randn(10, 3) * 2 + 5], [torch.randn(10, 3) * 2 + 5]]
    used = recompute_batchnorm_statistics(nn.Sequential(layer).eval(), batches, lambda model, batch: model(batch[0]))
    assert used == 20
    expected_mean = torch.stack([batch[0].mean(0) for batch in batches]).mean(0)
    expected_var = torch.stack([batch[0].var(0, unbiased=True) for batch in batches]).mean(0)
    assert torch.allclose(layer.running_mean, expected_mean, atol=1e-6)
    assert torch.allclose(layer.running_var, expected_var, atol=1e-5)
    assert layer.momentum == 0.1 and not layer.training  # restored


def test_corrupted_running_statistics_give_the_same_llc_once_recomputed():
    model, data = small_resnet()
    fresh = estimate_llc(model, data, SETTINGS, device="cpu")
    corrupted = with_scaled_statistics(model, 100.0)
    recomputed = estimate_llc(corrupted, data, SETTINGS, device="cpu")
    assert recomputed.batchnorm_statistics == "recomputed" and recomputed.batchnorm_samples == 48
    assert recomputed.init_loss == pytest.approx(fresh.init_loss, rel=1e-5)
    sampling_error = (fresh.llc_std**2 + recomputed.llc_std**2) ** 0.5
    assert abs(recomputed.llc_mean - fresh.llc_mean) <= sampling_error + 1e-6 * abs(fresh.llc_mean)
    # The checkpoint's own (corrupted) statistics make another function: the setting matters.
    saved = estimate_llc(corrupted, data, SETTINGS.model_copy(update={"bn_stats": "checkpoint"}), device="cpu")
    assert saved.batchnorm_statistics == "checkpoint"
    assert abs(saved.init_loss - fresh.init_loss) > 0.01


def test_the_callers_model_keeps_its_statistics_and_weights():
    model, data = small_resnet()
    corrupted = with_scaled_statistics(model, 100.0).eval()
    before = {name: tensor.clone() for name, tensor in corrupted.state_dict().items()}
    estimate_llc(corrupted, data, SETTINGS, device="cpu")
    assert all(torch.equal(before[name], tensor) for name, tensor in corrupted.state_dict().items())
    assert not corrupted.training


def test_statistics_come_from_a_seeded_subset_of_bn_samples():
    model, data = small_resnet()
    settings = SETTINGS.model_copy(update={"bn_samples": 32})
    first = estimate_llc(model, data, settings, device="cpu")
    again = estimate_llc(model, data, settings, device="cpu")
    everything = estimate_llc(model, data, settings.model_copy(update={"bn_samples": None}), device="cpu")
    assert first.batchnorm_samples == 32 and everything.batchnorm_samples == 48
    assert first.init_loss == again.init_loss != everything.init_loss


def test_a_model_without_batchnorm_is_bit_for_bit_unchanged_by_the_setting():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 3, (64,)))
    settings = SamplerSettings(num_chains=2, num_draws=10, batch_size=16, epsilon=1e-3, gamma=10.0, bn_mode="eval")
    recompute = estimate_llc(model, data, settings, device="cpu")
    saved = estimate_llc(model, data, settings.model_copy(update={"bn_stats": "checkpoint"}), device="cpu")
    assert recompute.batchnorm_statistics == saved.batchnorm_statistics == "none"
    assert recompute.llc_trace == saved.llc_trace and recompute.init_loss == saved.init_loss


def test_per_class_scopes_normalise_with_the_statistics_of_all_the_data():
    model, data = small_resnet()
    one_class = estimate_llc(model, data, SETTINGS.model_copy(update={"classes": [0]}), device="cpu")
    assert one_class.batchnorm_samples == 48  # every class, not only class 0


def test_recomputing_is_part_of_the_settings_hash():
    default = SamplerSettings(bn_mode="eval")
    assert settings_hash(default) != settings_hash(default.model_copy(update={"bn_stats": "checkpoint"}))
    assert settings_hash(default) != settings_hash(default.model_copy(update={"bn_samples": 1024}))
    # bn_samples means nothing with the checkpoint's statistics, so it does not move that hash
    saved = default.model_copy(update={"bn_stats": "checkpoint"})
    assert settings_hash(saved) == settings_hash(saved.model_copy(update={"bn_samples": 1024}))


def test_batch_statistics_are_the_default_and_ignore_the_saved_ones():
    model, data = small_resnet()
    settings = SETTINGS.model_copy(update={"bn_mode": SamplerSettings().bn_mode})
    assert settings.bn_mode == "batch"
    fresh = estimate_llc(model, data, settings, device="cpu")
    corrupted = estimate_llc(with_scaled_statistics(model, 100.0), data, settings, device="cpu")
    assert fresh.batchnorm_statistics == corrupted.batchnorm_statistics == "batch"
    assert corrupted.llc_trace == fresh.llc_trace and corrupted.init_loss == fresh.init_loss


def test_batch_statistics_leave_dropout_off_and_running_statistics_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 3, (64,)))
    settings = SamplerSettings(num_chains=2, num_draws=5, batch_size=16, epsilon=1e-3, gamma=10.0, bn_mode="batch")
    work, provenance = working_copy(model, SamplingData(data, settings, torch.device("cpu")), resolve_loss("cross_entropy"), settings)
    assert provenance.statistics == "batch"
    assert work[1].training and not work[2].training  # BatchNorm per batch, dropout off
    before = {name: tensor.clone() for name, tensor in work.state_dict().items()}
    batch = data[:16]
    first, again = (resolve_loss("cross_entropy")(work, batch) for _ in range(2))
    assert first == again  # a function of the weights and the batch alone
    assert all(torch.equal(before[name], tensor) for name, tensor in work.state_dict().items())


def test_a_model_without_batchnorm_samples_the_same_in_batch_and_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3))
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 3, (64,)))
    # fp32 pinned: precision="auto" may time bf16 faster for one estimate and not the other
    settings = SamplerSettings(num_chains=2, num_draws=10, batch_size=16, epsilon=1e-3, gamma=10.0, precision="fp32")
    batch = estimate_llc(model, data, settings.model_copy(update={"bn_mode": "batch"}), device="cpu")
    frozen = estimate_llc(model, data, settings.model_copy(update={"bn_mode": "eval"}), device="cpu")
    assert batch.batchnorm_statistics == frozen.batchnorm_statistics == "none"
    assert batch.llc_trace == frozen.llc_trace


def test_an_early_high_learning_rate_checkpoint_samples_train_modes_function():
    """Issue 10's case: a ResNet18 a few steps into a run at learning rate 0.1, overconfident
    (loss far above ln K). Frozen statistics open steep descents along directions BatchNorm
    makes flat (docs/calibration.md); batch statistics sample the function training descended,
    the one devinterp's train mode samples, without its side effects. The LLC's sign at such a
    point is measured at scale by benchmarks/early_checkpoint.py."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, in_channels=3, stem="cifar")
    inputs, labels = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step in range(6):
        half = slice(0, 32) if step % 2 else slice(32, 64)
        loss = nn.functional.cross_entropy(model(inputs[half]), labels[half])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() > 2 * math.log(4)  # far from any minimum
    data = TensorDataset(inputs, labels)
    settings = SamplerSettings(num_chains=2, num_draws=6, batch_size=32, epsilon=1e-5, gamma=1000.0, precision="fp32")
    default = estimate_llc(model, data, settings, device="cpu")
    train_mode = estimate_llc(model, data, settings.model_copy(update={"bn_mode": "train"}), device="cpu")
    assert default.batchnorm_statistics == train_mode.batchnorm_statistics == "batch"
    assert numpy.allclose(default.llc_trace, train_mode.llc_trace, rtol=1e-4, atol=1e-6)


def test_batch_statistics_hash_neither_bn_stats_nor_bn_samples_and_eval_keeps_its_old_hash():
    default = SamplerSettings()
    assert settings_hash(default) == settings_hash(default.model_copy(update={"bn_stats": "checkpoint", "bn_samples": 64}))
    # Folders estimated with the defaults of llcv 0.4 and 0.5 (eval mode, recomputed statistics) keep their name.
    legacy = SamplerSettings(bn_mode="eval", nbeta="batch", num_burnin_steps=0)  # the temperature and burn-in of then
    assert hashed_settings(legacy) == {"bn_stats": "recompute", "bn_samples": 4096, "mala": False}
