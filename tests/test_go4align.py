"""GO4Align: the risk-guided indicators and their groups by hand, the grouping against every
assignment, weights as the total's derivatives, and the scale balance it is built for."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import through_disk

from mtltrain.data.base import Split
from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, gaussian_nll, mse
from mtltrain.step import Step
from mtltrain.weighting.go4align import GO4Align, grouped

TERMS = tuple(LossTerm(n, n, "mse", "regression", False, mse) for n in ("a", "b", "c"))
NLL = LossTerm("y", "y", "gaussian_nll", "regression", True, gaussian_nll)


def observed(strategy: GO4Align, losses: list[float]) -> GO4Align:
    strategy.observe(Step(1, 0, Split(torch.zeros(1), {}), {}, torch.tensor(losses)))
    return strategy


def test_indicators_and_groups_by_hand():
    # η = 0.1, L = [1, 2, 4]: p ∝ e^(−0.1·L); ω_k = (7/L_k)·p_k
    strategy = observed(GO4Align(TERMS, groups=2, step_size=0.1), [1.0, 2.0, 4.0])
    e = [math.exp(-0.1), math.exp(-0.2), math.exp(-0.4)]
    p = [v / sum(e) for v in e]
    omega = [7.0 / 1 * p[0], 7.0 / 2 * p[1], 7.0 / 4 * p[2]]  # ≈ [2.65, 1.20, 0.49]
    torch.testing.assert_close(strategy.indicator, torch.tensor(omega))
    # two groups of the sorted [0.49, 1.20, 2.65]: {0.49, 1.20} (SSE 0.25) beats {1.20, 2.65} (1.05)
    low = (omega[1] + omega[2]) / 2
    torch.testing.assert_close(strategy.weights(), torch.tensor([omega[0], low, low]))
    assert strategy.report()["group"].tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(
        strategy.contributions(torch.tensor([1.0, 2.0, 4.0])),
        torch.tensor([omega[0], 2 * low, 4 * low]),
    )


def test_the_risk_history_accumulates_over_steps():
    strategy = GO4Align(TERMS, groups=3, step_size=0.5)
    observed(strategy, [1.0, 2.0, 4.0])
    observed(strategy, [3.0, 1.0, 1.0])
    expected = torch.softmax(-0.5 * torch.tensor([4.0, 3.0, 5.0]), dim=0)  # e^(−η·ΣL)
    torch.testing.assert_close(strategy.probability, expected)
    torch.testing.assert_close(strategy.weights(), 5.0 / torch.tensor([3.0, 1.0, 1.0]) * expected)


def sse(values: np.ndarray, labels: tuple[int, ...]) -> float:
    return sum(
        float(((values[np.array(labels) == g] - values[np.array(labels) == g].mean()) ** 2).sum())
        for g in set(labels)
    )


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_the_groups_are_the_least_squares_partition_over_every_assignment(groups):
    """Exact 1-D K-means against brute force over all M^K labellings with M groups used."""
    rng = np.random.default_rng(groups)
    for _ in range(5):
        values = rng.exponential(size=6)
        group, means = grouped(values, groups)
        best = min(
            sse(values, labels)
            for labels in itertools.product(range(groups), repeat=len(values))
            if len(set(labels)) == groups
        )
        assert sse(values, tuple(group)) == pytest.approx(best, rel=1e-12, abs=1e-15)
        for g in range(groups):
            assert means[g] == pytest.approx(values[group == g].mean())
        assert np.all(np.diff(means) > 0)  # numbered by increasing mean


def test_one_group_is_the_mean_indicator_and_k_groups_the_indicators_themselves():
    one = observed(GO4Align(TERMS, groups=1), [1.0, 2.0, 4.0])
    torch.testing.assert_close(one.weights(), one.indicator.mean().expand(3))
    each = observed(GO4Align(TERMS, groups=5), [1.0, 2.0, 4.0])  # M > K: each its own
    torch.testing.assert_close(each.weights(), each.indicator)


def test_without_risk_history_k_groups_balance_the_weighted_losses():
    """η = 0 keeps p = 1/K: ω_k·L_k = Σ_j L_j/K for every task, whatever the losses' scales."""
    strategy = observed(GO4Align(TERMS, groups=3, step_size=0.0), [0.01, 3.0, 250.0])
    weighted = strategy.weights() * torch.tensor([0.01, 3.0, 250.0])
    torch.testing.assert_close(weighted, torch.full((3,), 253.01 / 3), rtol=1e-5, atol=0)


def test_weights_are_the_derivatives_of_the_total():
    strategy = observed(GO4Align(TERMS, groups=2, step_size=0.1), [1.0, 2.0, 4.0])
    at = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64, requires_grad=True)
    copy = GO4Align(TERMS).double()
    copy.load_state_dict(strategy.state_dict())
    (grad,) = torch.autograd.grad(copy.contributions(at).sum(), at)
    torch.testing.assert_close(grad, strategy.weights().double())


def test_a_step_that_is_not_finite_leaves_the_state_and_the_state_resumes():
    strategy = observed(GO4Align(TERMS, step_size=0.1), [1.0, 2.0, 4.0])
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    observed(strategy, [1.0, float("nan"), 4.0])
    for name, value in strategy.state_dict().items():
        assert torch.equal(value, before[name]), name
    fresh = GO4Align(TERMS, step_size=0.1)
    fresh.load_state_dict(through_disk(strategy.state_dict()))
    assert torch.equal(
        observed(fresh, [2.0, 2.0, 1.0]).weights(), observed(strategy, [2.0, 2.0, 1.0]).weights()
    )


def test_settings_out_of_range_and_negative_losses_are_refused():
    with pytest.raises(ConfigError, match=r"weighting.groups=0 is not allowed"):
        GO4Align(TERMS, groups=0)
    with pytest.raises(ConfigError, match=r"weighting.step_size=-1 is not allowed"):
        GO4Align(TERMS, step_size=-1)
    with pytest.raises(ConfigError, match=r"term y \(gaussian_nll\) can be negative"):
        GO4Align((NLL,))


def test_a_step_with_a_zero_loss_keeps_the_last_weights():
    """ΣL/L_k has no value at L_k = 0 (a masked loss on a batch without valid targets): the
    step keeps p and the weights, rather than weighting every task by ~ΣL/ε (one group)."""
    strategy = observed(GO4Align(TERMS, groups=1, step_size=0.1), [1.0, 2.0, 4.0])
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    observed(strategy, [0.0, 2.0, 4.0])
    for name, value in strategy.state_dict().items():
        assert torch.equal(value, before[name]), name
