"""Auto-Lambda (`weighting=auto_lambda`): one meta-gradient by hand (the paper's finite
difference, computed here on a copy of the model moved by hand, and the exact mixed derivative
it approximates); λ moves towards the task whose gradient lowers the validation loss and away
from the one that raises it; a meta-gradient that is not finite leaves λ; the model's buffers
are left as they were; the refusals in one line. (The contract tests and
tests/test_extra_batches.py run it in the loop, its validation batches included.)"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import run_cli
from torch import nn

import mtltrain
from mtltrain.data.base import Split
from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, compute_losses, mse
from mtltrain.step import Step
from mtltrain.weighting.auto_lambda import AutoLambda

TERMS = tuple(LossTerm(t, t, "mse", "regression", False, mse) for t in ("a", "b"))


class Tiny(nn.Module):
    """A shared layer with batch norm, a head per task."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(3, 1) for t in ("a", "b")})

    def forward(self, x):
        z = self.shared(x)
        return {t: head(z) for t, head in self.heads.items()}, z


def batch(seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 2, generator=g, dtype=torch.float64)
    return Split(x, {"a": x[:, :1] * 2.0, "b": x[:, 1:] - x[:, :1]})


def losses_of(model: nn.Module, split: Split) -> torch.Tensor:
    return compute_losses(TERMS, model(split.inputs)[0], split.targets)


def meta_step(strategy: AutoLambda, model: nn.Module, train: Split, validation: Split) -> dict:
    """What the loop does before the backward pass: the step with its validation batch; the
    model's buffers as they were before `observe`."""
    strategy.setup(model)
    losses = losses_of(model, train)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    strategy.observe(Step(1, 0, train, {}, losses, extra_batches=(validation,)))
    return buffers


def test_one_meta_gradient_by_hand(float64):
    model, train, validation = Tiny().double(), batch(1), batch(2)
    alpha, lam = 0.05, torch.tensor([0.1, 0.1], dtype=torch.float64)
    strategy = AutoLambda(TERMS, init=0.1, virtual_lr=alpha).double()
    buffers = meta_step(strategy, model, train, validation)
    for k, v in model.named_buffers():  # its forward passes ran on copies of them
        assert torch.equal(v, buffers[k]), k
    # by hand: θ' = θ − α∇Σλ_k L_k on a copy, d = ∇L_val(θ'), L_k at θ ± εd, ε = 0.01/‖d‖
    params = list(model.parameters())
    grads = torch.autograd.grad((lam * losses_of(model, train)).sum(), params)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(moved.parameters(), grads, strict=True):
            p -= alpha * g
    d = torch.autograd.grad(losses_of(moved, validation).sum(), list(moved.parameters()))
    eps = 0.01 / torch.cat([g.flatten() for g in d]).norm()
    at = []
    for sign in (1, -1):
        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for p, g in zip(shifted.parameters(), d, strict=True):
                p += sign * eps * g
        at.append(losses_of(shifted, train).detach())
    expected = -alpha * (at[0] - at[1]) / (2 * eps)
    torch.testing.assert_close(strategy.lam.grad, expected, rtol=1e-10, atol=0)
    # which is −α·⟨∇L_k(θ), d⟩ up to the finite difference's O(ε²)
    exact = torch.stack([
        sum((g * dk).sum() for g, dk in zip(torch.autograd.grad(loss, params, retain_graph=True),
                                            d, strict=True))
        for loss in losses_of(model, train)
    ])  # fmt: skip
    torch.testing.assert_close(strategy.lam.grad, -alpha * exact, rtol=1e-4, atol=0)


class Shared(nn.Module):
    """One linear map read by both tasks: a's targets are x·v, b's −x·v, so their gradients
    oppose each other."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(2, 1)

    def forward(self, x):
        y = self.linear(x)
        return {"a": y, "b": y}, y


def test_lambda_moves_towards_the_task_that_lowers_the_validation_loss(float64):
    train, validation = batch(3), batch(4)
    for split in (train, validation):
        split.targets["b"] = -split.targets["a"]
    model = Shared().double()
    strategy = AutoLambda(TERMS, init=0.1, lr=1e-3, primary=["a"]).double()
    meta_step(strategy, model, train, validation)
    strategy.optimizers()[0].step()  # Adam's first step: lr·sign of the meta-gradient
    torch.testing.assert_close(strategy.weights(), torch.tensor([0.101, 0.099]).double())


def test_without_a_validation_batch_the_steps_own_stands_in(float64):
    model, train = Tiny().double(), batch(1)
    handed, alone = AutoLambda(TERMS).double(), AutoLambda(TERMS).double()
    meta_step(handed, model, train, train)
    alone.setup(model)
    alone.observe(Step(1, 0, train, {}, losses_of(model, train)))
    torch.testing.assert_close(alone.lam.grad, handed.lam.grad, rtol=0, atol=0)


def test_a_meta_gradient_that_is_not_finite_leaves_lambda(float64):
    validation = batch(2)
    validation.targets["a"][0] = torch.nan
    strategy = AutoLambda(TERMS).double()
    meta_step(strategy, Tiny().double(), batch(1), validation)
    assert strategy.lam.grad is None


def test_the_contributions_weigh_each_loss_by_lambda_without_its_gradient():
    strategy = AutoLambda(TERMS, init=0.3)
    losses = torch.tensor([2.0, 4.0], requires_grad=True)
    parts = strategy.contributions(losses)
    torch.testing.assert_close(parts, torch.tensor([0.6, 1.2]))
    parts.sum().backward()
    assert strategy.lam.grad is None  # the model's loss does not train λ


@pytest.mark.parametrize(
    ("call", "says"),
    [(lambda: AutoLambda(TERMS, primary=["c"]), "weighting.primary=['c'] is not allowed: "
                                                "name terms among ['a', 'b']"),
     (lambda: AutoLambda(TERMS, lr=0.0), "weighting.lr=0.0 is not allowed: it must be > 0"),
     (lambda: mtltrain.backward([torch.ones((), requires_grad=True)] * 2,
                                mtltrain.create_strategy("auto_lambda", ["a", "b"])),
      "AutoLambda runs the model at other parameters on its validation batches, which only "
      "mtltrain's loop hands it")],
)  # fmt: skip
def test_refusals_are_one_line(call, says):
    with pytest.raises(ConfigError) as raised:
        call()
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_a_starting_weight_not_above_0_is_refused_before_the_run(tmp_path):
    for init in ("-0.5", "0"):
        done = run_cli(["weighting=auto_lambda", f"weighting.init={init}"], tmp_path)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert f"weighting.init={init} is not allowed: it must be > 0" in line
        assert not any(tmp_path.iterdir())  # no run folder


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
