"""The SGLD and RMSProp-SGLD updates, fused over all parameters, and their seeded Gaussian noise.

The update is devinterp 1.3's ``SGMCMC.sgld`` / ``SGMCMC.rmsprop_sgld`` step (Lau et al. 2023)
with noise level 1, no weight decay and no bounding box:

    w <- w - epsilon/2 * P * (nbeta * g + gamma * (w - w*)) + sqrt(epsilon * P) * xi

with ``xi`` standard normal, ``w*`` the checkpoint, and the preconditioner ``P`` equal to 1 for
SGLD and ``1 / (sqrt(V) + 0.1)`` for RMSProp-SGLD, where ``V <- 0.99 V + 0.01 g^2``.
``tests/test_langevin.py`` checks it against devinterp's optimizer step for step.

Why not call devinterp's optimizer: it loops over parameters in Python and allocates about ten
temporaries per parameter per step (on a ResNet18 on CPU, 44 ms of a 600 ms step, against
about 5 ms here for the same arithmetic as three ``torch._foreach_*`` passes). What remains is
drawing the noise: torch draws normals with one generator on one CPU thread, 27 ms for
ResNet18's 11M weights. So the noise comes from one generator per fixed-size chunk, and the
calling thread and helper threads take chunks in turn. The threads only run between the
backward pass and the update, when torch's own threads are idle: drawn ahead, during the
passes, they slowed every parallel region instead (docs/performance.md).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

# Elements per noise stream: fixed, so a seed gives the same noise on every machine. 2^18 fills
# in about 0.7 ms on CPU, far above the cost of handing a chunk to a thread.
NOISE_CHUNK = 1 << 18
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 0.1
class GaussianNoise:
    """Standard normal noise shaped like a list of dense tensors, reproducible from one seed.

    Each draw fills a buffer laid out as the tensors end to end, in memory order. Chunk ``k`` of
    ``NOISE_CHUNK`` elements draws ``normal_`` from its own generator, seeded with the ``k``-th
    state of ``numpy.random.SeedSequence(seed)``, so the values do not depend on how many
    threads fill the chunks.
    """

    def __init__(self, like: list[torch.Tensor], seed: int):
        device = like[0].device
        self.buffer = torch.empty(sum(tensor.numel() for tensor in like), device=device)
        self.like = like
        self.views = self._views_of(self.buffer)
        self._sum: torch.Tensor | None = None  # draw_summed's buffer, allocated on first use
        self._sum_views: list[torch.Tensor] = []
        chunks = self.buffer.split(NOISE_CHUNK)
        states = np.random.SeedSequence(seed).generate_state(len(chunks))
        self.chunks = [(chunk, torch.Generator(device=device).manual_seed(int(state))) for chunk, state in zip(chunks, states)]
        # On a GPU the fills are asynchronous kernel launches already.
        self.helpers = min(torch.get_num_threads(), len(chunks)) - 1 if device.type == "cpu" else 0
        self.threads = _noise_threads(self.helpers) if self.helpers else None

    def _views_of(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        # Each view has its tensor's strides (a channels-last weight gets channels-last noise), so
        # the update reads both in the same order.
        parts = buffer.split([tensor.numel() for tensor in self.like])
        return [part.as_strided(tensor.shape, tensor.stride()) for part, tensor in zip(parts, self.like)]

    def draw(self) -> list[torch.Tensor]:
        """Fresh noise, as views shaped and strided like the tensors (valid until the next draw)."""
        pending = deque(self.chunks)
        helping = [self.threads.submit(_fill, pending) for _ in range(self.helpers)]
        _fill(pending)
        for helper in helping:
            helper.result()
        return self.views

    def draw_summed(self, count: int) -> list[torch.Tensor]:
        """The next ``count`` draws summed and divided by sqrt(count): standard normal again, and
        exactly the Brownian increment that ``count`` steps of a run with the same seed, at
        1/``count`` of the step size, receive over the span of this one step (valid until the next
        draw). Coupling two step sizes this way keeps their paths close, so the difference of their
        LLCs shows the step size's effect without the noise they share (multilevel Monte Carlo)."""
        if count == 1:
            return self.draw()
        if self._sum is None:
            self._sum = torch.empty_like(self.buffer)
            self._sum_views = self._views_of(self._sum)
        self.draw()
        self._sum.copy_(self.buffer)
        for _ in range(count - 1):
            self.draw()
            self._sum.add_(self.buffer)
        self._sum.mul_(count**-0.5)
        return self._sum_views


def _fill(pending: deque) -> None:
    """Fill chunks until none is left; ``deque.popleft`` hands each chunk to exactly one thread."""
    while True:
        try:
            chunk, generator = pending.popleft()
        except IndexError:
            return
        chunk.normal_(generator=generator)


@lru_cache(maxsize=None)
def _threads_for_process(workers: int, pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llcv-noise")


def _noise_threads(workers: int) -> ThreadPoolExecutor:
    # Keyed by process: a forked child (an estimate-all worker) inherits the pool but not its threads.
    return _threads_for_process(workers, os.getpid())


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
        self._scratch: dict[str, list[torch.Tensor]] = {}
        self._potential_gradients = 0

    def _buffer(self, name: str) -> list[torch.Tensor]:
        """Tensors shaped and strided like the parameters, allocated once.

        Why: a fresh list of weight-sized tensors every step is memory the allocator hands back
        to the system and faults in again on first touch; on a ResNet18 on CPU that made MALA's
        bookkeeping 29 ms a step instead of 6.
        """
        if name not in self._scratch:
            self._scratch[name] = [torch.empty_like(parameter) for parameter in self.parameters]
        return self._scratch[name]

    @torch.no_grad()
    def offsets(self) -> list[torch.Tensor]:
        """``w - w*``, in a buffer that the next call overwrites."""
        offsets = self._buffer("offsets")
        for offset, parameter, center in zip(offsets, self.parameters, self.centers):
            torch.sub(parameter, center, out=offset)
        return offsets

    @torch.no_grad()
    def potential_gradient(self, offsets: list[torch.Tensor]) -> list[torch.Tensor]:
        """``nbeta * g + gamma * (w - w*)``: the gradient of the potential that MALA scores.

        Two buffers take turns, so a result stays valid through the next call (MALA compares
        the previous point's gradient with the current one's) and is overwritten by the one after.
        """
        self._potential_gradients += 1
        gradient = self._buffer(f"potential_gradient_{self._potential_gradients % 2}")
        for value, loss_gradient in zip(gradient, self.gradients()):
            torch.mul(loss_gradient, self.nbeta, out=value)
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
        anyway) the update reuses it and returns the displacement ``w_new - w_old``, in a buffer
        that the next step overwrites; without, it takes the cheapest route and returns None.
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
        displacement = self._buffer("displacement")
        for move, draw in zip(displacement, noise):
            torch.mul(draw, epsilon**0.5, out=move)
        torch._foreach_add_(displacement, potential_gradient, alpha=-epsilon / 2)
        torch._foreach_add_(self.parameters, displacement)
        return displacement

    def _preconditioned_step(
        self, noise: list[torch.Tensor], potential_gradient: list[torch.Tensor] | None
    ) -> list[torch.Tensor] | None:
        gradients = self.gradients()
        torch._foreach_mul_(self.square_averages, RMSPROP_ALPHA)
        torch._foreach_addcmul_(self.square_averages, gradients, gradients, value=1 - RMSPROP_ALPHA)
        preconditioner = self._buffer("preconditioner")
        for value, square_average in zip(preconditioner, self.square_averages):
            torch.sqrt(square_average, out=value)
        torch._foreach_add_(preconditioner, RMSPROP_EPS)
        torch._foreach_reciprocal_(preconditioner)
        drift = potential_gradient if potential_gradient is not None else self.potential_gradient(self.offsets())
        displacement = self._buffer("displacement")
        for move, drift_part, scale in zip(displacement, drift, preconditioner):
            torch.mul(drift_part, scale, out=move)
        torch._foreach_mul_(displacement, -self.epsilon / 2)
        torch._foreach_sqrt_(preconditioner)
        torch._foreach_addcmul_(displacement, noise, preconditioner, value=self.epsilon**0.5)
        torch._foreach_add_(self.parameters, displacement)
        return displacement if potential_gradient is not None else None
