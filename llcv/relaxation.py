"""How long chains started at the checkpoint take to relax, and the automatic burn-in built on it.

Plain arithmetic on (epsilon, gamma), shared by the sampler (the automatic burn-in), the health
checks (was the burn-in long enough), the calibration and the command line, so none of them
needs the sampler to read it.
"""

from __future__ import annotations

import math

# Along a direction the loss does not constrain only the localization pulls a chain back, and its
# variance relaxes like exp(-epsilon * gamma * t): chains started at the checkpoint are judged
# once this many e-folds of that slowest relaxation have passed.
RELAXATION_EFOLDS = 2.0


def relaxation_steps(epsilon: float, gamma: float) -> int | float:
    """SGLD steps for ``RELAXATION_EFOLDS`` e-folds of the variance along a direction only the
    localization constrains (it relaxes like ``exp(-epsilon * gamma * t)``); infinite at gamma 0,
    where nothing pulls such a direction back."""
    return math.ceil(RELAXATION_EFOLDS / (epsilon * gamma)) if gamma > 0 else math.inf


# A hot burn-in (SamplerSettings.burnin_epsilon) relaxes at a larger step, then cools at epsilon.
# A direction of curvature k keeps a relative excess of about burnin_epsilon * k / 4 of its
# variance from the larger step, which cooling at epsilon for T steps shrinks by exp(-epsilon k T).
# The worst direction (k = 1 / (epsilon T)) keeps burnin_epsilon / (4 e epsilon T): the cooling
# runs until that is at most this share, so what the larger step leaves in the LLC is below it.
COOLING_RESIDUAL = 0.01


def cooling_steps(epsilon: float, burnin_epsilon: float) -> int:
    """Steps at ``epsilon`` after a burn-in at the larger ``burnin_epsilon``, until no direction
    keeps more than ``COOLING_RESIDUAL`` of the larger step's excess variance."""
    return math.ceil(burnin_epsilon / (4 * math.e * COOLING_RESIDUAL * epsilon))


def hot_phase(epsilon: float, burnin_epsilon: float | None) -> float | None:
    """The burn-in's larger step, or None where it is not larger than ``epsilon`` (a burn-in at a
    smaller step only relaxes more slowly)."""
    return burnin_epsilon if burnin_epsilon is not None and burnin_epsilon > epsilon else None


def burnin_relaxation_steps(epsilon: float, gamma: float, burnin_epsilon: float | None = None) -> int | float:
    """Steps for chains started at the checkpoint to relax: ``relaxation_steps(epsilon, gamma)``;
    with a larger ``burnin_epsilon``, the relaxation at that step and then the cooling at epsilon
    (``cooling_steps``). Relaxing takes 1 / step as many steps, cooling only the stiff directions
    that the larger step heats, which relax fast at any step."""
    hot = hot_phase(epsilon, burnin_epsilon)
    if hot is None:
        return relaxation_steps(epsilon, gamma)
    return relaxation_steps(hot, gamma) + cooling_steps(epsilon, hot)


def hot_burnin_steps(epsilon: float, burnin_epsilon: float | None, burnin_steps: int) -> int:
    """Of ``burnin_steps``, how many run at the larger ``burnin_epsilon``: all but the last
    ``cooling_steps``, which run at epsilon (none without a larger burn-in step)."""
    hot = hot_phase(epsilon, burnin_epsilon)
    return 0 if hot is None else max(0, burnin_steps - cooling_steps(epsilon, hot))


# The automatic burn-in (and a calibration sweep row's own) is at most this many times the draws'
# steps, so that burning in never costs more than four times the sampling it prepares.
AUTO_BURNIN_DRAW_FACTOR = 4


def auto_burnin_steps(epsilon: float, gamma: float, draw_steps: int, burnin_epsilon: float | None = None) -> int:
    """The automatic burn-in: ``burnin_relaxation_steps(epsilon, gamma, burnin_epsilon)``, at most
    ``AUTO_BURNIN_DRAW_FACTOR * draw_steps`` (the cap, also at gamma 0, where relaxation never ends)."""
    return int(min(burnin_relaxation_steps(epsilon, gamma, burnin_epsilon), AUTO_BURNIN_DRAW_FACTOR * draw_steps))
