"""Tests for llcv.known_models: closed-form coefficients and the shape of each known case.

The SGLD runs that check the estimator against these cases live with the engine's tests.
"""

import copy
import functools
import itertools

import math

import pytest
import torch
from torch.func import functional_call, grad, vmap

from llcv.known_models import (
    NOISE_STD,
    KnownCase,
    aoyagi_subset,
    aoyagi_watanabe_case,
    classifier_reduced_widths,
    deep_linear_classifier_case,
    deep_linear_classifier_learning_coefficient,
    dln_case,
    dln_learning_coefficient,
    known_cases,
    polynomial_case,
    polynomial_localized_llc,
    regression_case,
    rrr_case,
    rrr_learning_coefficient,
    softmax_regression_case,
    softmax_regression_learning_coefficient,
)
from llcv.sampling import resolve_loss

# Small reduced-rank regression shapes, every valid true rank included.
SMALL_RRR_SHAPES = [
    (M, H, N, r)
    for M, H, N in itertools.product(range(1, 8), repeat=3)
    for r in range(min(M, H, N) + 1)
]

# (M, H, N, r, regime, lambda), each lambda worked out by hand from Aoyagi & Watanabe (2005).
HAND_COMPUTED_RRR = [
    # case 1, M+H+N+r even: (2*4*10 - 0 - 16) / 8
    (5, 3, 5, 1, "1-even", 8.0),
    # case 1, even, r = 0: (2*4*10 - 0 - 16) / 8
    (5, 4, 5, 0, "1-even", 8.0),
    # case 1, odd: (2*3*6 - 0 - 9 + 1) / 8
    (3, 2, 3, 1, "1-odd", 3.5),
    # case 1, odd, M != N: (2*4*9 - 1 - 16 + 1) / 8
    (4, 3, 5, 1, "1-odd", 7.0),
    # case 1, odd, r = 0: (2*3*10 - 0 - 9 + 1) / 8
    (5, 3, 5, 0, "1-odd", 6.5),
    # case 2 (M+H < N+r): (H*M - H*r + N*r) / 2 = (4 - 2 + 6) / 2
    (2, 2, 6, 1, "2", 4.0),
    # case 2, r = 0: H*M / 2
    (4, 3, 8, 0, "2", 6.0),
    # case 3 (N+H < M+r): (H*N - H*r + M*r) / 2 = (4 - 2 + 6) / 2
    (6, 2, 2, 1, "3", 4.0),
    # case 3, r = 0: H*N / 2
    (8, 3, 4, 0, "3", 6.0),
    # case 4 (M+N < H+r): M*N / 2
    (2, 4, 2, 1, "4", 2.0),
    (3, 8, 4, 0, "4", 6.0),
]


@pytest.mark.parametrize(("M", "H", "N", "r", "regime", "expected"), HAND_COMPUTED_RRR)
def test_rrr_learning_coefficient_matches_hand_computed_values(M, H, N, r, regime, expected):
    assert aoyagi_watanabe_case(M, H, N, r) == regime
    assert rrr_learning_coefficient(M, H, N, r) == pytest.approx(expected)


def test_full_rank_truth_is_regular():
    # With r = H <= min(M, N) the true product is a smooth point of the rank-H matrices,
    # a manifold of dimension H(M + N) - H^2, so lambda is half that dimension.
    for M, H, N, r in SMALL_RRR_SHAPES:
        if r == H <= min(M, N):
            assert rrr_learning_coefficient(M, H, N, r) == (H * (M + N) - H * H) / 2


def test_full_rank_product_is_regular_in_the_product():
    # With r = min(M, N) the factors' map to B A is a submersion at the truth, so lambda
    # is half the dimension M * N of the product space, whatever the surplus width H - r.
    for M, H, N, r in SMALL_RRR_SHAPES:
        if r == min(M, N):
            assert rrr_learning_coefficient(M, H, N, r) == M * N / 2


def test_rrr_learning_coefficient_is_positive_and_at_most_half_the_parameters():
    for M, H, N, r in SMALL_RRR_SHAPES:
        assert 0 < rrr_learning_coefficient(M, H, N, r) <= H * (M + N) / 2


def test_rrr_learning_coefficient_grows_with_true_rank_and_width():
    # A more complex truth, or a wider model at the same truth, is never simpler.
    for M, H, N, r in SMALL_RRR_SHAPES:
        if r > 0:
            assert rrr_learning_coefficient(M, H, N, r - 1) <= rrr_learning_coefficient(M, H, N, r)
        assert rrr_learning_coefficient(M, H, N, r) <= rrr_learning_coefficient(M, H + 1, N, r)


def test_case_one_agrees_with_neighbouring_case_on_the_shared_boundary():
    # The theorem's regions meet where a strict inequality becomes an equality; the
    # case-1 formula used there must give the neighbouring case's value, or the
    # transcription (or the parity term) is wrong.
    checked = 0
    for M, H, N, r in SMALL_RRR_SHAPES:
        value = rrr_learning_coefficient(M, H, N, r)
        if M + H == N + r:
            assert value == (H * M - H * r + N * r) / 2
            checked += 1
        if N + H == M + r:
            assert value == (H * N - H * r + M * r) / 2
            checked += 1
        if M + N == H + r:
            assert value == M * N / 2
            checked += 1
    assert checked > 50


@pytest.mark.parametrize(("M", "H", "N", "r"), [(0, 1, 1, 0), (2, 2, 2, -1), (2, 3, 2, 3), (5, 2, 5, 3)])
def test_rrr_learning_coefficient_rejects_invalid_shapes(M, H, N, r):
    with pytest.raises(ValueError):
        rrr_learning_coefficient(M, H, N, r)


# Small deep linear networks of one to four layers, every valid true rank included.
SMALL_DLN_SHAPES = [
    (widths, r)
    for layers, largest in [(1, 6), (2, 6), (3, 5), (4, 4)]
    for widths in itertools.product(range(1, largest + 1), repeat=layers + 1)
    for r in range(min(widths) + 1)
]

# (widths, r, Sigma, lambda), each worked out by hand from Aoyagi (2024), Theorem 2: M_j = H_j - r,
# Sigma the ell + 1 smallest M_j with sum >= ell * max(Sigma) and, against the smallest M_k left
# out, max(Sigma) < M_k and sum < ell * M_k; M* = ceil(S / ell), a = S - (M* - 1) * ell, and
# lambda = (-r^2 + r(H_0 + H_L))/2 + a(ell - a)/(4 ell) - ell(ell - 1)/4 (S/ell)^2 + 1/2 sum_{i<j} M_i M_j.
HAND_COMPUTED_DLN = [
    # M = (2, 3, 3, 2). ell = 1, 2 fail (4 < 1*3 no; max 3 < 3 no); ell = 3: S = 10 >= 9.
    # M* = 4, a = 1: 5/2 + 1*2/12 - (6/4)(100/9) + (4 + 4*6 + 9)/2 = 5/2 + 1/6 - 50/3 + 37/2
    ((3, 4, 4, 3), 1, (2, 2, 3, 3), 4.5),
    # M = (4, 2, 2, 4). ell = 1 fails (4 < 1*4 no), 2 fails (4 < 4 no); ell = 3: S = 12 >= 12.
    # M* = 4, a = 3 = ell: 9/2 + 0 - (6/4)(16) + (4 + 4*8 + 16)/2 = 9/2 - 24 + 26
    ((5, 3, 3, 5), 1, (2, 2, 4, 4), 6.5),
    # M = (5, 2, 2, 5). ell = 1: S = 4 >= 2, 2 < 5, 4 < 5. M* = 4, a = 1 = ell:
    # 11/2 + 0 - 0 + 2*2/2
    ((6, 3, 3, 6), 1, (2, 2), 7.5),
    # M = (3, 2, 2, 2, 3). ell = 1, 3 fail on ties, ell = 2 on 6 < 2*3; ell = 4: S = 12 >= 12.
    # M* = 3, a = 4 = ell: 7/2 + 0 - (12/4)(9) + (3*4 + 6*6 + 9)/2 = 7/2 - 27 + 57/2
    ((4, 3, 3, 3, 4), 1, (2, 2, 2, 3, 3), 5.0),
    # M = (4, 2, 2, 2, 4). ell = 2: S = 6 >= 4, 2 < 4, 6 < 8. M* = 3, a = 2 = ell:
    # 9/2 + 0 - (2/4)(9) + 3*4/2
    ((5, 3, 3, 3, 5), 1, (2, 2, 2), 6.0),
    # r = 0, equal widths, M = (2, 2, 2, 2): ell = 3, S = 8, M* = 3, a = 2:
    # 0 + 2*1/12 - (6/4)(64/9) + 6*4/2 = 1/6 - 32/3 + 12
    ((2, 2, 2, 2), 0, (2, 2, 2, 2), 1.5),
]


@pytest.mark.parametrize(("widths", "r", "subset", "expected"), HAND_COMPUTED_DLN)
def test_dln_learning_coefficient_matches_hand_computed_values(widths, r, subset, expected):
    assert aoyagi_subset(widths, r) == subset
    assert dln_learning_coefficient(widths, r) == pytest.approx(expected)


def test_two_layer_dln_is_reduced_rank_regression():
    # Aoyagi's Theorem 2 at two layers is Aoyagi & Watanabe's theorem, in all its regimes.
    regimes = set()
    for M, H, N, r in SMALL_RRR_SHAPES:
        assert dln_learning_coefficient((M, H, N), r) == rrr_learning_coefficient(M, H, N, r), (M, H, N, r)
        regimes.add(aoyagi_watanabe_case(M, H, N, r))
    assert regimes == {"1-even", "1-odd", "2", "3", "4"}


def test_aoyagi_subset_exists_and_is_unique():
    # aoyagi_subset raises unless exactly one ell qualifies, so this is the theorem's claim.
    for widths, r in SMALL_DLN_SHAPES:
        assert 2 <= len(aoyagi_subset(widths, r)) <= len(widths)


def test_one_layer_is_linear_regression():
    # A single matrix is regular whatever the rank of the truth: lambda = H_0 * H_1 / 2.
    for widths, r in SMALL_DLN_SHAPES:
        if len(widths) == 2:
            assert dln_learning_coefficient(widths, r) == widths[0] * widths[1] / 2


def test_bottleneck_at_the_true_rank_is_regular_in_the_product():
    # When some width equals r the product is onto the rank-r matrices near the truth (a
    # submersion), so lambda is half their dimension, r (H_0 + H_L - r); with r = min(H_0, H_L)
    # that is H_0 * H_L / 2, the full-rank product.
    checked = 0
    for widths, r in SMALL_DLN_SHAPES:
        if min(widths) == r:
            assert dln_learning_coefficient(widths, r) == r * (widths[0] + widths[-1] - r) / 2, (widths, r)
            checked += 1
    assert checked > 500


def test_dln_learning_coefficient_is_positive_and_at_most_half_the_parameters():
    for widths, r in SMALL_DLN_SHAPES:
        parameters = sum(into * out for into, out in zip(widths, widths[1:]))
        assert 0 < dln_learning_coefficient(widths, r) <= parameters / 2, (widths, r)


def _half_smallest_stratum_codimension(reduced: list[int]) -> float:
    # Strata of {C_L ... C_1 = 0}, C_j of shape (M_j, M_{j-1}): partial products C_j ... C_1 of
    # ranks t_1 >= ... >= t_L = 0. Given the rank t_{j-1} of the previous one, C_j must map its
    # t_{j-1}-dimensional image onto t_j dimensions: codimension (t_{j-1} - t_j)(M_j - t_j),
    # with t_0 = M_0.
    def smallest(j: int, previous: int) -> int:
        if j == len(reduced) - 1:
            return previous * reduced[j]
        return min(
            (previous - t) * (reduced[j] - t) + smallest(j + 1, t) for t in range(min(previous, reduced[j]) + 1)
        )

    return smallest(1, reduced[0]) / 2


def test_dln_learning_coefficient_is_half_the_smallest_stratum_codimension():
    # Aoyagi's proof (Theorem 3) splits off the regular part, (-r^2 + r(H_0 + H_L)) / 2, and
    # leaves the zero product of matrices of sizes M_j = H_j - r. Across a smooth stratum of
    # that zero set the loss is quadratic, so lambda is at most half its codimension; the
    # resolution shows the smallest is attained. An independent check beyond two layers.
    for widths, r in SMALL_DLN_SHAPES:
        regular = (-r * r + r * (widths[0] + widths[-1])) / 2
        reduced = [width - r for width in widths]
        assert dln_learning_coefficient(widths, r) == regular + _half_smallest_stratum_codimension(reduced), (widths, r)


@pytest.mark.parametrize(("widths", "r"), [((), 0), ((3,), 0), ((0, 2, 2), 0), ((2, 2, 2), -1), ((3, 2, 4, 3), 3)])
def test_dln_learning_coefficient_rejects_invalid_shapes(widths, r):
    with pytest.raises(ValueError):
        dln_learning_coefficient(widths, r)
    with pytest.raises(ValueError):
        dln_case(widths, r)


def test_dln_case_sits_at_the_most_degenerate_true_parameter():
    # Every partial product W_j ... W_1 has rank r (no spare block is non-zero), and the
    # product has r unit singular values.
    case = dln_case((4, 5, 3, 5, 4), 2)
    product = torch.eye(4)
    for layer in case.model:
        product = layer.weight.detach() @ product
        assert torch.linalg.matrix_rank(product) == 2
    singular_values = torch.linalg.svdvals(product)
    assert torch.allclose(singular_values[:2], torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("powers", [(), (0, 0), (1, -1)])
def test_polynomial_case_rejects_invalid_powers(powers):
    with pytest.raises(ValueError):
        polynomial_case(powers)


@pytest.fixture(scope="module")
def suite() -> list[KnownCase]:
    return known_cases()


def test_suite_covers_every_regime_and_has_unique_names(suite):
    names = [case.name for case in suite]
    assert len(set(names)) == len(names)
    regimes = set()
    for case in suite:
        if case.name.startswith("rrr-"):
            M, H, N, rank = case.name.removeprefix("rrr-").split("-")
            regimes.add(aoyagi_watanabe_case(int(M), int(H), int(N), int(rank.removeprefix("r"))))
    assert regimes == {"1-even", "1-odd", "2", "3", "4"}
    assert any(case.name.startswith("regression-") for case in suite)
    assert any(case.name.startswith("polynomial-") for case in suite)
    depths = [len(case.model) for case in suite if case.name.startswith("dln-")]
    assert len(depths) >= 4 and sum(depth >= 3 for depth in depths) >= 2
    classifiers = [case for case in suite if case.family == "classifier"]
    assert {case.loss for case in classifiers} == {"cross_entropy"} and len(classifiers) >= 2
    assert any(case.name.startswith("softmax-regression-") for case in classifiers)
    assert any(case.name.startswith("dlc-") and len(case.model) >= 3 for case in classifiers)
    assert {case.loss for case in suite if case.family != "classifier"} == {"mse"}
    assert {case.family for case in suite} == {"regression", "rrr", "polynomial", "dln", "classifier"}


def test_quick_suite_is_the_same_cases_with_less_sampling(suite):
    quick = known_cases(quick=True)
    assert [case.name for case in quick] == [case.name for case in suite]
    for small, full in zip(quick, suite):
        assert small.true_llc == full.true_llc
        assert (small.epsilon, small.gamma, small.nbeta) == (full.epsilon, full.gamma, full.nbeta)
        assert small.num_chains * small.num_draws < full.num_chains * full.num_draws


def test_true_llc_matches_the_closed_forms():
    assert regression_case(d=7).true_llc == 3.5
    assert softmax_regression_case(d=8, k=5).true_llc == 18.0
    assert deep_linear_classifier_case((8, 6, 6, 5), 2).true_llc == dln_learning_coefficient((8, 6, 6, 4), 2) == 13.5
    assert rrr_case(M=4, H=3, N=5, r=1).true_llc == rrr_learning_coefficient(4, 3, 5, 1)
    assert polynomial_case((1, 3)).true_llc == pytest.approx(1 / 6)
    assert polynomial_case((0, 2, 1)).true_llc == pytest.approx(1 / 4)
    assert dln_case((3, 4, 4, 3), 1).true_llc == dln_learning_coefficient((3, 4, 4, 3), 1)


def test_sampler_settings_are_usable(suite):
    for case in suite:
        assert case.epsilon > 0 and case.gamma >= 0 and case.nbeta > 1, case.name
        assert case.num_chains >= 2 and case.num_draws > 0 and case.num_burnin_steps >= 0, case.name
        assert 0 < case.batch_size <= len(case.dataset), case.name


def _full_data_loss(model: torch.nn.Module, case: KnownCase) -> torch.Tensor:
    return resolve_loss(case.loss)(model, case.dataset.tensors)


def _gradient_norm(model: torch.nn.Module, case: KnownCase) -> float:
    model.zero_grad()
    _full_data_loss(model, case).backward()
    return torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())).item()


def _perturbed(model: torch.nn.Module, scale: float, generator: torch.Generator) -> torch.nn.Module:
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return perturbed


def test_model_outputs_match_targets_in_shape_and_dtype(suite):
    for case in suite:
        inputs, targets = case.dataset.tensors
        assert inputs.dtype == targets.dtype == torch.float32, case.name
        assert all(p.dtype == torch.float32 for p in case.model.parameters()), case.name
        with torch.no_grad():
            assert case.model(inputs).shape == targets.shape, case.name


def test_model_sits_at_the_true_parameter(suite):
    # At the true parameter only the noise is left, so the loss is about NOISE_STD^2
    # (the relative spread of a mean of >= 1000 squared gaussians is under 5%); the deep
    # linear networks' targets are noise-free, so theirs is zero. A classifier's loss at its
    # teacher is the mean entropy of the soft labels, the cross-entropy's minimum.
    for case in suite:
        with torch.no_grad():
            loss = _full_data_loss(case.model, case).item()
        if case.loss == "cross_entropy":
            labels = case.dataset.tensors[1]
            entropy = -(labels * labels.log()).sum(dim=1).mean().item()
            assert loss == pytest.approx(entropy, rel=1e-5), case.name
            assert 0.1 * math.log(labels.shape[1]) < entropy < math.log(labels.shape[1]), case.name  # soft, not one-hot
        elif case.name.startswith("dln-"):
            assert loss == 0.0, case.name
        else:
            assert loss == pytest.approx(NOISE_STD**2, rel=0.15), case.name


def test_model_is_at_a_minimum(suite):
    # The checkpoint is the population minimum, not the empirical one, so the full-data
    # gradient is not zero (except for the noise-free deep linear networks); but it is the
    # O(NOISE_STD / sqrt(n)) residue of the noise, far smaller than the gradient a step away.
    generator = torch.Generator().manual_seed(0)
    for case in suite:
        gradient_at_model = _gradient_norm(case.model, case)
        for _ in range(5):
            nearby = _perturbed(case.model, 0.3, generator)
            assert gradient_at_model < 0.1 * _gradient_norm(nearby, case), case.name


@pytest.mark.parametrize(
    "build",
    [
        regression_case, rrr_case, polynomial_case, functools.partial(dln_case, (3, 4, 4, 3), 1), softmax_regression_case,
        functools.partial(deep_linear_classifier_case, (5, 4, 4), 2),
    ],
    ids=["regression", "rrr", "polynomial", "dln", "softmax-regression", "deep-linear-classifier"],
)
def test_cases_are_deterministic_per_seed(build):
    first, again, other = build(seed=3), build(seed=3), build(seed=4)
    for mine, same in zip(first.dataset.tensors, again.dataset.tensors):
        assert torch.equal(mine, same)
    for mine, same in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(mine, same)
    assert not torch.equal(first.dataset.tensors[0], other.dataset.tensors[0])


def test_building_cases_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    known_cases()
    assert torch.equal(torch.random.get_rng_state(), state)


# Classifiers under cross-entropy with soft labels (docs/known-coefficients.md).


def test_softmax_regression_learning_coefficient():
    # (d + 1)(k - 1) / 2: k(d + 1) weights less the d + 1 that shift every logit alike.
    assert softmax_regression_learning_coefficient(8, 5) == 18.0
    assert softmax_regression_learning_coefficient(1, 2) == 1.0
    assert softmax_regression_learning_coefficient(3, 7) == 12.0
    for d, k in [(0, 3), (3, 1)]:
        with pytest.raises(ValueError):
            softmax_regression_learning_coefficient(d, k)


def test_one_layer_classifier_without_bias_is_regular_on_k_minus_1_outputs():
    for d in range(1, 7):
        for k in range(2, 7):
            for r in range(min(d, k - 1) + 1):
                assert deep_linear_classifier_learning_coefficient((d, k), r) == d * (k - 1) / 2, (d, k, r)


def test_classifier_reduces_to_the_deep_linear_network_with_k_minus_1_outputs():
    assert classifier_reduced_widths((8, 6, 6, 5)) == (8, 6, 6, 4)
    assert classifier_reduced_widths((3, 2)) == (3, 1)
    # The reduction changes the value: the network with all k outputs would be another number.
    assert deep_linear_classifier_learning_coefficient((8, 6, 6, 5), 2) == 13.5
    assert dln_learning_coefficient((8, 6, 6, 5), 2) == 16.0
    for widths, r in [((8, 6, 6, 1), 0), ((4, 3, 3), 3), ((0, 3), 0)]:
        with pytest.raises(ValueError):
            deep_linear_classifier_learning_coefficient(widths, r)


def _flat_loss(case: KnownCase):
    """The full-data loss as a function of all the weights in one float64 vector, and the weights."""
    model = copy.deepcopy(case.model).double()
    names = [name for name, _ in model.named_parameters()]
    shapes = [parameter.shape for _, parameter in model.named_parameters()]
    inputs, targets = (tensor.double() for tensor in case.dataset.tensors)
    loss = resolve_loss(case.loss)

    def unflatten(flat):
        sizes = [math.prod(shape) for shape in shapes]
        return {name: part.reshape(shape) for name, part, shape in zip(names, flat.split(sizes), shapes)}

    def per_sample(flat, x, y):
        return loss(lambda batch: functional_call(model, unflatten(flat), (batch,)), (x[None], y[None]))

    def full(flat):
        return loss(lambda batch: functional_call(model, unflatten(flat), (batch,)), (inputs, targets))

    flat = torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])
    return full, per_sample, flat, inputs, targets


def _hessian_rank(case: KnownCase) -> tuple[int, torch.Tensor, torch.Tensor]:
    full, _, flat, _, _ = _flat_loss(case)
    hessian = torch.autograd.functional.hessian(full, flat)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    return int((eigenvalues > 1e-9 * eigenvalues[-1]).sum()), hessian, eigenvalues


@pytest.mark.parametrize(
    "case",
    [softmax_regression_case(d=8, k=5, num_samples=300), softmax_regression_case(d=3, k=4, num_samples=200, seed=2),
     deep_linear_classifier_case((6, 4), 2, num_samples=200), deep_linear_classifier_case((5, 4, 3), 1, num_samples=200)],
    ids=lambda case: case.name,
)  # fmt: skip
def test_every_sample_has_zero_gradient_at_the_teacher(case):
    _, per_sample, flat, inputs, targets = _flat_loss(case)
    gradients = vmap(grad(per_sample), in_dims=(None, 0, 0))(flat, inputs, targets)
    # softmax(logits) - labels: zero up to the labels' float32 rounding
    assert gradients.abs().max() < 1e-6
    # A random step away it is not zero. (Adding 0.1 to every weight would be a common shift of
    # a softmax regression's logits, along which the loss is exactly flat.)
    step = 0.1 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    away = vmap(grad(per_sample), in_dims=(None, 0, 0))(flat + step, inputs, targets)
    assert away.abs().max() > 1e-3


@pytest.mark.parametrize(("d", "k"), [(8, 5), (3, 4), (2, 3)])
def test_softmax_regression_hessian_has_rank_d_plus_1_times_k_minus_1(d, k):
    case = softmax_regression_case(d=d, k=k, num_samples=300)
    rank, hessian, eigenvalues = _hessian_rank(case)
    assert rank == (d + 1) * (k - 1) == 2 * case.true_llc
    # The d + 1 flat directions are the common shifts: W along ones (one per input) and b along ones.
    shifts = []
    for column in range(d + 1):
        weight = torch.zeros(k, d + 1, dtype=torch.float64)
        weight[:, column] = 1.0
        shifts.append(torch.cat([weight[:, :d].reshape(-1), weight[:, d]]))  # nn.Linear's order: weight, then bias
    shifts = torch.stack(shifts, dim=1)
    assert (hessian @ shifts).abs().max() < 1e-10 * eigenvalues[-1]
    # and the Fisher information is definite on the rest: the smallest non-zero eigenvalue is not tiny.
    assert eigenvalues[d + 1] > 1e-2 * eigenvalues[-1]


@pytest.mark.parametrize(("d", "k"), [(6, 4), (3, 5)])
def test_one_layer_classifier_hessian_has_rank_d_times_k_minus_1(d, k):
    case = deep_linear_classifier_case((d, k), min(d, k - 1), num_samples=300)
    rank, _, _ = _hessian_rank(case)
    assert rank == d * (k - 1) == 2 * case.true_llc


@pytest.mark.parametrize(("widths", "r"), [((8, 6, 6, 5), 2), ((5, 4, 3), 1), ((4, 6), 3), ((6, 5, 4, 5, 8), 2)])
def test_deep_linear_classifier_teacher_is_the_reduced_networks_most_degenerate_point(widths, r):
    case = deep_linear_classifier_case(widths, r, logit_scale=2.0)
    layers = [layer.weight.detach().double() for layer in case.model]
    k = widths[-1]
    ones = torch.ones(k, dtype=torch.float64)
    # The last layer maps into the complement of the all-ones vector: the logits sum to zero.
    assert (ones @ layers[-1]).abs().max() < 1e-5
    with torch.no_grad():
        assert case.model(case.dataset.tensors[0]).sum(dim=1).abs().max() < 1e-4
    # Every partial product has rank r (no spare block is non-zero) and the product has r
    # singular values equal to the logit scale.
    product = torch.eye(widths[0], dtype=torch.float64)
    for layer in layers:
        product = layer @ product
        assert torch.linalg.matrix_rank(product, atol=1e-5) == r  # the weights are float32
    projected = (torch.eye(k, dtype=torch.float64) - torch.outer(ones, ones) / k) @ product
    assert torch.linalg.matrix_rank(projected, atol=1e-5) == r
    assert torch.allclose(torch.linalg.svdvals(projected)[:r], torch.full((r,), 2.0, dtype=torch.float64), atol=1e-5)
    assert case.true_llc == dln_learning_coefficient(classifier_reduced_widths(widths), r)
    assert classifier_reduced_widths(widths) == (*widths[:-1], k - 1)
    assert case.loss == "cross_entropy" and case.family == "classifier"


def test_soft_labels_are_probability_rows():
    for case in [softmax_regression_case(), deep_linear_classifier_case((8, 6, 6, 5), 2)]:
        labels = case.dataset.tensors[1]
        assert labels.dtype == torch.float32 and labels.shape == (len(case.dataset), case.model(case.dataset.tensors[0][:1]).shape[1])
        assert torch.allclose(labels.sum(dim=1), torch.ones(len(labels)), atol=1e-5)
        assert labels.min() > 0 and labels.max() < 0.99


# What an exact sampler reads on a normal-crossing polynomial at finite nbeta and gamma.


def test_the_localized_value_of_a_regular_direction_is_the_gaussian_closed_form():
    # K = w^2: the posterior is N(0, 1 / (2 nbeta + gamma)), so nbeta E[K] = nbeta / (2 nbeta + gamma)
    for nbeta, gamma in [(144.8, 0.3), (10.0, 5.0), (1000.0, 1e-3)]:
        assert polynomial_localized_llc((1,), nbeta, gamma) == pytest.approx(nbeta / (2 * nbeta + gamma), rel=1e-6)


def test_the_localized_value_depends_only_on_nbeta_over_gamma_to_the_total_power():
    # w = u / sqrt(gamma) turns exp(-nbeta K - gamma |w|^2 / 2) into exp(-nbeta / gamma^(sum p) K(u) - |u|^2 / 2)
    for powers in [(1, 2), (2, 0, 3), (1, 1, 2)]:
        total = sum(powers)
        assert polynomial_localized_llc(powers, 145.0 * 2.0**total, 0.6) == pytest.approx(polynomial_localized_llc(powers, 145.0, 0.3), rel=1e-4)


@pytest.mark.parametrize("powers", [(1, 2), (0, 1, 4), (2, 3)])
def test_the_localized_value_rises_to_the_learning_coefficient_as_gamma_weakens(powers):
    truth = 1 / (2 * max(powers))
    values = [polynomial_localized_llc(powers, 144.8, gamma) for gamma in (3.6, 1.0, 0.3, 0.1, 1e-3, 1e-6)]
    assert values == sorted(values) and values[0] < 0.7 * truth  # strong localization squeezes it
    assert values[-1] == pytest.approx(truth, rel=0.02)


def test_the_localized_value_refuses_shapes_it_cannot_integrate():
    for powers, nbeta, gamma in [((0, 0), 1.0, 1.0), ((1, 1, 1, 1), 1.0, 1.0), ((1, -1), 1.0, 1.0), ((1,), 0.0, 1.0), ((1,), 1.0, 0.0)]:
        with pytest.raises(ValueError, match="positive powers"):
            polynomial_localized_llc(powers, nbeta, gamma)
