"""The SGLD and RMSProp-SGLD updates, fused over all parameters, and their seeded Gaussian noise.

The update is devinterp 1.3's ``SGMCMC.sgld`` / ``SGMCMC.rmsprop_sgld`` step (Lau et al. 2023)
with noise level 1, no weight decay and no bounding box:

    w <- w - epsilon/2 * P * (nbeta * g + gamma * (w - w*)) + sqrt(epsilon * P) * xi

with ``xi`` standard normal, ``w*`` the checkpoint, and the preconditioner ``P`` equal to 1 for
SGLD and ``1 / (sqrt(V) + 0.1)`` for RMSProp-SGLD, where ``V <- 0.99 V + 0.01 g^2``.
``tests/test_langevin.py`` checks it against devinterp's optimizer step for step.

Why not call devinterp's optimizer: it loops over parameters in Python and allocates about ten
temporaries per parameter per step (on a ResNet18 on CPU, 44 ms of a 600 ms step, against
about 5 ms here for the same arithmetic as three ``torch._foreach_*`` passes). Drawing the noise
is the larger cost: torch draws normals on one CPU thread, 27 ms for ResNet18's 11M weights.
So on a multi-threaded CPU the next step's noise is drawn on a background thread while this
step's forward and backward passes run (``GaussianNoise``); on a ResNet18 that hid the whole draw.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

# Draws of at least this many elements are prepared ahead on a background thread; below it (0.7 ms
# of drawing) the hand-off between threads would cost more than it hides.
AHEAD_MIN_ELEMENTS = 1 << 18
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 0.1


class GaussianNoise:
    """Standard normal noise shaped like a list of dense tensors, reproducible from one seed.

    Each draw fills a buffer laid out as the tensors end to end, in memory order, with
    ``normal_`` from one generator seeded with the first state of
    ``numpy.random.SeedSequence(seed)``. On a CPU with more than one torch thread, draws of at
    least ``AHEAD_MIN_ELEMENTS`` are made one step ahead on a background thread into a second
    buffer; the values are the same either way. Call ``close`` when done.
    """

    def __init__(self, like: list[torch.Tensor], seed: int):
        device = like[0].device
        total = sum(tensor.numel() for tensor in like)
        state = np.random.SeedSequence(seed).generate_state(1)[0]
        self.generator = torch.Generator(device=device).manual_seed(int(state))
        self.ahead = device.type == "cpu" and torch.get_num_threads() > 1 and total >= AHEAD_MIN_ELEMENTS
        self.buffers = [torch.empty(total, device=device) for _ in range(2 if self.ahead else 1)]
        self.views = [_views_like(buffer, like) for buffer in self.buffers]
        self.next = 0
        self.pending: Future | None = _background_thread().submit(self._fill, 0) if self.ahead else None

    def draw(self) -> list[torch.Tensor]:
        """Fresh noise, as views shaped and strided like the tensors (valid until the next draw)."""
        if not self.ahead:
            self._fill(0)
            return self.views[0]
        self.pending.result()
        current, self.next = self.next, 1 - self.next
        self.pending = _background_thread().submit(self._fill, self.next)
        return self.views[current]

    def close(self) -> None:
        """Wait for a draw in flight, so no work outlives the chain."""
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def _fill(self, index: int) -> None:
        self.buffers[index].normal_(generator=self.generator)


def _views_like(buffer: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    # Each view has its tensor's strides (a channels-last weight gets channels-last noise), so the
    # update reads both in the same order.
    parts = buffer.split([tensor.numel() for tensor in like])
    return [part.as_strided(tensor.shape, tensor.stride()) for part, tensor in zip(parts, like)]


@lru_cache(maxsize=None)
def _thread_for_process(pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="llcv-noise")


def _background_thread() -> ThreadPoolExecutor:
    # Keyed by process: a forked child inherits the pool object but not its thread.
    return _thread_for_process(os.getpid())


class LangevinUpdate:
    """One sampler's update for a list of parameters (leaf tensors whose ``.grad`` is the loss gradient).

    Args:
        parameters: the chains' weights, updated in place.
        centers: the checkpoint's weights ``w*``, shaped like ``parameters``.
        sampler: ``"sgld"`` or ``"rmsprop_sgld"``.
        epsilon, gamma, nbeta: step size, localization strength, inverse temperature.
    """

    def __init__(
        self,
        parameters: list[torch.Tensor],
        centers: list[torch.Tensor],
        sampler: Literal["sgld", "rmsprop_sgld"],
        epsilon: float,
        gamma: float,
        nbeta: float,
    ):
        self.parameters = parameters
        self.centers = centers
        self.epsilon, self.gamma, self.nbeta = epsilon, gamma, nbeta
        self.square_averages = [torch.zeros_like(p) for p in parameters] if sampler == "rmsprop_sgld" else None

    @torch.no_grad()
    def offsets(self) -> list[torch.Tensor]:
        """``w - w*`` (a new list)."""
        return torch._foreach_sub(self.parameters, self.centers)

    @torch.no_grad()
    def potential_gradient(self, offsets: list[torch.Tensor]) -> list[torch.Tensor]:
        """``nbeta * g + gamma * (w - w*)``: the gradient of the potential that MALA scores (a new list)."""
        gradient = torch._foreach_mul(self.gradients(), self.nbeta)
        if self.gamma:
            torch._foreach_add_(gradient, offsets, alpha=self.gamma)
        return gradient

    def gradients(self) -> list[torch.Tensor]:
        """The loss gradients; zero for a parameter the loss does not reach (it only diffuses)."""
        return [parameter.grad if parameter.grad is not None else torch.zeros_like(parameter) for parameter in self.parameters]

    @torch.no_grad()
    def step(self, noise: list[torch.Tensor], potential_gradient: list[torch.Tensor] | None = None) -> list[torch.Tensor] | None:
        """Move the weights by one update with the given standard normal ``noise``.

        With ``potential_gradient`` (this step's ``potential_gradient()``, which MALA needs
        anyway) the update reuses it and returns the displacement ``w_new - w_old``; without,
        it takes the cheapest route and returns None.
        """
        epsilon = self.epsilon
        if self.square_averages is not None:
            return self._preconditioned_step(noise, potential_gradient)
        if potential_gradient is None:
            # w - eps/2 * gamma * (w - w*) is a lerp toward w*: one pass instead of three.
            if self.gamma:
                torch._foreach_lerp_(self.parameters, self.centers, epsilon * self.gamma / 2)
            torch._foreach_add_(self.parameters, self.gradients(), alpha=-epsilon * self.nbeta / 2)
            torch._foreach_add_(self.parameters, noise, alpha=epsilon**0.5)
            return None
        displacement = torch._foreach_mul(noise, epsilon**0.5)
        torch._foreach_add_(displacement, potential_gradient, alpha=-epsilon / 2)
        torch._foreach_add_(self.parameters, displacement)
        return displacement

    def _preconditioned_step(
        self, noise: list[torch.Tensor], potential_gradient: list[torch.Tensor] | None
    ) -> list[torch.Tensor] | None:
        gradients = self.gradients()
        torch._foreach_mul_(self.square_averages, RMSPROP_ALPHA)
        torch._foreach_addcmul_(self.square_averages, gradients, gradients, value=1 - RMSPROP_ALPHA)
        preconditioner = torch._foreach_sqrt(self.square_averages)
        torch._foreach_add_(preconditioner, RMSPROP_EPS)
        torch._foreach_reciprocal_(preconditioner)
        drift = potential_gradient if potential_gradient is not None else self.potential_gradient(self.offsets())
        displacement = torch._foreach_mul(drift, preconditioner)
        torch._foreach_mul_(displacement, -self.epsilon / 2)
        torch._foreach_sqrt_(preconditioner)
        torch._foreach_addcmul_(displacement, noise, preconditioner, value=self.epsilon**0.5)
        torch._foreach_add_(self.parameters, displacement)
        return displacement if potential_gradient is not None else None
