"""The loss-based strategies of the zoo: each by hand, and the property it is built for."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_config

from mtltrain.config._compose import build
from mtltrain.data.base import Split
from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, gaussian_nll, mse
from mtltrain.step import Step
from mtltrain.weighting.geometric import GeometricMean
from mtltrain.weighting.rlw import RandomLossWeighting
from mtltrain.weighting.scale_invariant import ScaleInvariant
from mtltrain.weighting.uw_so import SoftOptimalUncertainty

TERMS = tuple(LossTerm(n, n, "mse", "regression", False, mse) for n in ("a", "b", "c"))
NLL = LossTerm("y", "y", "gaussian_nll", "regression", True, gaussian_nll)


def observed(strategy, losses: list[float]):
    strategy.observe(Step(1, 0, Split(torch.zeros(1), {}), {}, torch.tensor(losses)))
    return strategy


def derivatives(strategy, losses: list[float]) -> torch.Tensor:
    at = torch.tensor(losses, requires_grad=True)
    (grad,) = torch.autograd.grad(strategy.contributions(at).sum(), at)
    return grad


def test_equal_is_fixed_weights_of_one():
    cfg = make_config(["weighting=equal"])
    strategy = build(cfg.weighting, terms=TERMS)
    assert strategy.weights().tolist() == [1.0, 1.0, 1.0]


def test_random_loss_weighting_draws_a_softmax_of_normals_every_step():
    strategy = RandomLossWeighting(TERMS, seed=5)
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        observed(strategy, [1.0, 2.0, 3.0])
        expected = torch.softmax(torch.randn(3, generator=generator), dim=0)
        torch.testing.assert_close(strategy.weights(), expected)
        assert strategy.weights().sum().item() == pytest.approx(1.0)
    again = RandomLossWeighting(TERMS, seed=0)
    again.load_state_dict(strategy.state_dict())  # the generator goes with the state
    torch.testing.assert_close(
        observed(again, [1.0, 1.0, 1.0]).weights(),
        observed(strategy, [1.0, 1.0, 1.0]).weights(),
    )


def test_scale_invariant_by_hand():
    strategy = observed(ScaleInvariant(TERMS), [2.0, 0.5, 4.0])
    torch.testing.assert_close(strategy.contributions(torch.tensor([2.0, 0.5, 4.0])),
                               torch.log(torch.tensor([2.0, 0.5, 4.0]) + 1e-8))  # fmt: skip
    torch.testing.assert_close(strategy.weights(), 1 / (torch.tensor([2.0, 0.5, 4.0]) + 1e-8))
    # a loss scaled by 10 (L → 10·L, ∇ → 10·∇): its weighted gradient w·∇ stays the same
    scaled, plain = derivatives(strategy, [20.0, 0.5, 4.0]), derivatives(strategy, [2.0, 0.5, 4.0])
    assert (scaled[0] * 10).item() == pytest.approx(plain[0].item(), rel=1e-6)
    torch.testing.assert_close(scaled[1:], plain[1:])


def test_geometric_mean_by_hand():
    strategy = observed(GeometricMean(TERMS), [1.0, 8.0, 27.0])  # (1·8·27)^(1/3) = 6
    contributions = strategy.contributions(torch.tensor([1.0, 8.0, 27.0]))
    assert contributions.sum().item() == pytest.approx(6.0, rel=1e-6)
    torch.testing.assert_close(
        strategy.weights(), torch.tensor([2.0, 0.25, 2 / 27]), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(derivatives(strategy, [1.0, 8.0, 27.0]), strategy.weights())


def test_uw_so_by_hand_and_its_temperature():
    strategy = observed(SoftOptimalUncertainty(TERMS, temperature=2.0), [0.5, 1.0, 4.0])
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.25]) / 2.0, dim=0)
    torch.testing.assert_close(strategy.weights(), expected)
    hot = observed(SoftOptimalUncertainty(TERMS, temperature=1e3), [0.5, 1.0, 4.0]).weights()
    torch.testing.assert_close(hot, torch.full((3,), 1 / 3), atol=1e-3, rtol=0)  # T → ∞: equal
    cold = observed(SoftOptimalUncertainty(TERMS, temperature=0.05), [0.5, 1.0, 4.0]).weights()
    assert cold[0].item() > 0.99  # T → 0: all on the smallest loss
    assert math.isclose(strategy.weights().sum().item(), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("strategy", [ScaleInvariant, GeometricMean, SoftOptimalUncertainty])
def test_strategies_that_need_positive_losses_refuse_an_nll(strategy):
    with pytest.raises(ConfigError, match=r"term y \(gaussian_nll\) can be negative"):
        strategy((NLL,))
