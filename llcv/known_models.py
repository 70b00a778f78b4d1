"""Models whose learning coefficient is known in closed form, for validating the LLC estimator.

Each :class:`KnownCase` bundles a tiny model placed at its true parameter, a
dataset drawn from that model, the theoretical learning coefficient and SGLD
settings under which the estimator

    LLC = nbeta * (mean sampled loss - loss at the checkpoint)

(Lau et al. 2023, "Quantifying degeneracy in singular models via the learning
coefficient") recovers it. The loss is the case's ``loss``, one of llcv's named losses:
mean-reduced MSE, ``mse_loss(model(x), y)``, or cross-entropy against soft labels,
``cross_entropy(model(x), p)`` with ``p`` the teacher's class probabilities (rows of floats).

Five families are covered:

* linear regression with ``d`` parameters: a regular model, lambda = d / 2;
* reduced-rank regression ``y = B A x``: lambda from Aoyagi & Watanabe (2005),
  "Stochastic complexities of reduced rank regression in Bayesian estimation",
  Neural Networks 18(7), which has four regimes, all represented in the suite;
* normal-crossing polynomials ``y = (w_1^p_1 ... w_k^p_k) x``: lambda = 1 / (2 max p_i),
  the table devinterp tests its sampler against (tests/slt/sampler_accuracy_test.py);
* deep linear networks ``y = W_L ... W_1 x`` of three and four layers, with noise-free
  targets: lambda from Aoyagi (2024), "Consideration on the learning efficiency of
  multiple-layered neural networks with linear units", Neural Networks, the benchmark of
  Furman & Lau (2024), "Estimating the local learning coefficient at scale";
* classifiers under cross-entropy with a teacher's soft labels (the loss vision models train
  on): softmax regression with a bias, lambda = (d + 1)(k - 1) / 2, and deep linear
  classifiers, lambda = Aoyagi's with the k outputs reduced to k - 1
  (docs/known-coefficients.md derives both).

The closed forms live in ``llcv.learning_coefficients`` and are re-exported here. The sampler
settings of the mean-squared-error cases were calibrated with devinterp 1.3.2's
``estimate_learning_coeff_with_summary`` (full-batch SGLD, fixed seed), the deep linear
networks' and the classifiers' with llcv's own ``estimate_llc`` (batched chains, several
seeds), for the sizes that :func:`known_cases` returns; for other sizes (``llcv.known_families``
generates them) they follow the same rules of thumb but are not calibrated.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

# Re-exported: the closed forms were defined here before they had a module of their own.
from llcv.learning_coefficients import (  # noqa: F401
    aoyagi_subset,
    aoyagi_watanabe_case,
    classifier_reduced_widths,
    deep_linear_classifier_learning_coefficient,
    dln_learning_coefficient,
    polynomial_localized_llc,
    rrr_learning_coefficient,
    softmax_regression_learning_coefficient,
)

# The checkpoint is the true parameter, not the empirical minimum, whose loss is lower
# by about NOISE_STD**2 * d / n (d regular directions). The estimate loses nbeta times
# that gap: against lambda = d / 2 at nbeta = n / log(n), a relative 2 * NOISE_STD**2 / log(n),
# which is 29% at NOISE_STD = 1 and 0.3% here. The noise level does not change lambda.
NOISE_STD = 0.1


@dataclass(frozen=True)
class KnownCase:
    """A model with a known learning coefficient and SGLD settings that recover it.

    Attributes:
        name: Short identifier, e.g. ``"rrr-5-3-5-r1"``.
        description: One line for the selftest table.
        model: The model, placed at the true parameter (a minimum of the population loss).
        dataset: ``(inputs, targets)``; ``model(inputs)`` has the shape of ``targets``.
        true_llc: The theoretical learning coefficient lambda.
        epsilon: SGLD step size.
        gamma: SGLD localization strength (pull towards the checkpoint).
        nbeta: Inverse temperature n * beta.
        num_chains: Independent SGLD chains.
        num_draws: Loss draws per chain after burn-in.
        num_burnin_steps: SGLD steps per chain discarded before drawing.
        batch_size: Minibatch size for SGLD and the loss draws.
        family: The kind of model: ``"regression"``, ``"rrr"``, ``"polynomial"``, ``"dln"``,
            ``"classifier"`` (cross-entropy), or ``"scale"`` (the large deep linear networks of
            ``llcv.known_families.scale_cases``); the selftest summarises errors per family.
        loss: The loss the truth holds for, a named loss of ``llcv.sampling.losses``: ``"mse"``, or
            ``"cross_entropy"`` against soft labels (targets are float rows of probabilities).
        localized_llc: Where known, ``(nbeta, gamma) -> value`` an exact sampler reads at those
            settings (the polynomials': :func:`polynomial_localized_llc`), which separates a
            calibrated estimate's sampling error from its localization's.
    """

    name: str
    description: str
    model: nn.Module
    dataset: TensorDataset
    true_llc: float
    epsilon: float
    gamma: float
    nbeta: float
    num_chains: int
    num_draws: int
    num_burnin_steps: int
    batch_size: int
    family: str
    loss: Literal["mse", "cross_entropy"] = "mse"
    localized_llc: Callable[[float, float], float] | None = None



def _default_nbeta(num_samples: int) -> float:
    # n / log n, the inverse temperature of WBIC (Watanabe 2013) and devinterp's default.
    return num_samples / math.log(num_samples)


def _deep_linear_teacher(
    widths: Sequence[int], weights: list[torch.Tensor], num_samples: int, generator: torch.Generator
) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """The deep linear network with ``weights`` (one per layer of ``widths``, no biases), standard
    normal inputs drawn from ``generator`` after the weights, and its outputs on them."""
    inputs = torch.randn(num_samples, widths[0], generator=generator)
    model = nn.Sequential(*(_skip_init_linear(into, out, weight) for into, out, weight in zip(widths, widths[1:], weights)))
    with torch.no_grad():
        outputs = model(inputs)
    return model, inputs, outputs


def _skip_init_linear(in_features: int, out_features: int, weight: torch.Tensor) -> nn.Linear:
    # skip_init avoids drawing a random initialisation we would overwrite anyway,
    # so building a case never advances the caller's global torch RNG.
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def _noisy_targets(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return clean + NOISE_STD * torch.randn(clean.shape, generator=generator)


def regression_case(d: int = 10, num_samples: int = 1000, seed: int = 0) -> KnownCase:
    """Linear regression ``y = w . x`` with ``d`` weights: a regular model, lambda = d / 2.

    Args:
        d: Number of weights (input dimension).
        num_samples: Dataset size.
        seed: Seed for the true weights, the inputs and the noise.

    Returns:
        The case, with ``nn.Linear(d, 1, bias=False)`` at the true weights.
    """
    generator = torch.Generator().manual_seed(seed)
    true_weight = torch.randn(1, d, generator=generator)
    inputs = torch.randn(num_samples, d, generator=generator)
    model = _skip_init_linear(d, 1, true_weight)
    with torch.no_grad():
        targets = _noisy_targets(model(inputs), generator)
    nbeta = _default_nbeta(num_samples)
    return KnownCase(
        name=f"regression-d{d}",
        description=f"linear regression, {d} weights: lambda = d/2",
        model=model,
        dataset=TensorDataset(inputs, targets),
        true_llc=d / 2,
        # The Hessian of nbeta * MSE is 2 * nbeta * E[x x^T], about 2 * nbeta * I, so
        # epsilon times the curvature is 0.05: SGLD then overestimates the posterior
        # variance by about 0.05 / 4 and relaxes in about 20 steps.
        epsilon=0.025 / nbeta,
        # The localization shrinks the posterior by gamma / (2 * nbeta), 0.3% here.
        gamma=1.0,
        nbeta=nbeta,
        num_chains=8,
        num_draws=2000,
        num_burnin_steps=200,
        batch_size=num_samples,
        family="regression",
    )


def rrr_case(
    M: int = 5, H: int = 3, N: int = 5, r: int = 1, num_samples: int = 1000, seed: int = 0
) -> KnownCase:
    """Reduced-rank regression ``y = B A x`` whose true product has rank ``r``.

    The model sits at the most degenerate true parameter: the first ``r`` rows of
    ``A`` and columns of ``B`` are orthonormal and the other ``H - r`` are zero.
    Aoyagi & Watanabe's lambda is the smallest local coefficient on the set of true
    parameters and this point attains it; where the spare rows or columns are
    non-zero the local coefficient can be larger.

    Args:
        M: Input dimension.
        H: Hidden dimension.
        N: Output dimension.
        r: Rank of the true product, in [0, min(M, H, N)].
        num_samples: Dataset size.
        seed: Seed for the true factors, the inputs and the noise.

    Returns:
        The case, with ``nn.Sequential(Linear(M, H), Linear(H, N))`` (no biases).

    Raises:
        ValueError: If the shape is invalid (see :func:`rrr_learning_coefficient`).
    """
    true_llc = rrr_learning_coefficient(M, H, N, r)
    generator = torch.Generator().manual_seed(seed)
    # Orthonormal factors give the true product r unit singular values, so no
    # direction of the regular part is much stiffer than another.
    true_a = torch.zeros(H, M)
    true_a[:r] = torch.linalg.qr(torch.randn(M, r, generator=generator)).Q.T
    true_b = torch.zeros(N, H)
    true_b[:, :r] = torch.linalg.qr(torch.randn(N, r, generator=generator)).Q
    inputs = torch.randn(num_samples, M, generator=generator)
    model = nn.Sequential(_skip_init_linear(M, H, true_a), _skip_init_linear(H, N, true_b))
    with torch.no_grad():
        targets = _noisy_targets(model(inputs), generator)
    nbeta = _default_nbeta(num_samples)
    case = aoyagi_watanabe_case(M, H, N, r)
    # epsilon times the curvature of nbeta * loss along the product B A, which is
    # 2 * nbeta / N (the loss averages over N outputs). Measured over 400 chains at the
    # suite's sizes: in case 1 the chain mixes slowly along the degenerate directions,
    # and 0.03 leaves the estimate 3-5% low where 0.06 lands within 2%. In cases 2-4
    # the surplus hidden units open flat directions that stiffen as the chain wanders
    # out along them, so SGLD's upward discretisation bias grows: 2-10% high at 0.06,
    # within 3% at 0.03.
    relative_step = 0.06 if case.startswith("1") else 0.03
    return KnownCase(
        name=f"rrr-{M}-{H}-{N}-r{r}",
        description=f"reduced-rank regression M={M} H={H} N={N}, true rank {r} (Aoyagi-Watanabe case {case})",
        model=model,
        dataset=TensorDataset(inputs, targets),
        true_llc=true_llc,
        epsilon=relative_step * N / (2 * nbeta),
        # gamma = 1 cuts the degenerate directions short and leaves case 1 2-3% low;
        # 0.3 leaves it, and cases 2-4, up to 4% high; with this burn-in 0.5 lands
        # within 2.5% in all five cases.
        gamma=0.5,
        nbeta=nbeta,
        num_chains=8,
        num_draws=4000,
        num_burnin_steps=1000,
        batch_size=num_samples,
        family="rrr",
    )


def _orthogonal(size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(size, size, generator=generator)).Q


def _top_left_identity(rows: int, columns: int, rank: int) -> torch.Tensor:
    block = torch.zeros(rows, columns)
    block[:rank, :rank] = torch.eye(rank)
    return block


def dln_case(widths: Sequence[int], r: int, num_samples: int = 400, seed: int = 0) -> KnownCase:
    """Deep linear network ``y = W_L ... W_1 x`` whose true product has rank ``r``.

    Teacher and student are the same network at the same parameter and the targets are the
    teacher's outputs without noise, so the checkpoint is the empirical minimum (loss 0) and
    no noise gap biases the estimate.

    The model sits at the most degenerate true parameter, as :func:`rrr_case` does: every
    ``W_j`` is zero outside its top-left r x r block, which is the identity in the hidden
    layers, and random rotations of the input and output spaces make the product
    ``R_out [I_r 0; 0 0] R_in``. Aoyagi's lambda is the global coefficient, the smallest local
    one over the true parameters. His proof factors off the regular rank-r part (Theorem 3)
    and is left with the product of the spare blocks, the parts of the ``W_j`` outside the
    r x r blocks once those are pivoted out; that product is homogeneous in them, so the
    local coefficient is smallest where all of them vanish (Theorem 4): here. Where a spare
    block is non-zero (some partial product ``W_j ... W_1`` of rank above r) it can be larger.

    Args:
        widths: Layer widths ``(H_0 = input, H_1, ..., H_L = output)``, at least two.
        r: Rank of the true product, in [0, min(widths)].
        num_samples: Dataset size.
        seed: Seed for the rotations and the inputs.

    Returns:
        The case, with ``nn.Sequential`` of ``Linear(H_{j-1}, H_j)`` (no biases).

    Raises:
        ValueError: If the shape is invalid (see :func:`dln_learning_coefficient`).
    """
    widths = tuple(int(width) for width in widths)
    true_llc = dln_learning_coefficient(widths, r)
    generator = torch.Generator().manual_seed(seed)
    weights = [_top_left_identity(out, into, r) for into, out in zip(widths, widths[1:])]
    # The rotations give the product r unit singular values in random directions, as in rrr_case.
    weights[0] = weights[0] @ _orthogonal(widths[0], generator)
    weights[-1] = _orthogonal(widths[-1], generator) @ weights[-1]
    model, inputs, targets = _deep_linear_teacher(widths, weights, num_samples, generator)
    # With noise-free targets n only sets nbeta (67 at the default 400). Against n = 1000
    # (nbeta 145) the chains relax about twice as fast per step, a step costs half as much,
    # and the long-run estimates were as close (within 7% either way at both).
    nbeta = _default_nbeta(num_samples)
    layers = len(widths) - 1
    return KnownCase(
        name="dln-" + "-".join(map(str, widths)) + f"-r{r}",
        description=f"deep linear network, widths {'-'.join(map(str, widths))}, true rank {r} (Aoyagi 2024)",
        model=model,
        dataset=TensorDataset(inputs, targets),
        true_llc=true_llc,
        # epsilon times the stiffest curvature of nbeta * loss at the checkpoint, about
        # 2 * nbeta * L / H_L (the L identity blocks all move the product; measured 0.97-1.06
        # times that on the suite's shapes), is 0.05. At 0.08 (n = 1000) three shapes of four
        # were 5-10% high; at 0.035 5-3-3-3-5 was 5% low after this burn-in. At 0.05 about one
        # chain in 250 of the four-layer cases spikes once past the divergence bound within 5500
        # steps: the rescalings W_j -> c W_j, W_{j+1} -> W_{j+1} / c leave the loss unchanged,
        # and where they have shrunk a layer's block its neighbours' directions stiffen until a
        # step is unstable. estimate_llc leaves such a chain out; none of 256 spiked at 0.035.
        epsilon=0.05 * widths[-1] / (2 * nbeta * layers),
        # The localization lowers a regular direction's share by gamma / (gamma + 2 nbeta / H_L),
        # 4% at H_L = 6. At 0.5 the rescalings and the spare blocks wander so far that the chains
        # reach stiff regions: 5-18% high, with divergences. At 1.5 5-3-3-3-5 was 7% low. At 1,
        # over 256 chains, 6-3-3-6-6 is 7% high and the suite's other three shapes within 1%.
        gamma=1.0,
        nbeta=nbeta,
        num_chains=8,
        num_draws=4000,
        # The chains start where the spare blocks are zero and the singular directions empty:
        # the estimate averages 70-80% of its final value over the first 600 steps, about 92%
        # over the next 600.
        num_burnin_steps=1500,
        batch_size=num_samples,
        family="dln",
    )


class NormalCrossingPolynomial(nn.Module):
    """``f(x) = (w_1^p_1 ... w_k^p_k) x``, whose loss near w = 0 is a normal crossing.

    Args:
        powers: Non-negative integer exponents p_i, at least one positive.
    """

    def __init__(self, powers: Sequence[int]):
        super().__init__()
        self.powers = tuple(powers)
        self.weight = nn.Parameter(torch.zeros(len(self.powers)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        coefficient = torch.stack([w**p for w, p in zip(self.weight, self.powers)]).prod()
        return coefficient * inputs


def polynomial_case(powers: Sequence[int] = (1, 2), num_samples: int = 1000, seed: int = 0) -> KnownCase:
    """Normal-crossing polynomial regression, true function 0: lambda = 1 / (2 max p_i).

    The population loss above the minimum is ``E[x^2] * prod w_i^(2 p_i)``. Choose
    powers whose maximum is unique: with a repeated maximum the coefficient has
    multiplicity above 1 and finite-nbeta estimates converge only like 1 / log(nbeta).

    Args:
        powers: Exponents p_i; non-negative, at least one positive.
        num_samples: Dataset size.
        seed: Seed for the inputs and the noise.

    Returns:
        The case, with :class:`NormalCrossingPolynomial` at w = 0.

    Raises:
        ValueError: If a power is negative or none is positive.
    """
    powers = tuple(int(p) for p in powers)
    if min(powers, default=0) < 0 or max(powers, default=0) < 1:
        raise ValueError(f"powers must be non-negative with at least one positive, got {powers}")
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, 1, generator=generator)
    targets = _noisy_targets(torch.zeros(num_samples, 1), generator)
    nbeta = _default_nbeta(num_samples)
    return KnownCase(
        name="polynomial-" + "-".join(map(str, powers)),
        description=f"normal crossing prod w_i^p_i, powers {powers}: lambda = 1/(2*{max(powers)})",
        model=NormalCrossingPolynomial(powers),
        dataset=TensorDataset(inputs, targets),
        true_llc=1 / (2 * max(powers)),
        # The posterior has long arms along the axes (one w_i far out, the others pinned
        # near 0), so it needs a weak localization and long chains. Sampled exactly, the
        # estimate depends only on nbeta / gamma^(p_1 + ... + p_k); for powers (1, 2) at
        # nbeta = 145 it is 3% low at gamma = 0.1, 7% at 0.3 and 16% at 1. At 0.3 SGLD's
        # upward discretisation bias offsets most of that while the arms stay short
        # enough to cross. The polynomial's gradient is not Lipschitz, so large steps
        # diverge: at 0.43 / nbeta, 3-6 chains in 1000 did within 20000 steps; none at 0.29 / nbeta.
        epsilon=0.2 / nbeta,
        gamma=0.3,
        nbeta=nbeta,
        num_chains=8,
        num_draws=12000,
        num_burnin_steps=1000,
        batch_size=num_samples,
        family="polynomial",
        localized_llc=functools.partial(polynomial_localized_llc, powers),
    )


def _ones_complement(k: int, generator: torch.Generator) -> torch.Tensor:
    # A random orthonormal basis (k x (k - 1)) of the logits orthogonal to the all-ones vector:
    # QR's first column is along the ones, the others span its complement.
    columns = torch.cat([torch.ones(k, 1), torch.randn(k, k - 1, generator=generator)], dim=1)
    return torch.linalg.qr(columns).Q[:, 1:]


def _fisher_scale(logits: torch.Tensor) -> float:
    # The largest eigenvalue of the mean Fisher information of softmax in logit space,
    # E[diag(p) - p p^T]: the stiffest curvature of the cross-entropy per unit change of the
    # logits, at most 1/2 and about 1/k for soft labels near uniform.
    probabilities = torch.softmax(logits.double(), dim=-1)
    fisher = torch.diag(probabilities.mean(0)) - probabilities.T @ probabilities / len(probabilities)
    return float(torch.linalg.eigvalsh(fisher)[-1])


def softmax_regression_case(d: int = 8, k: int = 5, num_samples: int = 1000, seed: int = 0) -> KnownCase:
    """Softmax regression ``f(x) = W x + b`` under cross-entropy with a teacher's soft labels.

    The teacher is the same model at random weights, the targets its class probabilities
    ``softmax(W0 x + b0)``, and the student sits at the teacher's weights, where every sample's
    gradient is zero: the checkpoint is the empirical minimum, with no noise gap. Softmax
    ignores a common shift of the logits (``W`` and ``b`` along the all-ones vector, d + 1
    flat directions) and the Fisher information is definite on the rest, so
    lambda = (d + 1)(k - 1) / 2.

    Args:
        d: Input dimension.
        k: Number of classes, at least 2.
        num_samples: Dataset size.
        seed: Seed for the teacher and the inputs.

    Returns:
        The case, with ``nn.Linear(d, k)`` (with a bias) at the teacher's weights.

    Raises:
        ValueError: If d < 1 or k < 2.
    """
    true_llc = softmax_regression_learning_coefficient(d, k)
    generator = torch.Generator().manual_seed(seed)
    # Every logit has unit spread over the inputs, the biases half that: soft labels, far from one-hot.
    weight = torch.randn(k, d, generator=generator) / math.sqrt(d)
    bias = 0.5 * torch.randn(k, generator=generator)
    inputs = torch.randn(num_samples, d, generator=generator)
    model = nn.utils.skip_init(nn.Linear, d, k)
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
        logits = model(inputs)
    nbeta = _default_nbeta(num_samples)
    return KnownCase(
        name=f"softmax-regression-d{d}-k{k}",
        description=f"softmax regression with a bias, d={d} inputs, k={k} classes, soft labels: lambda = (d+1)(k-1)/2",
        model=model,
        dataset=TensorDataset(inputs, torch.softmax(logits, dim=-1)),
        true_llc=true_llc,
        # epsilon times the stiffest curvature of nbeta * loss, estimated by the Fisher information's
        # largest mean eigenvalue (the Hessian's was 1.4 times that at d = 8, k = 5), is 0.05, as
        # for regression_case. The localization costs a regular direction of curvature h a share
        # gamma / (gamma + nbeta * h) (h down to 0.05 here) and SGLD's discretisation adds about
        # epsilon * nbeta * h / 4; at gamma = 1 the two nearly cancel: +0.8%, -0.5%, +0.2% at d = 8,
        # k = 5 over sampler seeds 0-2, where gamma = 0.3 was 5.5% high. The d + 1 shift directions
        # are exactly flat and add nothing to the loss, however far the chains wander along them.
        epsilon=0.05 / (nbeta * _fisher_scale(logits)),
        gamma=1.0,
        nbeta=nbeta,
        num_chains=8,
        num_draws=2000,
        # A direction of curvature h relaxes in about 40 * h_max / h steps: 160 for the flattest
        # regular one here (the shifts are never needed: they add nothing to the loss).
        num_burnin_steps=500,
        batch_size=num_samples,
        family="classifier",
        loss="cross_entropy",
    )


def deep_linear_classifier_case(
    widths: Sequence[int], r: int, num_samples: int = 1000, seed: int = 0, logit_scale: float = 1.0
) -> KnownCase:
    """Deep linear classifier ``f(x) = W_L ... W_1 x`` (k = H_L classes) under cross-entropy with soft labels.

    The teacher is the same network at the most degenerate true parameter of the reduced
    network, as :func:`dln_case` builds it for widths ``(H_0, ..., H_{L-1}, k - 1)``, with its
    last layer mapped into logit space through an orthonormal basis of the complement of the
    all-ones vector: the logits sum to zero and the projected product has rank ``r``. The
    student sits at the teacher's weights (zero gradient on every sample), and lambda is
    Aoyagi's for the reduced widths (:func:`deep_linear_classifier_learning_coefficient`).

    Args:
        widths: Layer widths ``(H_0 = input, H_1, ..., H_L = k)``, at least two, k at least 2.
        r: Rank of the teacher's product, in [0, min(H_0, ..., H_{L-1}, k - 1)].
        num_samples: Dataset size.
        seed: Seed for the rotations and the inputs.
        logit_scale: The product's r non-zero singular values (each layer's block is its L-th root).

    Returns:
        The case, with ``nn.Sequential`` of ``Linear(H_{j-1}, H_j)`` (no biases).

    Raises:
        ValueError: If the shape is invalid.
    """
    widths = tuple(int(width) for width in widths)
    true_llc = deep_linear_classifier_learning_coefficient(widths, r)
    reduced = classifier_reduced_widths(widths)
    layers = len(widths) - 1
    block = logit_scale ** (1 / layers)
    generator = torch.Generator().manual_seed(seed)
    weights = [block * _top_left_identity(out, into, r) for into, out in zip(reduced, reduced[1:])]
    weights[0] = weights[0] @ _orthogonal(widths[0], generator)
    weights[-1] = _ones_complement(widths[-1], generator) @ weights[-1]
    model, inputs, logits = _deep_linear_teacher(widths, weights, num_samples, generator)
    nbeta = _default_nbeta(num_samples)
    shape = "-".join(map(str, widths))
    return KnownCase(
        name=f"dlc-{shape}-r{r}",
        description=f"deep linear classifier, widths {shape}, soft labels, true rank {r} (Aoyagi 2024 at k-1 outputs)",
        model=model,
        dataset=TensorDataset(inputs, torch.softmax(logits, dim=-1)),
        true_llc=true_llc,
        # As dln_case: epsilon times the stiffest curvature of nbeta * loss is 0.05, the curvature
        # estimated as the Fisher information's largest mean eigenvalue times L (every layer's block
        # moves the product) times logit_scale^(2 - 2/L) (0.9 times the Hessian's largest eigenvalue
        # for 8-6-6-5). With gamma = 1, 1500 burn-in steps and 4000 draws, over sampler seeds:
        # 8-6-6-5 r2 -0.6%, -3.4%, -0.1% (seeds 0-2), 8-5-5-5-6 r2 +2.9% (seed 0). At logit_scale 2
        # the same rule left 8-6-6-5 5-6% low over three seeds, at n = 2000 (nbeta 263) 7-10% low
        # after this burn-in: the degenerate directions relax more slowly as nbeta grows.
        epsilon=0.05 / (nbeta * layers * logit_scale ** (2 - 2 / layers) * _fisher_scale(logits)),
        gamma=1.0,
        nbeta=nbeta,
        num_chains=8,
        num_draws=4000,
        # The estimate still moves after this burn-in: for 8-6-6-5 r2 (seed 0, 6000 draws) the blocks
        # of 1000 draws averaged 12.8, 13.0, 14.1, 13.7, 14.0, 13.8 (true 13.5), so the chains relax
        # from below for about 2000 more steps. With 3500 burn-in steps the 4000 draws were +3.3%
        # (8-6-6-5) and +7.9% (8-5-5-5-6), whose first 1000 draws were +0.1% and -2.0%: in four
        # layers the rescaling directions keep wandering into stiffer regions and the estimate
        # drifts up, as for dln_case. 1500 and 4000 keep both within 3%.
        num_burnin_steps=1500,
        batch_size=num_samples,
        family="classifier",
        loss="cross_entropy",
    )


def known_cases(quick: bool = False) -> list[KnownCase]:
    """The validation suite: linear and reduced-rank regression, polynomials, deep linear networks, classifiers.

    Args:
        quick: CI size: fewer draws, so the whole suite samples in well under a minute
            on one CPU core with a plain SGLD loop. Expect the truth within three
            standard errors (over chains) of the estimate, rather than within 15%.

    Returns:
        The cases, each freshly built (models are not shared between calls).
    """
    # Each case with the number of draws that suffices at CI size.
    suite = [
        (regression_case(d=10), 500),
        (rrr_case(M=5, H=3, N=5, r=1), 500),  # case 1, M+H+N+r even
        (rrr_case(M=4, H=3, N=5, r=1), 500),  # case 1, odd
        (rrr_case(M=2, H=2, N=6, r=1), 500),  # case 2
        (rrr_case(M=6, H=2, N=2, r=1), 500),  # case 3
        (rrr_case(M=2, H=4, N=2, r=1), 500),  # case 4
        (polynomial_case(powers=(1, 2)), 2000),
        (polynomial_case(powers=(1, 3)), 2000),
        (dln_case(widths=(6, 3, 3, 6), r=1), 500),  # three layers, |Sigma| = 2
        (dln_case(widths=(6, 4, 4, 6), r=2), 500),  # three layers, rank 2, |Sigma| = 4
        (dln_case(widths=(5, 3, 3, 3, 5), r=1), 500),  # four layers, |Sigma| = 3
        (dln_case(widths=(6, 3, 3, 6, 6), r=1), 500),  # four layers, |Sigma| = 2
        # Classifiers under cross-entropy. At 500 draws three runs in nine (sampler seeds 3-5) put the
        # truth 2.6-2.9 standard errors away (the standard error over 8 short chains is itself noisy).
        (softmax_regression_case(d=8, k=5), 1000),  # regular up to the shift of the logits
        (deep_linear_classifier_case(widths=(8, 6, 6, 5), r=2), 1000),  # three layers, |Sigma| = 3
        (deep_linear_classifier_case(widths=(8, 5, 5, 5, 6), r=2), 1000),  # four layers, |Sigma| = 4
    ]
    if quick:
        return [dataclasses.replace(case, num_draws=quick_draws) for case, quick_draws in suite]
    return [case for case, _ in suite]
