"""Learning coefficients known in closed form: the truths the known-coefficient suite checks against.

``llcv.known_models`` builds models at these truths and re-exports every function here.

* Reduced-rank regression, Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank
  regression in Bayesian estimation", Neural Networks 18(7): four regimes.
* Deep linear networks, Aoyagi (2024), "Consideration on the learning efficiency of
  multiple-layered neural networks with linear units", Neural Networks.
* Normal-crossing polynomials: lambda = 1 / (2 max p_i), and what an exact sampler reads at a
  finite nbeta and gamma (``polynomial_localized_llc``), which approaches it only slowly.
* Classifiers trained with cross-entropy on soft labels (docs/known-coefficients.md derives
  both): softmax regression with a bias, lambda = (d + 1)(k - 1) / 2, and deep linear
  classifiers, whose lambda is the deep linear network's with the output width k replaced by
  k - 1, because softmax ignores a common shift of the logits.
"""

import itertools
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def aoyagi_watanabe_case(M: int, H: int, N: int, r: int) -> str:
    """The case of Aoyagi & Watanabe's theorem that a reduced-rank regression falls in.

    The cases are disjoint once 0 <= r <= min(M, H, N): cases 2 and 3 together
    would need H < r, and case 4 with case 2 (or 3) would need M < r (or N < r).

    Args:
        M: Input dimension.
        H: Hidden (inner) dimension.
        N: Output dimension.
        r: Rank of the true product.

    Returns:
        ``"1-even"`` or ``"1-odd"`` (case 1, by the parity of M + H + N + r), ``"2"``, ``"3"`` or ``"4"``.

    Raises:
        ValueError: If a dimension is not positive or r is outside [0, min(M, H, N)].
    """
    _check_rrr_shape(M, H, N, r)
    if M + H < N + r:
        return "2"
    if N + H < M + r:
        return "3"
    if M + N < H + r:
        return "4"
    return "1-even" if (M + H + N + r) % 2 == 0 else "1-odd"


def _check_rrr_shape(M: int, H: int, N: int, r: int) -> None:
    if min(M, H, N) < 1:
        raise ValueError(f"M, H and N must be positive, got M={M}, H={H}, N={N}")
    if not 0 <= r <= min(M, H, N):
        raise ValueError(f"the true rank r must lie in [0, min(M, H, N)] = [0, {min(M, H, N)}], got {r}")


def rrr_learning_coefficient(M: int, H: int, N: int, r: int) -> float:
    """Learning coefficient of reduced-rank regression (Aoyagi & Watanabe 2005, Theorem 1).

    The model is ``y = B A x`` with ``A`` of shape (H, M) and ``B`` of shape (N, H);
    the true product ``B0 A0`` has rank ``r``.

    Args:
        M: Input dimension.
        H: Hidden (inner) dimension, the largest rank the model can express.
        N: Output dimension.
        r: Rank of the true product.

    Returns:
        lambda; at most H * (M + N) / 2, half the parameter count.

    Raises:
        ValueError: If a dimension is not positive or r is outside [0, min(M, H, N)].
    """
    case = aoyagi_watanabe_case(M, H, N, r)
    if case == "2":
        return (H * M - H * r + N * r) / 2
    if case == "3":
        return (H * N - H * r + M * r) / 2
    if case == "4":
        return M * N / 2
    numerator = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if case == "1-odd":
        numerator += 1
    return numerator / 8


def _check_dln_shape(widths: Sequence[int], r: int) -> None:
    if len(widths) < 2:
        raise ValueError(f"a deep linear network needs at least an input and an output width, got {tuple(widths)}")
    if min(widths) < 1:
        raise ValueError(f"the widths must be positive, got {tuple(widths)}")
    if not 0 <= r <= min(widths):
        raise ValueError(f"the true rank r must lie in [0, min(widths)] = [0, {min(widths)}], got {r}")


def aoyagi_subset(widths: Sequence[int], r: int) -> tuple[int, ...]:
    """The reduced widths that Aoyagi's Definition 3 selects for a deep linear network.

    With ``M_j = H_j - r`` for every width, the subset Sigma of ``ell + 1`` of them (``ell >= 1``)
    satisfies, in the form Furman & Lau (2024) benchmark with:

    1. every ``M_j`` in Sigma is smaller than every ``M_k`` outside it;
    2. ``sum(Sigma) >= ell * max(Sigma)``;
    3. ``sum(Sigma) < ell * min(M_k outside Sigma)``.

    By 1 Sigma is the ``ell + 1`` smallest reduced widths, so only ``ell`` is to be found. Read
    with a strict 2, no Sigma would qualify for ``M = (1, 1, 2)``; as written, exactly one does
    for every shape the tests try, and the coefficient it gives is Aoyagi & Watanabe's at two
    layers.

    Args:
        widths: Layer widths ``(H_0 = input, H_1, ..., H_L = output)``, at least two.
        r: Rank of the true product.

    Returns:
        The reduced widths in Sigma, ascending.

    Raises:
        ValueError: If a width is not positive or r is outside [0, min(widths)].
        ArithmeticError: If the conditions select no Sigma or several; the theorem says this
            cannot happen, so it would mean the conditions above are transcribed wrongly.
    """
    _check_dln_shape(widths, r)
    reduced = sorted(width - r for width in widths)
    selected = []
    for ell in range(1, len(reduced)):
        inside, outside = reduced[: ell + 1], reduced[ell + 1 :]
        total = sum(inside)
        if total < ell * inside[-1]:
            continue
        if outside and not (inside[-1] < outside[0] and total < ell * outside[0]):
            continue
        selected.append(tuple(inside))
    if len(selected) != 1:
        raise ArithmeticError(f"Aoyagi's conditions select {len(selected)} subsets for widths {tuple(widths)}, r={r}")
    return selected[0]


def dln_learning_coefficient(widths: Sequence[int], r: int) -> float:
    """Learning coefficient of a deep linear network (Aoyagi 2024, Theorem 2).

    The model is ``y = W_L ... W_1 x`` with ``W_j`` of shape (H_j, H_{j-1}); the true product
    has rank ``r``. From M. Aoyagi (2024), "Consideration on the learning efficiency of
    multiple-layered neural networks with linear units", Neural Networks,
    doi:10.1016/j.neunet.2024.106132 (preprint SSRN 4404877), Theorem 2 with Definition 3;
    Furman & Lau (2024), "Estimating the local learning coefficient at scale" (arXiv
    2402.03698), benchmark their estimator against it. With Sigma from :func:`aoyagi_subset`,
    ``ell = |Sigma| - 1``, ``S = sum(Sigma)``, ``M* = ceil(S / ell)`` and
    ``a = S - (M* - 1) * ell`` (so ``1 <= a <= ell``):

        lambda = (-r^2 + r (H_0 + H_L)) / 2 + a (ell - a) / (4 ell)
                 - ell (ell - 1) / 4 * (S / ell)^2 + 1/2 * sum_{i < j in Sigma} M_i M_j.

    Aoyagi numbers the widths from the output, ``H^(1) = H_L``; the formula is symmetric
    under reversing them. The first term is the regular part, half the dimension of the
    rank-r matrices; the rest comes from the product of the "spare" blocks, of sizes M_j.
    It is the global coefficient, the smallest local one over the true parameters.

    Args:
        widths: Layer widths ``(H_0 = input, H_1, ..., H_L = output)``, at least two
            (two give linear regression, three reduced-rank regression).
        r: Rank of the true product, in [0, min(widths)].

    Returns:
        lambda; at most half the parameter count.

    Raises:
        ValueError: If a width is not positive or r is outside [0, min(widths)].
    """
    chosen = aoyagi_subset(widths, r)
    ell = len(chosen) - 1
    total = sum(chosen)
    ceiling = -(-total // ell)
    a = total - (ceiling - 1) * ell
    # Exact arithmetic: the terms have denominators up to 4 * ell and cancel, so the value is exact
    # and comparable with == (the tests compare it with Aoyagi & Watanabe's).
    regular = Fraction(-r * r + r * (widths[0] + widths[-1]), 2)
    pairs = sum(m_i * m_j for m_i, m_j in itertools.combinations(chosen, 2))
    value = (
        regular
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
        + Fraction(pairs, 2)
    )
    return float(value)


def softmax_regression_learning_coefficient(d: int, k: int) -> float:
    """Learning coefficient of softmax regression with a bias, ``f(x) = W x + b``, k classes.

    Trained with cross-entropy on soft labels from a teacher of the same form, the student at
    the teacher's weights: softmax ignores a common shift of the logits, which removes d + 1
    directions (``W`` and ``b`` along the all-ones vector), and the Fisher information is
    definite on the other ``(d + 1)(k - 1)``, so the model is regular there
    (docs/known-coefficients.md).

    Args:
        d: Input dimension.
        k: Number of classes, at least 2.

    Returns:
        lambda = (d + 1)(k - 1) / 2.

    Raises:
        ValueError: If d < 1 or k < 2.
    """
    if d < 1 or k < 2:
        raise ValueError(f"softmax regression needs d >= 1 inputs and k >= 2 classes, got d={d}, k={k}")
    return (d + 1) * (k - 1) / 2


def classifier_reduced_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """The widths of the deep linear network a deep linear classifier reduces to.

    ``f(x) = W_L ... W_1 x`` with k outputs under cross-entropy depends on the product only
    through its projection onto the complement of the all-ones vector, a (k - 1)-dimensional
    space: the reduced network has widths ``(H_0, ..., H_{L-1}, k - 1)``.

    Args:
        widths: ``(H_0 = input, H_1, ..., H_L = k)``, at least two, k at least 2.

    Returns:
        ``widths`` with the last one lowered by 1.

    Raises:
        ValueError: If there are fewer than two widths, one is not positive, or k < 2.
    """
    widths = tuple(int(width) for width in widths)
    if len(widths) < 2 or min(widths) < 1 or widths[-1] < 2:
        raise ValueError(f"a deep linear classifier needs positive widths and at least 2 classes, got {widths}")
    return (*widths[:-1], widths[-1] - 1)


def deep_linear_classifier_learning_coefficient(widths: Sequence[int], r: int) -> float:
    """Learning coefficient of a deep linear classifier ``f(x) = W_L ... W_1 x`` (no biases).

    Trained with cross-entropy on soft labels from a teacher of the same architecture, at the
    most degenerate true parameter: the loss is equivalent near the truth to the squared
    distance of the projected product ``Pi W_L ... W_1`` from the teacher's, so lambda is
    Aoyagi's for the reduced network (:func:`classifier_reduced_widths`) and the rank ``r`` of
    the teacher's projected product (docs/known-coefficients.md).

    Args:
        widths: ``(H_0 = input, H_1, ..., H_L = k)``, at least two, k at least 2.
        r: Rank of the teacher's product projected onto the complement of the all-ones
            vector, in [0, min(H_0, ..., H_{L-1}, k - 1)].

    Returns:
        ``dln_learning_coefficient(classifier_reduced_widths(widths), r)``; with one layer,
        ``H_0 (k - 1) / 2`` whatever r.

    Raises:
        ValueError: If the shape is invalid.
    """
    return dln_learning_coefficient(classifier_reduced_widths(widths), r)


def polynomial_localized_llc(powers: Sequence[int], nbeta: float, gamma: float) -> float:
    """What the LLC estimator converges to on a normal-crossing polynomial at ``nbeta`` and ``gamma``.

    The estimator averages ``nbeta * K(w)`` over the localized, tempered posterior
    ``exp(-nbeta K(w) - gamma |w|^2 / 2)`` around the truth w = 0, with ``K(w) = prod w_i^(2 p_i)``
    the population loss of :class:`llcv.known_models.NormalCrossingPolynomial` (inputs of unit
    variance) above its minimum. Its limit as ``nbeta / gamma^(p_1 + ... + p_k)`` grows is the
    learning coefficient 1 / (2 max p_i), reached only slowly: the localization squeezes the
    posterior's arms along the axes. This is the value an exact sampler gives at those settings,
    so a calibrated estimate can be split into the sampler's error (against this) and the
    localization's (this against the learning coefficient). Computed by quadrature in
    log-coordinates (each weight's two signs are mirror images); weights of power 0 drop out.

    Args:
        powers: The exponents p_i, non-negative, at least one and at most three positive.
        nbeta: The inverse temperature times the sample size.
        gamma: The localization strength.

    Returns:
        nbeta times the posterior mean of K.

    Raises:
        ValueError: If no power is positive, more than three are, or nbeta or gamma is not positive.
    """
    active = [int(p) for p in powers if p > 0]
    if not 1 <= len(active) <= 3 or min(powers, default=0) < 0 or nbeta <= 0 or gamma <= 0:
        raise ValueError(f"need 1-3 positive powers (none negative) and positive nbeta and gamma, got {tuple(powers)}, {nbeta}, {gamma}")
    # w = exp(s): the posterior's mass sits near 0 along some axes and out to a few 1/sqrt(gamma)
    # along others, both of which a grid in s covers evenly. Below the lower end K and the
    # Gaussian are flat, so the grid's cut there loses nothing but a constant factor.
    points = {1: 4000, 2: 1500, 3: 220}[len(active)]
    s = np.linspace(-60.0 / max(active), math.log(12.0 / math.sqrt(gamma)), points)
    axes = np.meshgrid(*([s] * len(active)), indexing="ij", sparse=True)
    log_k = sum(2 * p * axis for p, axis in zip(active, axes))
    k = np.exp(log_k)
    log_density = -nbeta * k - gamma / 2 * sum(np.exp(2 * axis) for axis in axes) + sum(axes)  # + log of the Jacobian
    weights = np.exp(log_density - log_density.max())
    return float(nbeta * (weights * k).sum() / weights.sum())
