"""GradNorm, FAMO and DWA: each by hand, and the property each is built for."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_config
from torch import nn

from mtltrain.build import build_job
from mtltrain.data.base import Split
from mtltrain.errors import ConfigError
from mtltrain.loop._callbacks import Callback
from mtltrain.loop._trainer import train_alone
from mtltrain.losses import LossTerm, gaussian_nll, mse
from mtltrain.models.mlp import SeparateMLPs
from mtltrain.step import Step
from mtltrain.tasks import TaskSpec
from mtltrain.weighting.dwa import DynamicWeightAverage
from mtltrain.weighting.famo import FAMO
from mtltrain.weighting.gradnorm import GradNorm

TERMS = tuple(LossTerm(n, n, "mse", "regression", False, mse) for n in ("a", "b"))
NLL = LossTerm("y", "y", "gaussian_nll", "regression", True, gaussian_nll)


def step_with(losses: torch.Tensor, number: int = 1) -> Step:
    return Step(number, 0, Split(torch.zeros(1), {}), {}, losses)


class Layer:
    """A stand-in model whose last shared layer is W, with losses of known gradient norm:
    L_k = s_k·Σ W² has ∇_W L_k = 2·s_k·W."""

    def __init__(self) -> None:
        self.w = nn.Parameter(torch.full((2, 2), 0.5))  # ‖W‖ = 1

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.w]

    def losses(self, scales: list[float]) -> torch.Tensor:
        return torch.stack([s * self.w.square().sum() for s in scales])


# ---- GradNorm -------------------------------------------------------------------------------


def test_gradnorm_by_hand():
    layer = Layer()
    gradnorm = GradNorm(TERMS, alpha=1.0)
    gradnorm.setup(layer)
    with torch.no_grad():
        gradnorm.weight.copy_(torch.tensor([0.5, 1.5]))
    first = layer.losses([1.0, 4.0])  # L = [1, 4], ‖∇_W L‖ = [2, 8]
    gradnorm.observe(step_with(first))
    assert gradnorm.initial_losses.tolist() == [1.0, 4.0]  # L(0): the first step's losses
    # G = w·‖∇L‖ = [1, 12], mean 6.5; r = 1 at the first step: target 6.5 for both;
    # ∂/∂w_k |G_k − 6.5| = sign(G_k − 6.5)·‖∇L_k‖ = [−2, +8]
    assert gradnorm.weight.grad.tolist() == pytest.approx([-2.0, 8.0])
    gradnorm.weight.grad = None
    later = layer.losses([0.25, 4.0])  # task a trained 4× faster: L̃ = [0.25, 1], r = [0.4, 1.6]
    gradnorm.observe(step_with(later, 2))
    # ‖∇L‖ = [0.5, 8], G = [0.25, 12], mean 6.125, target = 6.125·[0.4, 1.6] = [2.45, 9.8]
    assert gradnorm.weight.grad.tolist() == pytest.approx([-0.5, 8.0])
    torch.testing.assert_close(gradnorm.contributions(later), torch.tensor([0.125, 6.0]))


def test_gradnorm_weights_are_renormalised_to_sum_to_k_before_use():
    gradnorm = GradNorm(TERMS)
    gradnorm.setup(Layer())
    with torch.no_grad():
        gradnorm.weight.copy_(torch.tensor([3.0, -1.0]))  # an update that went too far
    assert gradnorm.weights().sum().item() == pytest.approx(2.0)
    assert gradnorm.weights().min().item() > 0


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_gradnorm_balances_the_weighted_gradient_norms(alpha):
    """Held at fixed losses and gradients, w reaches its fixed point w_k·‖∇L_k‖ ∝ r_k^α,
    Σw = K: equal weighted gradient norms for α = 0, in proportion to r for α = 1 (for other
    α, Σ_k r_k^α ≠ K and no w meets every target at once)."""
    layer = Layer()
    gradnorm = GradNorm(TERMS, alpha=alpha, lr=0.01)
    gradnorm.setup(layer)
    gradnorm.observe(step_with(layer.losses([1.0, 10.0])))  # L(0) = [1, 10]
    losses = layer.losses([0.5, 10.0])  # r ∝ [0.5, 1]; ‖∇L‖ = [1, 20]
    for n in range(3000):
        gradnorm.weight.grad = None
        gradnorm.observe(step_with(losses, n + 2))
        gradnorm.optimizer.step()
    r = torch.tensor([0.5, 1.0]) / 0.75
    target = r**alpha / torch.tensor([1.0, 20.0])
    torch.testing.assert_close(gradnorm.weights(), 2 * target / target.sum(), rtol=2e-2, atol=0)


def test_gradnorm_needs_a_shared_layer_and_positive_losses():
    tasks = [TaskSpec(n, "regression", 1, ("mse",)) for n in ("a", "b")]
    model = SeparateMLPs(tasks, in_features=1, hidden=[4])  # two_slope's: nothing shared
    with pytest.raises(ConfigError, match=r"GradNorm.*SeparateMLPs has no shared weight matrix"):
        GradNorm(TERMS).setup(model)
    with pytest.raises(ConfigError, match=r"GradNorm.*term y \(gaussian_nll\) can be negative"):
        GradNorm((NLL,))


# ---- FAMO -----------------------------------------------------------------------------------


def test_famo_weights_by_hand():
    famo = FAMO(TERMS, min_losses=[0.0, 0.5])
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.0, math.log(3.0)]))  # z = [1/4, 3/4]
    famo.observe(step_with(torch.tensor([2.0, 1.5])))
    # w ∝ z/(L − b) = [0.125, 0.75] → [1/7, 6/7]
    torch.testing.assert_close(famo.weights(), torch.tensor([1 / 7, 6 / 7]))
    torch.testing.assert_close(famo.report()["z"], torch.tensor([0.25, 0.75]))


def test_famo_update_of_the_logits_by_hand():
    """After the step: δ = log L(before) − log L(after); ∂(z·δ)/∂ξ = z ⊙ (δ − z·δ)."""
    famo = FAMO(TERMS, lr=0.1, weight_decay=0.0)
    step = step_with(torch.tensor([2.0, 1.0]))
    famo.observe(step)
    famo.after_step(step, lambda s: torch.tensor([1.0, 0.9]))
    delta = torch.tensor([math.log(2.0), math.log(1 / 0.9)])
    z = torch.tensor([0.5, 0.5])
    torch.testing.assert_close(famo.logits.grad, z * (delta - (z * delta).sum()))
    famo.optimizer.step()
    z_after = famo.report()["z"]
    assert z_after[1] > z_after[0]  # b's loss fell less: b gains weight


def test_famo_refuses_losses_it_cannot_take_the_log_of():
    with pytest.raises(ConfigError, match=r"FAMO takes the log of each loss.*term y"):
        FAMO((NLL,))
    with pytest.raises(ConfigError, match=r"weighting.lr=0"):
        FAMO(TERMS, lr=0)


# ---- DWA ------------------------------------------------------------------------------------


def test_dwa_by_hand():
    dwa = DynamicWeightAverage(TERMS, temperature=2.0)
    dwa.on_epoch_end(0, torch.tensor([4.0, 2.0]))
    assert dwa.weights().tolist() == [1.0, 1.0]  # w = 1 in the first two epochs
    dwa.on_epoch_end(1, torch.tensor([2.0, 1.8]))
    # r = [0.5, 0.9]; w = 2·softmax(r/2) = 2·[e^0.25, e^0.45]/(e^0.25 + e^0.45)
    expected = 2 * torch.softmax(torch.tensor([0.25, 0.45]), 0)
    torch.testing.assert_close(dwa.weights(), expected)
    assert dwa.weights().sum().item() == pytest.approx(2.0)
    torch.testing.assert_close(
        dwa.contributions(torch.tensor([1.0, 3.0])), expected * torch.tensor([1.0, 3.0])
    )


class EpochLosses(Callback):
    """The term losses of every updated step, by epoch, and DWA's weights in each epoch."""

    def __init__(self) -> None:
        self.losses: dict[int, list[torch.Tensor]] = {}
        self.weights: dict[int, torch.Tensor] = {}

    def on_step_end(self, trainer, step) -> None:
        self.losses.setdefault(step.epoch, []).append(step.losses.detach())
        self.weights[step.epoch] = trainer.strategy.weights()


def test_dwa_gets_each_epochs_mean_losses_from_the_trainer():
    seen = EpochLosses()
    cfg = make_config(["weighting=dwa", "dataset.n_train=64", "trainer.epochs=4"])
    train_alone(build_job(cfg, extra_callbacks=[seen]))
    means = {e: torch.stack(v).mean(0) for e, v in seen.losses.items()}
    for epoch in (2, 3):
        ratio = means[epoch - 1] / means[epoch - 2]
        torch.testing.assert_close(seen.weights[epoch], 2 * torch.softmax(ratio / 2.0, 0))
    assert seen.weights[1].tolist() == [1.0, 1.0]
