"""Known-coefficient suites generated from seeds: families of cases drawn at random shapes.

``llcv selftest`` runs the hand-listed cases of ``llcv.known_models.known_cases`` by default;
``llcv selftest --families dln,rrr --per-family 8 --seed 0`` runs cases drawn here instead, so
the estimator is judged on shapes nobody chose, and its error is read as a distribution per
family (``llcv.selftest.family_summary``) rather than case by case.

A seed determines everything: the shapes, the ranks, the models' rotations and the data. The
same ``(family, count, seed)`` always gives the same cases; another seed gives other ones.
Each case keeps the rule-of-thumb sampler settings its builder sets, which were calibrated on
the hand-listed sizes only (they are what the selftest uses without ``--auto``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence

from llcv.known_models import (
    KnownCase,
    aoyagi_watanabe_case,
    deep_linear_classifier_case,
    dln_case,
    polynomial_case,
    rrr_case,
    softmax_regression_case,
)

FAMILIES = ("dln", "rrr", "polynomial", "classifier")

# The regimes of Aoyagi & Watanabe's theorem, in the order the rrr family cycles through them.
RRR_REGIMES = ("1-even", "1-odd", "2", "3", "4")

# Generated deep linear networks stay at most this many weights (tens of seconds per case on a CPU).
DLN_MAX_WEIGHTS = 400
# The classifier family's size range, in weights.
CLASSIFIER_WEIGHTS = (45, 2_700)


def _num_weights(widths: Sequence[int]) -> int:
    return sum(into * out for into, out in zip(widths, widths[1:]))


def _case_seed(rng: random.Random) -> int:
    return rng.randrange(2**31)


def _samples_for(input_width: int, least: int = 400) -> int:
    # At least 30 samples per input dimension, so the empirical input covariance is well
    # conditioned; 400 at the smallest, as dln_case's default (1000 for the classifiers, as
    # their builders' default: at nbeta = n / ln n the localization's share of a direction of
    # curvature h is gamma / (gamma + nbeta h), and the cross-entropy's h is only about 1/k).
    return max(least, 40 * input_width)


def _draw_dln(rng: random.Random) -> KnownCase:
    while True:
        layers = rng.randint(2, 5)
        widths = tuple(rng.randint(2, 12) for _ in range(layers + 1))
        if _num_weights(widths) <= DLN_MAX_WEIGHTS:
            break
    rank = rng.randint(1, min(widths))
    return dln_case(widths, rank, num_samples=_samples_for(widths[0]), seed=_case_seed(rng))


def _draw_rrr(rng: random.Random, regime: str) -> KnownCase:
    while True:
        M, H, N = (rng.randint(1, 8) for _ in range(3))
        rank = rng.randint(1, min(M, H, N))
        if aoyagi_watanabe_case(M, H, N, rank) == regime:
            return rrr_case(M, H, N, rank, seed=_case_seed(rng))


def _draw_polynomial(rng: random.Random) -> KnownCase:
    while True:
        powers = tuple(rng.randint(0, 4) for _ in range(rng.randint(2, 3)))
        if max(powers) >= 1 and powers.count(max(powers)) == 1:
            return polynomial_case(powers, seed=_case_seed(rng))


def _draw_classifier(rng: random.Random, deep: bool) -> KnownCase:
    low, high = CLASSIFIER_WEIGHTS
    while True:
        if not deep:
            d, k = rng.randint(2, 12), rng.randint(3, 8)
            if low <= (d + 1) * k <= high:
                return softmax_regression_case(d, k, num_samples=_samples_for(d, 1000), seed=_case_seed(rng))
            continue
        layers = rng.randint(2, 4)
        widths = (rng.randint(2, 30), *(rng.randint(2, 30) for _ in range(layers - 1)), rng.randint(3, 8))
        if low <= _num_weights(widths) <= high:
            rank = rng.randint(1, min(*widths[:-1], widths[-1] - 1))
            samples = _samples_for(widths[0], 1000)
            return deep_linear_classifier_case(widths, rank, num_samples=samples, seed=_case_seed(rng))


def _drawer(family: str) -> Callable[[random.Random, int], KnownCase]:
    drawers: dict[str, Callable[[random.Random, int], KnownCase]] = {
        "dln": lambda rng, index: _draw_dln(rng),
        # Cycling through the regimes puts all five (four cases, case 1 by parity) in any five in a row.
        "rrr": lambda rng, index: _draw_rrr(rng, RRR_REGIMES[index % len(RRR_REGIMES)]),
        "polynomial": lambda rng, index: _draw_polynomial(rng),
        # Alternating: softmax regressions (regular) and deep linear classifiers (singular).
        "classifier": lambda rng, index: _draw_classifier(rng, deep=index % 2 == 1),
    }
    if family not in drawers:
        raise ValueError(f"unknown family {family!r}; the families are {', '.join(FAMILIES)}")
    return drawers[family]


def family_cases(family: str, count: int, seed: int) -> list[KnownCase]:
    """``count`` cases of one family, drawn from ``seed``.

    Families: ``"dln"`` (deep linear networks of 2-5 layers, widths 2-12, every feasible true
    rank, at most 400 weights), ``"rrr"`` (reduced-rank regression, cycling through the regimes
    of Aoyagi & Watanabe), ``"polynomial"`` (normal crossings in 2-3 weights, powers 0-4 with a
    unique maximum), ``"classifier"`` (cross-entropy with soft labels: softmax regressions with
    2-12 inputs and 3-8 classes alternating with deep linear classifiers of 2-4 layers, 45 to
    2,700 weights).

    Args:
        family: One of :data:`FAMILIES`.
        count: How many cases.
        seed: Determines every shape, rank, rotation and dataset.

    Returns:
        The cases, each with its ``family`` set and a name unique within the suite (the
        builder's name with ``-s{seed}.{index}`` appended).

    Raises:
        ValueError: An unknown family or a negative count.
    """
    draw = _drawer(family)
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    # A string seed is hashed with SHA-512 by random.Random, the same in every process.
    rng = random.Random(f"llcv-known-families:{family}:{seed}")
    cases = []
    for index in range(count):
        case = draw(rng, index)
        cases.append(dataclasses.replace(case, name=f"{case.name}-s{seed}.{index}", family=family))
    return cases


def scale_cases(weights: Sequence[int] = (10_000, 100_000), seed: int = 0) -> list[KnownCase]:
    """Deep linear networks of about ``weights`` weights each, for a benchmark of the estimator at size.

    Four layers of equal width below 30,000 weights, five above (width ``sqrt(weights / layers)``,
    50 and 141 for the defaults), a true rank of 2-5 drawn from ``seed``, noise-free targets and
    1,000 samples (2,000 past width 70, so the inputs stay well conditioned). The sampler
    settings are :func:`~llcv.known_models.dln_case`'s rules of thumb, not calibrated at these
    sizes. Meant for a GPU: on a CPU the 10^5 network samples for tens of minutes, so these are
    not part of the default tests.

    Args:
        weights: The approximate size of each network.
        seed: Determines the ranks, rotations and inputs.

    Returns:
        One case per entry of ``weights``, family ``"scale"``.
    """
    rng = random.Random(f"llcv-known-families:scale:{seed}")
    cases = []
    for index, size in enumerate(weights):
        layers = 4 if size <= 30_000 else 5
        width = max(2, round(math.sqrt(size / layers)))
        rank = rng.randint(2, 5)
        case = dln_case((width,) * (layers + 1), min(rank, width), num_samples=1000 if width <= 70 else 2000, seed=_case_seed(rng))
        cases.append(dataclasses.replace(case, name=f"{case.name}-s{seed}.{index}", family="scale"))
    return cases


def quick_case(case: KnownCase) -> KnownCase:
    """CI size for a generated case: a sixth of the draws, at least 500 (the hand-listed quick suite's proportions)."""
    return dataclasses.replace(case, num_draws=max(500, case.num_draws // 6))


def parse_families(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Family names from ``"dln,rrr"`` (or a sequence of names); ``"all"`` is every family.

    Raises:
        ValueError: A name that is not a family, or none at all.
    """
    names = [name.strip() for name in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [name for name in names if name]
    if names == ["all"]:
        return FAMILIES
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown families {', '.join(map(repr, unknown)) or '(none given)'}; choose from {', '.join(FAMILIES)} or all")
    return tuple(dict.fromkeys(names))
