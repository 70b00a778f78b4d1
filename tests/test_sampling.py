"""The LLC engine: correctness against independent computations, containment, reproducibility."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import TensorDataset

from llcv import LLCResult, SamplerSettings, build_model, estimate_llc
from llcv.sampling import estimate_llc_states
from llcv.sampling.chains import _mala_acceptance, _Point
from llcv.sampling.estimate import default_divergence_bound


class Quadratic(nn.Module):
    """A d-dimensional weight vector whose loss is 0.5 * curvature * |w|^2, whatever the data."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.weight.expand(len(inputs), -1)


def quadratic_loss(model: nn.Module, batch) -> torch.Tensor:
    return 0.5 * model.weight.square().sum()


def dummy_data(size: int = 8) -> TensorDataset:
    return TensorDataset(torch.zeros(size, 1), torch.zeros(size))


def regression(dim: int = 4, size: int = 400, seed: int = 0) -> tuple[nn.Module, TensorDataset]:
    """A linear regression placed at its least-squares fit (a regular model: LLC = dim / 2)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, dim, generator=generator)
    targets = inputs @ torch.randn(dim, 1, generator=generator) + torch.randn(size, 1, generator=generator)
    model = nn.Linear(dim, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets).solution.T)
    return model, TensorDataset(inputs, targets)


REGRESSION_SETTINGS = dict(epsilon=2e-4, gamma=1.0, nbeta=200.0, num_draws=400, num_burnin_steps=200, batch_size=400)


def test_mala_formula_matches_devinterp():
    from devinterp.slt.mala import mala_acceptance_probability

    generator = torch.Generator().manual_seed(1)
    shapes = [(3, 2), (4,)]
    weights, points = [], []
    for _ in range(2):
        weights.append([torch.randn(1, *shape, generator=generator) for shape in shapes])
        gradient = [torch.randn(1, *shape, generator=generator) for shape in shapes]
        points.append(_Point(gradient, torch.rand(1, generator=generator)))
    previous, current = points
    epsilon = 0.05
    displacement = [after - before for before, after in zip(*weights)]
    ours = _mala_acceptance(displacement, previous, current, epsilon).item()
    theirs = mala_acceptance_probability(
        [w[0] for w in weights[0]],
        [g[0] for g in previous.gradient],
        previous.potential[0],
        [w[0] for w in weights[1]],
        [g[0] for g in current.gradient],
        current.potential[0],
        epsilon,
    )
    assert ours == pytest.approx(float(theirs), rel=1e-5)


def test_mala_matches_an_independent_replay_of_the_chain():
    """Replay the chain's exact trajectory outside llcv and recompute each acceptance with devinterp."""
    from devinterp.slt.mala import mala_acceptance_probability

    from llcv.sampling.estimate import _chain_seeds

    dim, epsilon, nbeta = 6, 0.3, 2.0
    settings = SamplerSettings(epsilon=epsilon, gamma=0.0, nbeta=nbeta, num_chains=1, num_draws=40, num_burnin_steps=0, batch_size=8, mala=True)
    result = estimate_llc(Quadratic(dim), dummy_data(), settings, loss=quadratic_loss, device="cpu")

    # llcv's documented noise stream (llcv/sampling/langevin.py); 6 weights are one chunk, so one generator.
    state = np.random.SeedSequence(_chain_seeds(settings.seed, 1)[0]).generate_state(1)[0]
    noise_generator = torch.Generator().manual_seed(int(state))
    weights = torch.zeros(1, dim)
    states = []
    for _ in range(settings.num_draws):
        gradient = nbeta * weights
        states.append((weights.clone(), gradient, nbeta * 0.5 * weights.square().sum()))
        noise = torch.randn(weights.size(), generator=noise_generator)
        weights = weights.add(gradient, alpha=-0.5 * epsilon).add(noise, alpha=epsilon**0.5)
    replayed_losses = [state[2].item() / nbeta for state in states]
    assert result.loss_trace[0] == pytest.approx(replayed_losses, rel=1e-5, abs=1e-7)
    expected = [
        float(mala_acceptance_probability(prev[0], prev[1], prev[2], cur[0], cur[1], cur[2], epsilon))
        for prev, cur in zip(states, states[1:])
    ]
    assert result.mala_acceptance == pytest.approx(np.mean(expected), rel=1e-4)


@pytest.mark.parametrize("sampler", ["sgld", "rmsprop_sgld"])
@pytest.mark.parametrize("every", [1, 3])
def test_reused_update_buffers_give_the_same_chain_as_fresh_ones(monkeypatch, sampler, every):
    """The update and MALA write into buffers kept across steps; the chain and every acceptance
    must be what fresh tensors at every step give (the pre-buffer code)."""
    from llcv.sampling.langevin import LangevinUpdate

    settings = SamplerSettings(
        epsilon=0.05, gamma=3.0, nbeta=2.0, num_chains=2, num_draws=30, num_steps_bw_draws=every, batch_size=8,
        sampler=sampler, mala=True, chain_mode="sequential",
    )
    reused = estimate_llc(Quadratic(6), dummy_data(), settings, loss=quadratic_loss, device="cpu")
    monkeypatch.setattr(LangevinUpdate, "_buffer", lambda self, name: [torch.empty_like(p) for p in self.parameters])
    fresh = estimate_llc(Quadratic(6), dummy_data(), settings, loss=quadratic_loss, device="cpu")
    assert reused.loss_trace == fresh.loss_trace
    assert reused.mala_acceptance_per_chain == pytest.approx(fresh.mala_acceptance_per_chain, rel=1e-6)
    assert 0.0 < reused.mala_acceptance < 1.0


@pytest.mark.parametrize("epsilon, low, high", [(1e-5, 0.99, 1.0), (1.9, 0.0, 0.7)])
def test_mala_acceptance_falls_from_one_as_the_step_grows(epsilon, low, high):
    settings = SamplerSettings(epsilon=epsilon, gamma=0.0, nbeta=1.0, num_chains=2, num_draws=200, batch_size=8, mala=True)
    result = estimate_llc(Quadratic(20), dummy_data(), settings, loss=quadratic_loss, device="cpu")
    assert low <= result.mala_acceptance <= high


def test_regular_model_recovers_half_the_dimension():
    model, data = regression(dim=4)
    settings = SamplerSettings(num_chains=4, **REGRESSION_SETTINGS)
    result = estimate_llc(model, data, settings, loss="mse", device="cpu")
    standard_error = result.llc_std / math.sqrt(4)
    assert abs(result.llc_mean - 2.0) < 3 * standard_error + 0.15 * 2.0
    assert result.diagnostics.diverged_chains == 0
    assert result.diagnostics.r_hat < 1.1


def test_caller_model_and_global_rng_untouched():
    model, data = regression()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    estimate_llc(model, data, SamplerSettings(num_chains=2, num_draws=20, epsilon=1e-3, gamma=10.0), loss="mse", device="cpu")
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert torch.equal(rng_before, torch.get_rng_state())
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_same_seed_same_result_other_seed_other_result():
    model, data = regression()
    settings = SamplerSettings(num_chains=2, num_draws=30, epsilon=1e-3, gamma=10.0, batch_size=32)
    first = estimate_llc(model, data, settings, loss="mse", device="cpu")
    again = estimate_llc(model, data, settings, loss="mse", device="cpu")
    other = estimate_llc(model, data, settings.model_copy(update={"seed": 1}), loss="mse", device="cpu")
    assert first.llc_trace == again.llc_trace
    assert first.llc_trace != other.llc_trace


def test_batched_and_sequential_chains_agree_statistically():
    model, data = regression()
    estimates = {}
    for mode in ("batched", "sequential"):
        # fp32 pinned: `auto` times bf16 against fp32 on the run's model, and either mode may win
        # the trial on a CPU with native bf16, which would change the initial loss's rounding.
        settings = SamplerSettings(num_chains=6, chain_mode=mode, precision="fp32", **REGRESSION_SETTINGS)
        result = estimate_llc(model, data, settings, loss="mse", device="cpu")
        assert result.chain_execution == mode
        estimates[mode] = result
    batched, sequential = estimates["batched"], estimates["sequential"]
    combined_error = math.sqrt(batched.llc_std**2 / 6 + sequential.llc_std**2 / 6)
    assert abs(batched.llc_mean - sequential.llc_mean) < 4 * combined_error + 0.05
    assert batched.init_loss == pytest.approx(sequential.init_loss)


def test_agrees_with_devinterp_on_a_model_without_batchnorm():
    from devinterp.optim.sgmcmc import SGMCMC
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader

    model, data = regression(dim=4)
    settings = SamplerSettings(num_chains=4, epsilon=2e-4, gamma=1.0, nbeta=200.0, num_draws=300, num_burnin_steps=200, batch_size=100)
    ours = estimate_llc(model, data, settings, loss="mse", device="cpu")
    loader = DataLoader(data, batch_size=100, shuffle=True, generator=torch.Generator().manual_seed(0))
    theirs = estimate_learning_coeff_with_summary(
        model,
        loader,
        evaluate=lambda module, batch: nn.functional.mse_loss(module(batch[0]), batch[1]),
        sampling_method=SGMCMC.sgld,
        optimizer_kwargs=dict(lr=2e-4, localization=1.0, nbeta=200.0),
        num_chains=4,
        num_draws=300,
        num_burnin_steps=200,
        init_loss=ours.init_loss,
        seed=0,
        verbose=False,
    )
    their_per_chain = np.asarray([float(theirs[f"llc-chain/{chain}"]) for chain in range(4)])
    combined_error = math.sqrt(ours.llc_std**2 / 4 + their_per_chain.std(ddof=1) ** 2 / 4)
    assert abs(ours.llc_mean - their_per_chain.mean()) < 4 * combined_error


def test_batchnorm_resnet_eval_mode_is_finite_and_reproducible():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, in_channels=3, stem="cifar")
    data = TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,)))
    settings = SamplerSettings(num_chains=2, num_draws=3, num_burnin_steps=0, batch_size=8, epsilon=1e-6, gamma=1000.0, bn_mode="eval")
    first = estimate_llc(model, data, settings, device="cpu")
    second = estimate_llc(model, data, settings, device="cpu")
    assert first.llc_mean is not None and math.isfinite(first.llc_mean)
    assert first.llc_trace == second.llc_trace
    train_mode = estimate_llc(model, data, settings.model_copy(update={"bn_mode": "train"}), device="cpu")
    assert train_mode.chain_execution == "sequential"  # BatchNorm's running-stat updates do not vmap
    assert train_mode.init_loss != first.init_loss


def test_result_round_trips_through_json_with_nulls_for_non_finite():
    model, data = regression()
    settings = SamplerSettings(num_chains=2, num_draws=10, epsilon=10.0, gamma=0.0, batch_size=32)
    result = estimate_llc(model, data, settings, loss="mse", device="cpu")
    text = json.dumps(result.to_dict(), allow_nan=False)
    restored = LLCResult.from_dict(json.loads(text))
    assert restored.to_dict() == result.to_dict()


def test_diverging_setting_is_reported_not_averaged():
    model, data = regression()
    settings = SamplerSettings(num_chains=3, num_draws=50, epsilon=10.0, gamma=0.0, batch_size=32)
    result = estimate_llc(model, data, settings, loss="mse", device="cpu")
    assert result.diagnostics.diverged_chains == 3
    assert result.llc_mean is None and result.llc_per_chain == [None, None, None]
    assert any("diverged" in warning for warning in result.diagnostics.warnings)


def test_default_divergence_bound_does_not_fire_on_a_healthy_tiny_model():
    model, data = regression(dim=2)
    settings = SamplerSettings(num_chains=4, num_draws=300, epsilon=1e-3, gamma=1.0, nbeta=400.0, batch_size=10)
    result = estimate_llc(model, data, settings, loss="mse", device="cpu")
    assert result.diagnostics.diverged_chains == 0
    assert default_divergence_bound(2, 400.0, result.init_loss, 0.0) == 400.0 * max(result.init_loss, 1.0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epsilon", 0.0, "greater than 0"),
        ("gamma", -1.0, "greater than or equal to 0"),
        ("num_chains", 0, "greater than 0"),
        ("num_draws", 0, "greater than 0"),
        ("batch_size", 0, "greater than 0"),
        ("sampler", "hmc", "sgld"),
        ("bn_mode", "frozen", "eval"),
    ],
)
def test_bad_settings_are_rejected_with_a_message(field, value, message):
    with pytest.raises(ValidationError, match=message):
        SamplerSettings(**{field: value})


def test_dataloader_input_and_rmsprop_sampler():
    from torch.utils.data import DataLoader

    model, data = regression()
    loader = DataLoader(data, batch_size=50, shuffle=False)
    settings = SamplerSettings(num_chains=2, num_draws=30, epsilon=1e-3, gamma=10.0, sampler="rmsprop_sgld")
    result = estimate_llc(model, loader, settings, loss="mse", device="cpu")
    assert result.llc_mean is not None and result.num_samples_used == 400
    assert result.nbeta == pytest.approx(400 / math.log(400)) and result.nbeta_rule == "data"
    batch = estimate_llc(model, loader, settings.model_copy(update={"nbeta": "batch"}), loss="mse", device="cpu")
    assert batch.nbeta == pytest.approx(50 / math.log(50)) and batch.nbeta_rule == "batch"  # the loader's batch


# --- the temperature and the burn-in

QUICK = dict(num_chains=1, num_draws=2, num_burnin_steps=0, epsilon=1e-6, gamma=1.0)


def test_the_default_temperature_is_n_over_ln_n_of_the_sampled_data_whatever_the_batch():
    model, data = regression(size=400)
    for batch_size in (32, 100):
        result = estimate_llc(model, data, SamplerSettings(num_samples=300, batch_size=batch_size, **QUICK), loss="mse", device="cpu")
        assert result.nbeta == pytest.approx(300 / math.log(300)) and result.nbeta_rule == "data"
        assert result.settings["nbeta"] == "data"  # the settings as asked
    whole = estimate_llc(model, data, SamplerSettings(batch_size=32, **QUICK), loss="mse", device="cpu")
    assert whole.nbeta == pytest.approx(400 / math.log(400))  # the whole training split


def test_the_batch_rule_is_devinterps_and_a_number_is_set():
    model, data = regression(size=400)
    batch = estimate_llc(model, data, SamplerSettings(nbeta="batch", batch_size=32, **QUICK), loss="mse", device="cpu")
    assert batch.nbeta == pytest.approx(32 / math.log(32)) and batch.nbeta_rule == "batch"
    capped = estimate_llc(model, data, SamplerSettings(nbeta="batch", batch_size=1000, **QUICK), loss="mse", device="cpu")
    assert capped.nbeta == pytest.approx(400 / math.log(400))  # the minibatch is capped at the data
    fixed = estimate_llc(model, data, SamplerSettings(nbeta=7.5, batch_size=32, **QUICK), loss="mse", device="cpu")
    assert fixed.nbeta == 7.5 and fixed.nbeta_rule == "set"


def test_resolve_nbeta_applies_each_rule():
    from llcv.sampling.estimate import batch_nbeta, data_nbeta, default_nbeta, resolve_nbeta

    assert resolve_nbeta("data", 1438, 256) == data_nbeta(1438) == pytest.approx(197.8, abs=0.05)
    assert resolve_nbeta("batch", 1438, 256) == batch_nbeta(256) == default_nbeta(256) == pytest.approx(256 / math.log(256))
    assert resolve_nbeta("batch", 100, 256) == batch_nbeta(100) and resolve_nbeta(3.0, 100, 256) == 3.0
    assert data_nbeta(1) == batch_nbeta(1) == 1.0


@pytest.mark.parametrize(
    ("changes", "steps", "rule"),
    [
        (dict(epsilon=1e-3, gamma=10.0, num_draws=100), 200, "auto"),  # 2 / (epsilon * gamma), under the cap of 400
        (dict(epsilon=1e-3, gamma=10.0, num_draws=20), 80, "auto-capped"),  # needs 200: 4 x 20 draws
        (dict(epsilon=1e-3, gamma=10.0, num_draws=20, num_steps_bw_draws=5), 200, "auto"),  # the cap counts the draws' steps
        (dict(gamma=0.0, num_draws=30), 120, "auto-capped"),  # nothing pulls the chains back: the cap
        (dict(epsilon=1e-3, gamma=10.0, num_draws=20, num_burnin_steps=7), 7, "set"),
    ],
)
def test_the_automatic_burn_in_is_the_relaxation_up_to_its_cap(changes, steps, rule):
    from llcv.relaxation import AUTO_BURNIN_DRAW_FACTOR
    from llcv.sampling import resolve_burnin

    assert AUTO_BURNIN_DRAW_FACTOR == 4
    burnin = resolve_burnin(SamplerSettings(**changes))
    assert (burnin.steps, burnin.rule) == (steps, rule)


def test_an_estimate_runs_the_automatic_burn_in_and_records_it():
    model, data = regression(size=100)
    settings = SamplerSettings(num_chains=2, num_draws=10, epsilon=0.05, gamma=4.0, batch_size=50)  # relaxes in 10 steps
    result = estimate_llc(model, data, settings, loss="mse", device="cpu")
    assert (result.burnin_steps, result.burnin_rule) == (10, "auto")
    assert [len(chain) for chain in result.burnin_loss_trace] == [10, 10] and result.settings["num_burnin_steps"] == "auto"
    set_outright = estimate_llc(model, data, settings.model_copy(update={"num_burnin_steps": 3}), loss="mse", device="cpu")
    assert (set_outright.burnin_steps, set_outright.burnin_rule, len(set_outright.burnin_loss_trace[0])) == (3, "set", 3)
    from llcv.cli_render import burnin_text, nbeta_text

    assert burnin_text(result) == "10 (auto: 2/(epsilon*gamma))" and burnin_text(set_outright) == "3 (set)"
    assert nbeta_text(result) == f"{100 / math.log(100):.4g} (n/ln n of 100 samples)"


def two_part_regression(size: int = 400) -> tuple[nn.Module, TensorDataset]:
    """A linear regression with 3 weights and 1 bias, at its least-squares fit."""
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(size, 3, generator=generator)
    targets = inputs @ torch.randn(3, 1, generator=generator) + 0.5 + torch.randn(size, 1, generator=generator)
    design = torch.cat([inputs, torch.ones(size, 1)], dim=1)
    solution = torch.linalg.lstsq(design, targets).solution
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(solution[:3].T)
        model.bias.copy_(solution[3])
    return model, TensorDataset(inputs, targets)


@pytest.mark.parametrize("patterns, dimension", [(["bias"], 1), (["weight"], 3), (None, 4)])
def test_weight_refined_llc_counts_only_the_sampled_parameters(patterns, dimension):
    model, data = two_part_regression()
    settings = SamplerSettings(num_chains=4, params=patterns, **REGRESSION_SETTINGS)
    result = estimate_llc(model, data, settings, loss="mse", device="cpu")
    assert result.num_parameters == dimension
    assert result.settings["params"] == patterns
    standard_error = result.llc_std / 2
    assert abs(result.llc_mean - dimension / 2) < 3 * standard_error + 0.15 * dimension / 2


def test_frozen_parameters_are_bit_for_bit_unchanged(monkeypatch):
    from llcv.sampling import estimate as sampling

    model, data = two_part_regression()
    seen = {}
    original = sampling._run_group

    def spy(group, *args, **kwargs):
        traces = original(group, *args, **kwargs)
        seen["bias"] = group.loss_module.model.bias.detach().clone()
        seen["moved"] = not torch.equal(group.parameters[0][0], model.weight.detach())
        return traces

    monkeypatch.setattr(sampling, "_run_group", spy)
    estimate_llc(model, data, SamplerSettings(num_chains=1, num_draws=20, params=["weight"], epsilon=1e-3), loss="mse", device="cpu")
    assert torch.equal(seen["bias"], model.bias.detach())
    assert seen["moved"]


def test_no_matching_parameter_lists_the_blocks():
    model = build_model("smallcnn", num_classes=4, in_channels=3)
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,)))
    with pytest.raises(Exception, match="conv1, conv2, fc1, fc2"):
        estimate_llc(model, data, SamplerSettings(params=["layer9.*"], num_draws=2), device="cpu")


def test_data_refined_llc_uses_only_the_chosen_classes():
    """Each class has its own constant loss, so the initial loss reveals which samples were used."""

    class PerClassLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, inputs):
            return inputs * self.scale

    data = TensorDataset(torch.arange(4.0).repeat(10), torch.arange(4).repeat(10))
    data.targets = data.tensors[1]
    loss = lambda model, batch: model(batch[0]).mean()  # noqa: E731
    settings = SamplerSettings(num_chains=1, num_draws=2, batch_size=5, epsilon=1e-8, gamma=0.0, nbeta=1.0)
    only_three = estimate_llc(PerClassLoss(), data, settings.model_copy(update={"classes": [3]}), loss=loss, device="cpu")
    one_and_two = estimate_llc(PerClassLoss(), data, settings.model_copy(update={"classes": [1, 2]}), loss=loss, device="cpu")
    assert only_three.init_loss == pytest.approx(3.0) and only_three.num_samples_used == 10
    assert one_and_two.init_loss == pytest.approx(1.5) and one_and_two.num_samples_used == 20


def test_bf16_estimate_agrees_with_fp32_within_sampling_error(trained_run):
    """bf16 autocast changes only the forward/backward precision, not what is estimated."""
    from llcv.targets import Target

    _, run = trained_run
    target = Target(run.checkpoints[-1]).load()
    settings = SamplerSettings(num_chains=4, num_draws=80, num_burnin_steps=20, batch_size=64, epsilon=1e-3, gamma=100.0)
    fp32 = estimate_llc(target.model, target.dataset, settings, device="cpu")
    bf16 = estimate_llc(target.model, target.dataset, settings.model_copy(update={"precision": "bf16"}), device="cpu")
    combined_error = math.sqrt(fp32.llc_std**2 / 4 + bf16.llc_std**2 / 4)
    assert bf16.init_loss == pytest.approx(fp32.init_loss, rel=0.05)
    assert abs(bf16.llc_mean - fp32.llc_mean) < 4 * combined_error + 0.1 * abs(fp32.llc_mean)


def small_batchnorm_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))


def test_chains_fall_back_to_one_at_a_time_where_vmap_cannot_run_the_model():
    torch.manual_seed(0)
    model = small_batchnorm_model()
    data = TensorDataset(torch.randn(16, 3, 6, 6), torch.randint(0, 4, (16,)))
    model(data.tensors[0][:2])  # materialise the lazy layer
    settings = SamplerSettings(num_chains=2, num_draws=3, batch_size=8, epsilon=1e-5, gamma=100.0)
    assert estimate_llc(model, data, settings, device="cpu").chain_execution == "batched"
    train_mode = settings.model_copy(update={"bn_mode": "train"})
    assert estimate_llc(model, data, train_mode, device="cpu").chain_execution == "sequential"
    with pytest.raises(Exception, match="chain_mode='batched' is not possible"):
        estimate_llc(model, data, train_mode.model_copy(update={"chain_mode": "batched"}), device="cpu")


def test_large_models_run_chains_one_at_a_time_by_default():
    from llcv.sampling.execution import BATCHED_MAX_PARAMETERS

    model = nn.Linear(BATCHED_MAX_PARAMETERS, 1)
    data = TensorDataset(torch.randn(4, BATCHED_MAX_PARAMETERS), torch.randn(4, 1))
    settings = SamplerSettings(num_chains=2, num_draws=2, batch_size=4, epsilon=1e-6)
    assert estimate_llc(model, data, settings, loss="mse", device="cpu").chain_execution == "sequential"


def test_initial_loss_uses_a_seeded_subset_when_capped():
    """Per-sample losses 0..39: the full pass gives 19.5, a capped pass the mean of its subset."""

    class Identity(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, inputs):
            return inputs * self.scale

    data = TensorDataset(torch.arange(40.0), torch.zeros(40, dtype=torch.long))
    loss = lambda model, batch: model(batch[0]).mean()  # noqa: E731
    settings = SamplerSettings(num_chains=1, num_draws=1, batch_size=8, epsilon=1e-8, gamma=0.0, nbeta=1.0)
    full = estimate_llc(Identity(), data, settings.model_copy(update={"init_loss_samples": None}), loss=loss, device="cpu")
    capped = estimate_llc(Identity(), data, settings.model_copy(update={"init_loss_samples": 8}), loss=loss, device="cpu")
    again = estimate_llc(Identity(), data, settings.model_copy(update={"init_loss_samples": 8}), loss=loss, device="cpu")
    assert full.init_loss == pytest.approx(19.5)
    assert capped.init_loss == again.init_loss != pytest.approx(19.5)
    assert float(capped.init_loss * 8).is_integer()  # the mean of 8 of the per-sample losses


def test_a_subsets_initial_loss_reports_the_error_it_has():
    """The initial loss of a subset misses the whole data's by as much as its standard error says
    (over 60 seeded subsets); a full pass has none; a subset of less than one batch is measured
    in pieces so that its error is known, except where batches must keep the chains' size."""
    from llcv.sampling import resolve_loss
    from llcv.sampling.estimate import _initial_loss
    from llcv.sampling import SamplingData

    model, data = regression(size=4000)
    settings = SamplerSettings(num_chains=1, num_draws=1, batch_size=64, epsilon=1e-8, gamma=0.0, nbeta=1.0)
    prepared = SamplingData(data, settings, torch.device("cpu"))
    mse = resolve_loss("mse")

    def initial(**changes):
        return _initial_loss(model, prepared, mse, settings.model_copy(update=changes), "fp32")

    full = initial(init_loss_samples=None)
    assert full.standard_error == 0
    subsets = [initial(init_loss_samples=500, seed=seed) for seed in range(60)]
    misses = np.array([subset.value - full.value for subset in subsets])
    reported = np.mean([subset.standard_error for subset in subsets])
    assert reported == pytest.approx(misses.std(ddof=1), rel=0.3)
    small = initial(init_loss_samples=40)
    assert small.standard_error > 0 and small.batch_spread == pytest.approx(full.batch_spread, rel=0.6)
    one_batch = _initial_loss(model, prepared, mse, settings.model_copy(update={"init_loss_samples": 64}), "fp32", batch_statistics=True)
    assert one_batch.standard_error is None


def test_the_estimates_standard_error_includes_its_initial_loss_error():
    model, data = regression(size=4000)
    settings = SamplerSettings(**{**REGRESSION_SETTINGS, "num_draws": 100, "num_burnin_steps": 100, "batch_size": 100})
    subset = estimate_llc(model, data, settings.model_copy(update={"init_loss_samples": 400}), loss="mse", device="cpu")
    every = estimate_llc(model, data, settings.model_copy(update={"init_loss_samples": None}), loss="mse", device="cpu")
    assert subset.init_loss_se > 0 and every.init_loss_se == 0
    chains_part = max(subset.diagnostics.llc_mcse, subset.llc_std / 2)  # 4 chains
    assert subset.diagnostics.llc_se == pytest.approx(math.hypot(chains_part, subset.nbeta * subset.init_loss_se))
    assert subset.diagnostics.llc_se > 2 * chains_part
    assert every.diagnostics.llc_se == pytest.approx(max(every.diagnostics.llc_mcse, every.llc_std / 2))
    # one seed, so the same chains: the LLCs differ by the initial losses' difference alone
    assert subset.llc_mean - every.llc_mean == pytest.approx(subset.nbeta * (every.init_loss - subset.init_loss))
    assert abs(subset.llc_mean - every.llc_mean) < 4 * subset.diagnostics.llc_se
    # the estimate table names both parts
    from llcv.cli_render import standard_error_text

    shown = standard_error_text(subset)
    assert shown.startswith(f"{subset.diagnostics.llc_se:.2g}: chains {chains_part:.2g} (MCSE {subset.diagnostics.llc_mcse:.2g})")
    assert f"initial loss {subset.nbeta * subset.init_loss_se:.2g} (measured on a subset)" in shown
    assert standard_error_text(every).endswith("initial loss exact (every sample counted)")


def test_fallback_to_one_chain_at_a_time_is_said_in_verbose_output(caplog):
    torch.manual_seed(0)
    model = small_batchnorm_model()
    data = TensorDataset(torch.randn(16, 3, 6, 6), torch.randint(0, 4, (16,)))
    model(data.tensors[0][:2])
    settings = SamplerSettings(num_chains=2, num_draws=3, batch_size=8, epsilon=1e-5, gamma=100.0, bn_mode="train")
    with caplog.at_level("INFO", logger="llcv"):
        estimate_llc(model, data, settings, device="cpu")
    assert any("running chains one at a time" in message and "does not support batched" in message for message in caplog.messages)


@pytest.mark.parametrize("precision, channels_last", [("bf16", True), ("fp32", True), ("fp32", False)])
def test_channels_last_chains_keep_convolution_weights_in_the_inputs_layout(precision, channels_last):
    from llcv.sampling.chains import _ChainGroup, _LossModule
    from llcv.sampling import resolve_loss

    model = small_batchnorm_model()
    model(torch.randn(2, 3, 6, 6))
    names = [name for name, _ in model.named_parameters()]
    initial = [parameter.detach().clone() for parameter in model.parameters()]
    group = _ChainGroup(_LossModule(model, resolve_loss("cross_entropy")), names, initial, 1, False, precision, channels_last)
    convolution = group.parameters[names.index("0.weight")].squeeze(0)
    assert convolution.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(convolution, initial[0]) and group.parameters[0].is_leaf
    batch = [torch.randn(4, 3, 6, 6), torch.randint(0, 4, (4,))]
    group.losses(batch, shared=True).sum().backward()
    assert group.parameters[0].grad.shape == group.parameters[0].shape


def test_coupled_batches_take_the_first_of_each_group_or_join_the_group_into_one_batch():
    from llcv.sampling.chains import coupled_batches

    stream = [[torch.full((3, 2), float(step)), torch.full((3,), step)] for step in range(6)]  # shared: samples first
    first = list(coupled_batches(iter(stream), 2, shared=True, whole=False))
    assert [int(batch[1][0]) for batch in first] == [0, 2, 4]
    joined = list(coupled_batches(iter(stream), 2, shared=True, whole=True))
    assert len(joined) == 3 and joined[1][0].shape == (6, 2) and joined[1][1].tolist() == [2, 2, 2, 3, 3, 3]
    stacked = [[torch.full((4, 3, 2), float(step)), torch.full((4, 3), step)] for step in range(4)]  # chains x samples
    joined = list(coupled_batches(iter(stacked), 2, shared=False, whole=True))
    assert joined[0][0].shape == (4, 6, 2) and joined[1][1][0].tolist() == [2, 2, 2, 3, 3, 3]


def test_a_run_on_joined_batches_follows_the_run_on_their_first_far_closer_than_an_independent_one():
    # Two runs at one step and one seed, one on each step's first minibatch of two, the other on both
    # joined (twice the batch, containing the first): the same noise, nested batches, and draws read
    # on the same first minibatch, so their difference keeps only where the larger batch moves the
    # chains (measured: 31 times closer than an independent run on this regression).
    model, data = regression()
    settings = SamplerSettings(**{**REGRESSION_SETTINGS, "num_burnin_steps": 0, "batch_size": 50, "num_draws": 300, "seed": 4})
    first, _ = estimate_llc_states(model, data, settings, loss="mse", device="cpu", coupled_steps=2)
    joined, _ = estimate_llc_states(model, data, settings, loss="mse", device="cpu", coupled_steps=2, whole_coupled_batches=True)
    independent, _ = estimate_llc_states(
        model, data, settings.model_copy(update={"seed": 5}), loss="mse", device="cpu", coupled_steps=2, whole_coupled_batches=True
    )
    reference = np.array(first.llc_trace)
    joined_gap = np.abs(np.array(joined.llc_trace) - reference).mean()
    independent_gap = np.abs(np.array(independent.llc_trace) - reference).mean()
    assert 0 < joined_gap < independent_gap / 10


@pytest.mark.parametrize("batch_size", [400, 50])
def test_a_coupled_run_follows_the_run_at_half_its_step_far_closer_than_an_independent_one(batch_size):
    # With the summed noise (and, with minibatches, the first of each two batches) of the run at
    # half its step, the coupled run's draw j sits where that run's draw 2j does, on the same batch, up to the
    # discretisation: its difference is a small fraction of an independent run's.
    model, data = regression()
    settings = SamplerSettings(**{**REGRESSION_SETTINGS, "num_burnin_steps": 0, "batch_size": batch_size, "num_draws": 300, "seed": 4})
    fine, _ = estimate_llc_states(model, data, settings.model_copy(update={"epsilon": 1e-4, "num_draws": 600}), loss="mse", device="cpu")
    coupled, _ = estimate_llc_states(model, data, settings, loss="mse", device="cpu", coupled_steps=2)
    independent, _ = estimate_llc_states(model, data, settings.model_copy(update={"seed": 5}), loss="mse", device="cpu", coupled_steps=2)
    aligned = np.array(fine.llc_trace)[:, ::2]
    coupled_gap = np.abs(aligned - np.array(coupled.llc_trace)).mean()
    independent_gap = np.abs(aligned - np.array(independent.llc_trace)).mean()
    assert coupled_gap < independent_gap / 5
