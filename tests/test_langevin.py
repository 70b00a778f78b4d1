"""The fused SGLD / RMSProp-SGLD update against devinterp's optimizer, and the seeded noise streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llcv.sampling.langevin import GaussianNoise, LangevinUpdate

SHAPES = [(5, 3), (3,), (2, 2, 3, 3)]


def quadratic_gradient(parameters: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
    """Sets ``.grad`` to the gradient of 0.5 * |w - target|^2 scaled per tensor, a loss with curvature."""
    for index, (parameter, target) in enumerate(zip(parameters, targets)):
        parameter.grad = (index + 1.0) * (parameter.detach() - target)


def start(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(shape, generator=generator) for shape in SHAPES]
    targets = [torch.randn(shape, generator=generator) for shape in SHAPES]
    return weights, targets


@pytest.mark.parametrize("sampler", ["sgld", "rmsprop_sgld"])
@pytest.mark.parametrize("gamma", [0.0, 30.0])
@pytest.mark.parametrize("with_potential_gradient", [False, True])
def test_update_matches_devinterp_step_for_step(sampler, gamma, with_potential_gradient):
    """Same start, same gradients, same noise: the weights agree with devinterp's SGMCMC after 20 steps."""
    import warnings

    from devinterp.optim.sgmcmc import SGMCMC

    epsilon, nbeta = 1e-2, 7.0
    weights, targets = start()
    theirs = [weight.clone().requires_grad_(True) for weight in weights]
    ours = [weight.clone().requires_grad_(True) for weight in weights]
    factory = SGMCMC.rmsprop_sgld if sampler == "rmsprop_sgld" else SGMCMC.sgld
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = factory(theirs, lr=epsilon, localization=gamma, nbeta=nbeta)
    update = LangevinUpdate(ours, [weight.clone() for weight in weights], sampler, epsilon, gamma, nbeta)
    for step in range(20):
        torch.manual_seed(step)
        quadratic_gradient(theirs, targets)
        optimizer.step()
        # devinterp draws each parameter's noise in order from the global generator.
        torch.manual_seed(step)
        noise = [torch.normal(mean=0.0, std=1.0, size=weight.size()) for weight in ours]
        quadratic_gradient(ours, targets)
        before = [weight.detach().clone() for weight in ours]
        gradient = update.potential_gradient(update.offsets()) if with_potential_gradient else None
        displacement = update.step(noise, gradient)
        if with_potential_gradient:
            for moved, after, was in zip(displacement, ours, before):
                torch.testing.assert_close(moved, after.detach() - was, rtol=1e-4, atol=1e-6)
        else:
            assert displacement is None
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine.detach(), reference.detach(), rtol=1e-5, atol=1e-6)


def test_parameter_the_loss_does_not_reach_only_diffuses():
    weights, _ = start()
    parameters = [weight.clone() for weight in weights]
    update = LangevinUpdate(parameters, [weight.clone() for weight in weights], "sgld", 1e-2, 0.0, 5.0)
    noise = [torch.ones_like(weight) for weight in weights]
    update.step(noise)
    for moved, was in zip(parameters, weights):
        torch.testing.assert_close(moved - was, torch.full_like(was, 0.1))


DOCUMENTED_CHUNK = 1 << 18


def documented_stream(seed: int, size: int, draws: int = 1) -> list[torch.Tensor]:
    """The noise llcv/sampling/langevin.py promises: per draw, chunk k of 2^18 elements is ``normal_`` from
    its own generator, seeded with the k-th state of ``SeedSequence(seed)``."""
    sizes = [min(DOCUMENTED_CHUNK, size - start) for start in range(0, size, DOCUMENTED_CHUNK)]
    states = np.random.SeedSequence(seed).generate_state(len(sizes))
    generators = [torch.Generator().manual_seed(int(state)) for state in states]
    return [
        torch.cat([torch.empty(chunk).normal_(generator=generator) for chunk, generator in zip(sizes, generators)])
        for _ in range(draws)
    ]


def test_noise_is_the_documented_stream():
    noise = GaussianNoise([torch.empty(1000), torch.empty(3, 5)], seed=11)
    draws = [torch.cat([view.reshape(-1) for view in noise.draw()]) for _ in range(3)]
    for values, expected in zip(draws, documented_stream(11, 1015, draws=3)):
        assert torch.equal(values, expected)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_noise_over_many_chunks_is_the_documented_stream_whatever_the_thread_count(threads):
    shapes = [(DOCUMENTED_CHUNK + 5,), (3, DOCUMENTED_CHUNK // 2), (17,)]
    size = sum(int(np.prod(shape)) for shape in shapes)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        noise = GaussianNoise([torch.empty(shape) for shape in shapes], seed=5)
        draws = [torch.cat([view.reshape(-1) for view in noise.draw()]) for _ in range(2)]
    finally:
        torch.set_num_threads(before)
    assert noise.helpers == threads - 1
    for values, expected in zip(draws, documented_stream(5, size, draws=2)):
        assert torch.equal(values, expected)


def test_noise_is_standard_normal_and_fresh_at_every_draw():
    noise = GaussianNoise([torch.empty(1 << 20)], seed=0)
    first = noise.draw()[0].clone()
    second = noise.draw()[0]
    assert abs(first.mean().item()) < 5e-3 and abs(first.std().item() - 1.0) < 5e-3
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 5e-3
    assert not torch.equal(GaussianNoise([torch.empty(8)], seed=1).draw()[0], GaussianNoise([torch.empty(8)], seed=2).draw()[0])


def test_noise_views_take_the_layout_of_their_tensors():
    channels_last = torch.empty(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    views = GaussianNoise([channels_last, torch.empty(5)], seed=3).draw()
    assert views[0].stride() == channels_last.stride() and views[1].shape == (5,)
    in_memory_order = torch.cat([views[0].permute(0, 2, 3, 1).reshape(-1), views[1]])
    assert torch.equal(in_memory_order, documented_stream(3, 53)[0])


def test_a_summed_draw_is_the_brownian_increment_of_as_many_draws_of_the_same_stream():
    like = [torch.empty(1000), torch.empty(3, 5)]
    fine = GaussianNoise(like, seed=11)
    coarse = GaussianNoise(like, seed=11)
    for _ in range(2):
        first = [view.clone() for view in fine.draw()]
        second = fine.draw()
        summed = coarse.draw_summed(2)
        for a, b, both in zip(first, second, summed):
            assert both.shape == a.shape and torch.allclose(both, (a + b) / math.sqrt(2))
    assert torch.equal(GaussianNoise(like, seed=3).draw_summed(1)[0], GaussianNoise(like, seed=3).draw()[0])
