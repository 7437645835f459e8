"""MoCo: its steps against an independent float64 solution on the hard cases, one step by hand,
λ on the simplex, β = 1 and ρ = 0 as projected-gradient MGDA, and its state saved and resumed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import mse_terms, through_disk
from hard_gradients import assert_same_point, hard_cases, reference_min_norm

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, gaussian_nll
from mtltrain.weighting.moco import MoCo

CASES = hard_cases()
IDS = [name for name, _ in CASES]


def reference_projection(v: np.ndarray) -> np.ndarray:
    """Onto the simplex by bisection on θ with Σ max(v − θ, 0) = 1 (not by sorting)."""
    low, high = v.min() - 1.0, v.max()
    for _ in range(150):
        theta = (low + high) / 2
        low, high = (theta, high) if np.maximum(v - theta, 0).sum() > 1 else (low, theta)
    return np.maximum(v - (low + high) / 2, 0)


def reference_moco(steps, beta, beta_sigma, gamma, gamma_sigma, rho, normalize):
    """The directions and weights of MoCo's steps on (gradients, losses), in float64."""
    k, dims = steps[0][0].shape
    y, lam, out = np.zeros((k, dims)), np.full(k, 1.0 / k), []
    for t, (g, losses) in enumerate(steps, start=1):
        if normalize:
            norms = np.linalg.norm(g, axis=1)
            scale = np.divide(losses, norms, out=np.zeros(k), where=norms > 0)
            g = scale[:, None] * g
        y = y - beta / t**beta_sigma * (y - g)
        lam = reference_projection(
            lam - gamma / t**gamma_sigma * ((y @ y.T + rho * np.eye(k)) @ lam)
        )
        out.append((lam @ y, lam))
    return out


def run(strategy: MoCo, steps) -> list[tuple[np.ndarray, np.ndarray]]:
    strategy = strategy.double()
    out = []
    for g, losses in steps:
        d, w = strategy.aggregate(torch.from_numpy(g), torch.from_numpy(losses))
        out.append((d.numpy(), w.numpy()))
    return out


def three_steps(g: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The case's gradients, then two other steps around them, with losses 1..K."""
    rng = np.random.default_rng(len(g))
    losses = np.arange(1.0, len(g) + 1)
    return [
        (g, losses),
        (0.5 * g + 0.1 * rng.normal(size=g.shape), losses / 2),
        (g[::-1].copy(), losses),
    ]


@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_steps_match_an_independent_float64_solution(case, g):
    settings = dict(beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.1)
    steps = three_steps(g / np.linalg.norm(g, axis=1).max())  # γ's scale is the Gramian's
    for normalize in (True, False):
        expected = reference_moco(steps, normalize=normalize, **settings)
        got = run(MoCo(mse_terms(len(g)), normalize=normalize, **settings), steps)
        for (d, w), (d_ref, w_ref) in zip(got, expected, strict=True):
            np.testing.assert_allclose(w, w_ref, rtol=1e-9, atol=1e-12)
            assert_same_point(d, d_ref, steps[0][0])


def test_one_step_by_hand():
    """g = (1, 0), (0, 2): Y = ½G, YYᵀ = diag(¼, 1); λ − 0.1·YYᵀλ = (0.4875, 0.45), projected
    by adding (1 − 0.9375)/2 to each: λ = (0.51875, 0.48125), d = λᵀY = (0.259375, 0.48125)."""
    strategy = MoCo(mse_terms(2), beta=0.5, gamma=0.1, normalize=False).double()
    d, w = strategy.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).double(), torch.ones(2))
    torch.testing.assert_close(w, torch.tensor([0.51875, 0.48125]).double())
    torch.testing.assert_close(d, torch.tensor([0.259375, 0.48125]).double())


def test_the_weights_stay_on_the_simplex():
    rng = np.random.default_rng(3)
    strategy = MoCo(mse_terms(5), gamma=5.0, gamma_sigma=0.0).double()
    for _ in range(20):
        _, w = strategy.aggregate(torch.from_numpy(rng.normal(size=(5, 7))), torch.ones(5))
        assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
    assert (strategy.weights() == 0).any()  # a large step reaches the simplex's faces


@pytest.mark.parametrize("case", ["K=4 conflicting", "K=3 collinear"])
def test_with_beta_1_and_rho_0_it_is_projected_gradient_mgda(case):
    """Y = G (β = 1 undecayed, σ_β = 0): each step is λ ← Π_Δ(λ − γGGᵀλ) on that step's G, and
    d = λᵀG; repeated on fixed gradients with γ = 1/‖GGᵀ‖ it converges to MGDA's min-norm point."""
    g = dict(CASES)[case]
    step = 1 / np.linalg.norm(g @ g.T, 2)
    settings = dict(beta=1.0, beta_sigma=0.0, gamma=step, gamma_sigma=0.0, normalize=False)
    strategy = MoCo(mse_terms(len(g)), **settings).double()
    lam = np.full(len(g), 1 / len(g))
    for rows in three_steps(g)[:2]:  # the case's gradients, then others
        d, w = strategy.aggregate(torch.from_numpy(rows[0]), torch.ones(len(g)))
        lam = reference_projection(lam - step * (rows[0] @ rows[0].T @ lam))
        np.testing.assert_allclose(w.numpy(), lam, rtol=1e-12)
        assert_same_point(d.numpy(), lam @ rows[0], g)
    rows = torch.from_numpy(g)
    for _ in range(150):
        d, _ = strategy.aggregate(rows, torch.ones(len(g)))
    assert_same_point(d.numpy(), reference_min_norm(g), g, floor=1e-10)


def test_a_resumed_strategy_continues_exactly_and_a_skipped_step_changes_nothing():
    rng = np.random.default_rng(5)
    steps = [torch.from_numpy(rng.normal(size=(3, 8))) for _ in range(4)]
    losses = torch.tensor([1.0, 2.0, 3.0]).double()
    alone, stopped = MoCo(mse_terms(3)).double(), MoCo(mse_terms(3)).double()
    for g in steps[:2]:
        alone.aggregate(g, losses)
        stopped.aggregate(g, losses)
    stopped.aggregate(torch.full((3, 8), torch.nan).double(), losses)  # skipped
    resumed = MoCo(mse_terms(3)).double()
    resumed.load_state_dict(stopped.state_dict())
    for g in steps[2:]:
        expected, got = alone.aggregate(g, losses), resumed.aggregate(g, losses)
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_a_resumed_state_goes_to_the_strategys_device():
    """A checkpoint is read on the CPU; the run's strategy is on its device (meta stands in for
    a GPU here): the tracked gradients must follow it, or the next step mixes devices."""
    stopped = MoCo(mse_terms(2))
    stopped.aggregate(torch.randn(2, 5), torch.ones(2))
    resumed = MoCo(mse_terms(2)).to("meta")
    resumed.set_extra_state(through_disk(stopped.state_dict())["_extra_state"])
    assert resumed.tracked.device == resumed.weight.device and resumed.steps == 1


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match=r"weighting.beta=0 is not allowed"):
        MoCo(mse_terms(2), beta=0)
    nll = LossTerm("y", "y", "gaussian_nll", "regression", True, gaussian_nll)
    with pytest.raises(ConfigError, match="can be negative"):
        MoCo((*mse_terms(1), nll))
    MoCo((*mse_terms(1), nll), normalize=False)
