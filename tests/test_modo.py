"""MoDo (`weighting=modo`): one update of λ and the direction by hand; the update against numpy
on the hard cases (tests/hard_gradients.py); λ stays on the simplex; the projection onto the
simplex against an independent one; the deterministic form where no extra batches are handed
over; extra batches that are not finite; bad settings in one line. (The contract tests and
tests/test_extra_batches.py run it in the loop.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import aggregated_with_extra, mse_terms
from hard_gradients import hard_cases, reference_simplex_projection

from mtltrain.errors import ConfigError
from mtltrain.weighting.modo import MoDo
from mtltrain.weighting.solvers import project_to_simplex

CASES = hard_cases()
IDS = [name for name, _ in CASES]


def test_one_update_by_hand():
    first = np.array([[1.0, 0.0], [0.0, 2.0]])
    second = np.array([[1.0, 1.0], [0.0, 1.0]])
    own = np.array([[3.0, 0.0], [0.0, 1.0]])
    # G₁G₂ᵀ = [[1, 0], [2, 2]]; λ = (½, ½): G₁G₂ᵀλ + ρλ = (0.55, 2.05)
    # λ − 0.1·(0.55, 2.05) = (0.445, 0.295), projected: + (1 − 0.74)/2 each = (0.575, 0.425)
    strategy = MoDo(mse_terms(2), gamma=0.1, rho=0.1).double()
    direction, weights = aggregated_with_extra(strategy, own, first, second)
    np.testing.assert_allclose(weights, [0.575, 0.425], rtol=1e-14)
    np.testing.assert_allclose(direction, [1.725, 0.425], rtol=1e-14)
    np.testing.assert_allclose(strategy.weights().numpy(), [0.575, 0.425], rtol=1e-14)


@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_three_updates_against_numpy_on_the_hard_cases(case, g):
    """λ ← Π_Δ(λ − γ(G₁G₂ᵀλ + ρλ)) three times (G₂ the rows in another order), d = G₃ᵀλ."""
    gamma, rho = 0.1, 0.1
    first, second = g, g[::-1].copy()
    strategy = MoDo(mse_terms(len(g)), gamma=gamma, rho=rho).double()
    lam = strategy.weights().numpy()  # 1/K, as its float32 buffer holds it
    for _ in range(3):
        direction, weights = aggregated_with_extra(strategy, g, first, second)
        lam = reference_simplex_projection(lam - gamma * (first @ (second.T @ lam) + rho * lam))
        scale = max(1.0, gamma * np.abs(first @ second.T).max())
        np.testing.assert_allclose(weights, lam, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(direction, lam @ g, rtol=0, atol=1e-12 * scale * np.abs(g).max())


def test_lambda_stays_on_the_simplex():
    rng = np.random.default_rng(0)
    strategy = MoDo(mse_terms(5), gamma=0.5, rho=0.1).double()
    for _ in range(50):
        _, weights = aggregated_with_extra(
            strategy, *(rng.normal(size=(5, 8)) * 10 for _ in range(3))
        )
        assert (weights >= 0).all() and abs(weights.sum() - 1) < 1e-12


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
def test_the_projection_onto_the_simplex_against_bisection(scale):
    rng = np.random.default_rng(1)
    vectors = [rng.normal(size=k) * scale for k in (1, 2, 3, 7, 40)]
    vectors += [np.full(4, 0.25), np.full(4, 3.0 * scale), np.array([1.0, 1.0, -5.0]) * scale]
    for v in vectors:
        w = project_to_simplex(torch.from_numpy(v)).numpy()
        exact = reference_simplex_projection(v)
        np.testing.assert_allclose(w, exact, rtol=0, atol=1e-14 * max(1.0, np.abs(v).max()))
        assert (w >= 0).all() and abs(w.sum() - 1) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_projection_of_entries_where_u_minus_1_rounds_to_u(dtype):
    """Entries beyond the float's resolution of 1 (2⁵³ in float64, 2²⁴ in float32: a diverging
    run's gradients) still project to the nearest point (a vertex, or the middle of equal
    largest entries), and MoDo steps on; a vector that is not finite projects to NaN."""
    big = 1e17 if dtype == torch.float64 else 1e8
    cases = [
        ([big, 3.0], [1.0, 0.0]),
        ([-big, -2 * big], [1.0, 0.0]),
        ([big, big, -big], [0.5, 0.5, 0.0]),
        ([-2 * big, -big, -big], [0.0, 0.5, 0.5]),
    ]
    for v, exact in cases:
        w = project_to_simplex(torch.tensor(v, dtype=dtype))
        torch.testing.assert_close(w, torch.tensor(exact, dtype=dtype), rtol=0, atol=0)
    assert project_to_simplex(torch.tensor([1.0, torch.nan], dtype=dtype)).isnan().all()
    g = np.array([[3e9, 0.0], [0.0, 1e9]])
    _, weights = aggregated_with_extra(
        MoDo(mse_terms(2)).double(), g, g, g
    )  # λ − γ·GGᵀλ ≈ −(4.5e17, 5e16)
    np.testing.assert_array_equal(weights, [0.0, 1.0])


def test_without_extra_batches_the_steps_own_jacobian_stands_for_both():
    g = np.random.default_rng(2).normal(size=(3, 6))
    handed = MoDo(mse_terms(3)).double()
    aggregated_with_extra(handed, g, g, g)
    alone = MoDo(mse_terms(3)).double()
    alone.aggregate(torch.from_numpy(g), torch.ones(3))
    torch.testing.assert_close(alone.weights(), handed.weights(), rtol=0, atol=0)
    assert not torch.equal(alone.weights(), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_extra_batches_that_are_not_finite_leave_lambda():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(3, 6))
    strategy = MoDo(mse_terms(3)).double()
    aggregated_with_extra(strategy, g, g, rng.normal(size=(3, 6)))
    before = strategy.weights().numpy()
    broken = g.copy()
    broken[0, 0] = np.nan
    direction, weights = aggregated_with_extra(strategy, g, broken, g)
    np.testing.assert_array_equal(weights, before)
    np.testing.assert_allclose(direction, before @ g, rtol=1e-14)


@pytest.mark.parametrize(("setting", "says"), [("gamma", "weighting.gamma=0.0"), ("rho", None)])
def test_bad_settings_are_one_line(setting, says):
    if says is None:
        with pytest.raises(
            ConfigError, match=r"weighting.rho=-1.0 is not allowed: it must be >= 0"
        ):
            MoDo(mse_terms(2), rho=-1.0)
        return
    with pytest.raises(ConfigError, match=f"{says} is not allowed: it must be > 0"):
        MoDo(mse_terms(2), **{setting: 0.0})
