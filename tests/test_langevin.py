"""The fused SGLD / RMSProp-SGLD update against devinterp's optimizer, and the seeded noise streams."""

from __future__ import annotations

import pytest
import torch

from llcv.langevin import NOISE_CHUNK, GaussianNoise, LangevinUpdate

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


def test_noise_is_reproducible_and_independent_of_the_thread_count():
    like = [torch.empty(NOISE_CHUNK + 7), torch.empty(3, NOISE_CHUNK // 2)]  # three chunks
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = GaussianNoise(like, seed=11)
        assert single.workers == 1
        serial = [[view.clone() for view in single.draw()] for _ in range(2)]
        torch.set_num_threads(2)
        parallel_noise = GaussianNoise(like, seed=11)
        assert parallel_noise.workers == 2
        parallel = [[view.clone() for view in parallel_noise.draw()] for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(serial, parallel):
        for a, b in zip(first, second):
            assert torch.equal(a, b)
    assert not torch.equal(serial[0][0], serial[1][0])  # each draw is fresh
    other_seed = GaussianNoise(like, seed=12).draw()
    assert not torch.equal(other_seed[0], serial[0][0])


def test_noise_is_standard_normal_and_chunks_are_independent():
    like = [torch.empty(2 * NOISE_CHUNK)]
    values = GaussianNoise(like, seed=0).draw()[0]
    assert [view.shape for view in GaussianNoise(like, seed=0).views] == [like[0].shape]
    assert abs(values.mean().item()) < 5e-3 and abs(values.std().item() - 1.0) < 5e-3
    first, second = values[:NOISE_CHUNK], values[NOISE_CHUNK:]
    assert not torch.equal(first, second)
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 5e-3


def test_noise_views_take_the_layout_of_their_tensors():
    channels_last = torch.empty(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    noise = GaussianNoise([channels_last, torch.empty(5)], seed=3)
    views = noise.draw()
    assert views[0].stride() == channels_last.stride() and views[1].shape == (5,)
    assert torch.equal(torch.cat([views[0].permute(0, 2, 3, 1).reshape(-1), views[1]]), noise.buffer)
