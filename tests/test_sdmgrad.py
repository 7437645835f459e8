"""SDMGrad (`weighting=sdmgrad`): one update of w and the direction by hand; its projected SGD
with momentum against numpy on the hard cases (tests/hard_gradients.py); with the step's own
batch for both extra ones (identical batches) it is its deterministic form, which converges to
the independent min-norm solution of min_{w ∈ Δ} ½‖Gw + λg₀‖²; w stays on the simplex;
extra batches that are not finite leave it; bad settings in one line. (The contract tests and
tests/test_extra_batches.py run it in the loop.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import aggregated_with_extra, mse_terms
from hard_gradients import hard_cases, reference_min_norm, reference_simplex_projection

from mtltrain.errors import ConfigError
from mtltrain.weighting.sdmgrad import SDMGrad

CASES = hard_cases()
IDS = [name for name, _ in CASES]


def reference_weights(w, first, second, lamda, iterations, lr, momentum) -> np.ndarray:
    """The authors' inner loop in numpy: SGD with momentum on M(w + λ/K), projected each
    step (by bisection), M = G₁G₂ᵀ / mean_k(√max(M_kk, 0))² (w itself where that is 0)."""
    cross = first @ second.T
    scale = np.sqrt(np.clip(np.diag(cross), 0, None)).mean()
    if scale == 0:
        return w
    m = cross / scale**2
    velocity = np.zeros_like(w)
    for _ in range(iterations):
        velocity = momentum * velocity + m @ (w + lamda / len(w))
        w = reference_simplex_projection(w - lr * velocity)
    return w


def test_one_update_by_hand():
    first = np.array([[2.0, 0.0], [0.0, 2.0]])
    second = np.array([[2.0, 1.0], [0.0, 2.0]])
    own = np.array([[3.0, 0.0], [0.0, 1.0]])
    # G₁G₂ᵀ = [[4, 0], [2, 4]], mean √diag = 2: M = [[1, 0], [0.5, 1]]; w = (½, ½), λ = ½:
    # M(w + λ/2) = M·(0.75, 0.75) = (0.75, 1.125); w − 0.2·that = (0.35, 0.275), projected:
    # + (1 − 0.625)/2 each = (0.5375, 0.4625); weights (w + λ/2)/(1 + λ) = (0.525, 0.475)
    strategy = SDMGrad(mse_terms(2), lamda=0.5, iterations=1, lr=0.2).double()
    direction, weights = aggregated_with_extra(strategy, own, first, second)
    np.testing.assert_allclose(strategy.simplex_weight.numpy(), [0.5375, 0.4625], rtol=1e-14)
    np.testing.assert_allclose(weights, [0.525, 0.475], rtol=1e-14)
    np.testing.assert_allclose(direction, [1.575, 0.475], rtol=1e-14)


@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_its_inner_loop_against_numpy_on_the_hard_cases(case, g):
    """A step of the defaults' 20 iterations, G₂ a noisy copy of G₁ (another batch). To
    1e-7: 20 steps of size 10 amplify the rounding of M (summed in another order here) up to
    ~1e8-fold on the ill-conditioned cases; a wrong formula is off by ~0.1."""
    lamda, iterations, lr, momentum = 0.3, 20, 10.0, 0.5
    noise = np.random.default_rng(0).normal(size=g.shape)
    first, second = g, g + 0.3 * noise * np.linalg.norm(g, axis=1, keepdims=True)
    strategy = SDMGrad(mse_terms(len(g)), lamda, iterations, lr, momentum).double()
    w = reference_weights(
        strategy.simplex_weight.numpy().copy(), first, second, lamda, iterations, lr, momentum
    )
    direction, weights = aggregated_with_extra(strategy, g, first, second)
    np.testing.assert_allclose(strategy.simplex_weight.numpy(), w, rtol=0, atol=1e-7)
    expected = (w + lamda / len(g)) / (1 + lamda)
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(direction, expected @ g, rtol=0, atol=1e-7 * np.abs(g).max())


def test_identical_batches_give_its_deterministic_form():
    g = np.random.default_rng(0).normal(size=(3, 8))
    handed, alone = SDMGrad(mse_terms(3)).double(), SDMGrad(mse_terms(3)).double()
    for _ in range(3):
        aggregated_with_extra(handed, g, g, g)
        alone.aggregate(torch.from_numpy(g), torch.ones(3))
    torch.testing.assert_close(alone.simplex_weight, handed.simplex_weight, rtol=0, atol=0)
    assert not torch.equal(alone.weights(), torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_the_deterministic_form_converges_to_the_independent_solution(k):
    """With small steps its w solves min_{w ∈ Δ} ½‖Gw + λg₀‖²: Σ_k w_k(g_k + λg₀) is the
    min-norm point of the hull of the g_k + λg₀, and d that over 1 + λ."""
    g = np.random.default_rng(k).normal(size=(k, 40))
    lamda = 0.3
    strategy = SDMGrad(mse_terms(k), lamda=lamda, iterations=300, lr=0.3).double()
    direction, _ = strategy.aggregate(torch.from_numpy(g), torch.ones(k))
    expected = reference_min_norm(g + lamda * g.mean(axis=0)) / (1 + lamda)
    np.testing.assert_allclose(direction.numpy(), expected, rtol=0, atol=1e-9 * np.abs(g).max())


def test_w_stays_on_the_simplex_and_lamda_0_weighs_by_it():
    rng = np.random.default_rng(1)
    strategy = SDMGrad(mse_terms(5), lamda=0.0).double()
    for _ in range(30):
        _, weights = aggregated_with_extra(
            strategy, *(rng.normal(size=(5, 8)) * 10 for _ in range(3))
        )
        w = strategy.simplex_weight.numpy().copy()  # the buffer changes in place
        assert (w >= 0).all() and abs(w.sum() - 1) < 1e-12
        np.testing.assert_array_equal(weights, w)


def test_extra_batches_that_are_not_finite_leave_w():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(3, 6))
    strategy = SDMGrad(mse_terms(3)).double()
    aggregated_with_extra(strategy, g, g, rng.normal(size=(3, 6)))
    before, weights_before = strategy.simplex_weight.clone(), strategy.weights().numpy()
    broken = g.copy()
    broken[1, 2] = np.inf
    direction, weights = aggregated_with_extra(strategy, g, g, broken)
    assert torch.equal(strategy.simplex_weight, before)
    np.testing.assert_array_equal(weights, weights_before)
    np.testing.assert_allclose(direction, weights_before @ g, rtol=1e-14)


@pytest.mark.parametrize(
    ("setting", "says"),
    [({"lamda": -0.1}, "weighting.lamda=-0.1 is not allowed: it must be >= 0"),
     ({"iterations": 0}, "weighting.iterations=0 is not allowed: it must be an integer >= 1"),
     ({"lr": 0.0}, "weighting.lr=0.0 is not allowed: it must be > 0"),
     ({"momentum": 1.0}, r"weighting.momentum=1.0 is not allowed: it must be in \[0, 1\)")],
)  # fmt: skip
def test_bad_settings_are_one_line(setting, says):
    with pytest.raises(ConfigError, match=says):
        SDMGrad(mse_terms(2), **setting)
