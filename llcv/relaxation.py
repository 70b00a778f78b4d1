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


# The automatic burn-in (and a calibration sweep row's own) is at most this many times the draws'
# steps, so that burning in never costs more than four times the sampling it prepares.
AUTO_BURNIN_DRAW_FACTOR = 4


def auto_burnin_steps(epsilon: float, gamma: float, draw_steps: int) -> int:
    """The automatic burn-in: ``relaxation_steps(epsilon, gamma)``, at most
    ``AUTO_BURNIN_DRAW_FACTOR * draw_steps`` (the cap, also at gamma 0, where relaxation never ends)."""
    return int(min(relaxation_steps(epsilon, gamma), AUTO_BURNIN_DRAW_FACTOR * draw_steps))
