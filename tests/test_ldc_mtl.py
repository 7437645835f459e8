"""LDC-MTL: the pre-normalisation, the model's weights and the router's gradient by hand,
weights as the total's derivatives, and the discrepancy control it is built for."""

from __future__ import annotations

import pytest
import torch
from conftest import through_disk

from mtltrain.data.base import Split
from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, gaussian_nll, mse
from mtltrain.step import Step
from mtltrain.weighting.ldc_mtl import LDCMTL

TERMS = tuple(LossTerm(n, n, "mse", "regression", False, mse) for n in ("a", "b", "c"))
NLL = LossTerm("y", "y", "gaussian_nll", "regression", True, gaussian_nll)


def observed(strategy: LDCMTL, losses: list[float]) -> LDCMTL:
    """A step as the loop takes it: the router's gradient cleared, `observe` before the
    backward pass, `after_step` after the update."""
    strategy.logits.grad = None
    step = Step(1, 0, Split(torch.zeros(1), {}), {}, torch.tensor(losses))
    strategy.observe(step)
    strategy.after_step(step, lambda s: s.losses)
    return strategy


def test_tau_is_measured_on_the_first_step_and_used_from_the_second():
    strategy = observed(LDCMTL(TERMS, penalty=0.05), [2.0, 1.0, 4.0])
    # the first step on the raw losses: u = σ·L = [2, 1, 4]/3, f = 1/3 + 1;
    # ∂f/∂u = [1, −1 − 1, 1]; w = σ·(1 + λ·∂f/∂u)
    torch.testing.assert_close(strategy.weights(), torch.tensor([1.05, 0.9, 1.05]) / 3)
    assert strategy.report()["discrepancy"].item() == pytest.approx(4 / 3)
    torch.testing.assert_close(strategy.tau, torch.tensor([2.0, 1.0, 4.0]))  # L/min L
    observed(strategy, [2.0, 1.0, 4.0])  # normalised: u = [1/3]·3, no discrepancy
    assert strategy.report()["discrepancy"].item() == pytest.approx(0.0, abs=1e-6)
    observed(strategy, [8.0, 8.0, 8.0])
    torch.testing.assert_close(strategy.tau, torch.tensor([2.0, 1.0, 4.0]))  # set once


def test_weights_router_gradient_and_total_by_hand():
    strategy = observed(LDCMTL(TERMS, penalty=0.05), [2.0, 1.0, 4.0])
    losses = [1.0, 1.0, 8.0]
    observed(strategy, losses)
    # u = (1/3)·[1/2, 1, 2]; u_1 − u_2 = −1/6, u_2 − u_3 = −1/3: f = 1/2, g = 7/6
    parts = strategy.contributions(torch.tensor(losses))
    assert parts.sum().item() == pytest.approx(7 / 6 + 0.05 * 0.5, rel=1e-6)
    # ∂f/∂u = [s_1, s_2 − s_1, −s_2] = [−1, 0, 1]; w_k = (σ_k/τ_k)·(1 + λ·∂f/∂u_k)
    expected = torch.tensor([(1 / 6) * 0.95, 1 / 3, (1 / 12) * 1.05])
    torch.testing.assert_close(strategy.weights(), expected)
    # ∂total/∂σ_k = (L_k/τ_k)·(1 + λ·∂f/∂u_k) = a; ∂/∂W_j = σ_j·(a_j − Σ σ·a)
    a = torch.tensor([0.5 * 0.95, 1.0, 2.0 * 1.05])
    torch.testing.assert_close(strategy.logits.grad, (a - a.mean()) / 3)
    assert strategy.report()["discrepancy"].item() == pytest.approx(0.5)


def test_weights_are_the_derivatives_of_the_total():
    strategy = observed(LDCMTL(TERMS, penalty=0.3), [2.0, 1.0, 4.0])
    with torch.no_grad():
        strategy.logits.copy_(torch.tensor([0.2, -0.5, 0.1]))
    losses = [1.3, 0.4, 2.9]
    observed(strategy, losses)
    copy = LDCMTL(TERMS, penalty=0.3).double()
    copy.load_state_dict(strategy.state_dict())
    at, h = torch.tensor(losses, dtype=torch.float64), 1e-6
    total = lambda v: float(copy.contributions(v).sum())  # noqa: E731
    central = torch.tensor(
        [(total(at + e) - total(at - e)) / (2 * h) for e in torch.eye(3, dtype=torch.float64) * h],
        dtype=torch.float64,
    )
    torch.testing.assert_close(strategy.weights().double(), central, rtol=1e-6, atol=0)


def train_router(penalty: float, steps: int = 150) -> LDCMTL:
    """The router alone: τ from losses [2, 1, 4], then `steps` Adam steps on [1, 1, 8] (whose
    normalised losses L/τ are [1/2, 1, 2])."""
    strategy = observed(LDCMTL(TERMS, penalty=penalty, lr=0.05), [2.0, 1.0, 4.0])
    for _ in range(steps):
        observed(strategy, [1.0, 1.0, 8.0])
        strategy.optimizer.step()
    return strategy


def test_the_discrepancy_term_drives_the_weighted_losses_together():
    """With λ large the router makes u_k = σ_k·L_k/τ_k equal (σ ∝ τ/L = [2, 1, 1/2]); with
    λ = 0 it moves toward the task of least normalised loss (the lower level's own minimum)."""
    balanced = train_router(10.0)
    sigma = balanced.report()["router"]
    torch.testing.assert_close(sigma, torch.tensor([4.0, 2.0, 1.0]) / 7, atol=0.01, rtol=0)
    assert balanced.report()["discrepancy"].item() < 0.02  # from 0.5 at σ = 1/3
    assert train_router(0.0).report()["router"].argmax().item() == 0


def test_a_step_that_is_not_finite_leaves_the_state_and_the_state_resumes():
    strategy = observed(LDCMTL(TERMS), [2.0, 1.0, 4.0])
    observed(strategy, [float("nan"), 1.0, 4.0])
    assert strategy.logits.grad is None and torch.isfinite(strategy.weights()).all()
    strategy = train_router(0.05, steps=3)
    fresh = LDCMTL(TERMS)
    fresh.load_state_dict(through_disk(strategy.state_dict()))
    assert torch.equal(fresh.tau, strategy.tau) and torch.equal(fresh.logits, strategy.logits)


def test_without_normalising_tau_is_one_and_nlls_are_allowed():
    strategy = observed(LDCMTL(TERMS, normalise=False), [2.0, 1.0, 4.0])
    assert strategy.tau.tolist() == [1.0, 1.0, 1.0]
    LDCMTL((NLL,), normalise=False)
    with pytest.raises(ConfigError, match=r"term y \(gaussian_nll\) can be negative"):
        LDCMTL((NLL,))
    with pytest.raises(ConfigError, match=r"weighting.penalty=-1 is not allowed"):
        LDCMTL(TERMS, penalty=-1)


def test_one_task_trains_on_its_loss():
    """K = 1: no neighbour, no discrepancy; the total is σ·L/τ = L (σ = 1, τ = 1)."""
    strategy = observed(LDCMTL(TERMS[:1]), [2.0])
    torch.testing.assert_close(strategy.contributions(torch.tensor([3.0])), torch.tensor([3.0]))
    torch.testing.assert_close(strategy.weights(), torch.tensor([1.0]))


def test_tau_waits_for_a_step_whose_losses_are_all_positive():
    """A zero first loss (a masked loss on a batch without valid targets) would make every
    other τ_k = (L_k + ε)/ε for the whole run: τ is measured on the next step instead."""
    strategy = observed(LDCMTL(TERMS), [0.0, 1.0, 4.0])
    assert strategy.tau.tolist() == [0.0, 0.0, 0.0]
    observed(strategy, [2.0, 1.0, 4.0])
    torch.testing.assert_close(strategy.tau, torch.tensor([2.0, 1.0, 4.0]))
