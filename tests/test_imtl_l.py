"""IMTL-L alone (`weighting=imtl_l`): e^s·L − s by hand, its stationary point e^s = 1/L, and a
loss-based strategy built from the config."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_config

from mtltrain.config import build
from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, gaussian_nll, mse
from mtltrain.weighting.imtl import IMTL

TERMS = tuple(LossTerm(n, n, "mse", "regression", False, mse) for n in ("a", "b"))
NLL = LossTerm("y", "y", "gaussian_nll", "regression", True, gaussian_nll)


def test_the_config_builds_imtl_with_only_its_loss_part():
    strategy = build(make_config(["weighting=imtl_l"]).weighting, terms=TERMS)
    assert isinstance(strategy, IMTL) and strategy.variant == "loss"
    assert strategy.level is None  # loss-based: no per-task gradients
    assert set(strategy.report()) == {"weight", "scale"}


def test_the_contributions_and_weights_by_hand():
    strategy = IMTL(TERMS, variant="loss")
    with torch.no_grad():
        strategy.log_scale.copy_(torch.tensor([0.0, math.log(2.0)]))
    # e^s·L − s = [1·3 − 0, 2·0.5 − log 2]; the weight of ∇L_k is e^(s_k)
    parts = strategy.contributions(torch.tensor([3.0, 0.5]))
    torch.testing.assert_close(parts, torch.tensor([3.0, 1.0 - math.log(2.0)]))
    torch.testing.assert_close(strategy.weights(), torch.tensor([1.0, 2.0]))


def test_the_learned_scales_bring_every_scaled_loss_to_one():
    """∂(e^s·L − s)/∂s = e^s·L − 1: s descends to −log L, where every e^s·L is 1."""
    strategy = IMTL(TERMS, variant="loss")
    losses = torch.tensor([4.0, 0.25])
    optimizer = torch.optim.SGD([strategy.log_scale], lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        strategy.contributions(losses).sum().backward()
        optimizer.step()
    torch.testing.assert_close(strategy.weights() * losses, torch.ones(2), atol=1e-4, rtol=0)


def test_a_loss_that_can_be_negative_is_refused():
    with pytest.raises(ConfigError, match=r"term y \(gaussian_nll\) can be negative"):
        IMTL((NLL,), variant="loss")
