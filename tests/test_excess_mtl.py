"""ExcessMTL: its steps against an independent float64 solution on the hard cases, two steps by
hand, and the properties of its weights: they sum to K, a task's gradient scale does not move
them, a task that stops converging gains weight; its state saved and resumed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import mse_terms, through_disk
from hard_gradients import assert_same_point, hard_cases

from mtltrain.errors import ConfigError
from mtltrain.weighting.excess_mtl import ExcessMTL

CASES = hard_cases()
IDS = [name for name, _ in CASES]


def reference_excess_mtl(steps: list[np.ndarray], eta: float) -> list[tuple[np.ndarray, ...]]:
    """The official update in float64: w ← w·exp(η·Ê/Ê⁽⁰⁾), rescaled to sum K (on log w less
    its largest, where a huge ratio cannot overflow), with Ê⁽⁰⁾ each task's first nonzero
    estimate (no step from a task before it has one)."""
    k = len(steps[0])
    squares, weights, baseline, out = 0.0, np.ones(k), np.zeros(k), []
    for g in steps:
        squares = squares + g**2
        excess = np.einsum("kd,kd->k", g, g / np.sqrt(squares + 1e-7))
        ratio = np.divide(excess, baseline, out=np.zeros(k), where=baseline > 0)
        with np.errstate(divide="ignore"):  # a weight that underflowed to 0 stays 0
            log_weights = np.log(weights) + eta * ratio
        weights = np.exp(log_weights - log_weights.max())
        weights = weights / weights.sum() * k
        baseline = np.where(baseline > 0, baseline, excess)
        out.append((weights @ g, weights))
    return out


def run(strategy: ExcessMTL, steps: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    strategy = strategy.double()
    out = []
    for g in steps:
        d, w = strategy.aggregate(torch.from_numpy(g), torch.ones(len(g)))
        out.append((d.numpy(), w.numpy()))
    return out


def four_steps(g: np.ndarray) -> list[np.ndarray]:
    rng = np.random.default_rng(len(g))
    return [g, 0.5 * g + 0.1 * rng.normal(size=g.shape), g[::-1].copy(), 2 * g]


@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_steps_match_an_independent_float64_solution(case, g):
    steps = four_steps(g)
    for eta in (0.01, 1.0):
        expected = reference_excess_mtl(steps, eta)
        got = run(ExcessMTL(mse_terms(len(g)), robust_step_size=eta), steps)
        for (d, w), (d_ref, w_ref) in zip(got, expected, strict=True):
            np.testing.assert_allclose(w, w_ref, rtol=1e-10)
            assert_same_point(d, d_ref, g)


def test_two_steps_by_hand():
    """g = (3), (4): Ê = 9/3, 16/4 = (3, 4), the baselines, w = (1, 1). Then g = (4), (4):
    Ê = (16/5, 16/√32), ratios (16/15, 4/√32); with η = 1, w_1 = 2/(1 + e^(4/√32 − 16/15))."""
    strategy = ExcessMTL(mse_terms(2), robust_step_size=1.0).double()
    d, w = strategy.aggregate(torch.tensor([[3.0], [4.0]]).double(), torch.ones(2))
    torch.testing.assert_close(w, torch.ones(2).double())
    torch.testing.assert_close(d, torch.tensor([7.0]).double())
    d, w = strategy.aggregate(torch.tensor([[4.0], [4.0]]).double(), torch.ones(2))
    w1 = 2 / (1 + math.exp(4 / math.sqrt(32) - 16 / 15))
    torch.testing.assert_close(w, torch.tensor([w1, 2 - w1]).double(), rtol=1e-7, atol=0)
    torch.testing.assert_close(d, torch.tensor([8.0]).double())


def test_the_weights_sum_to_k_and_ignore_a_tasks_gradient_scale():
    rng = np.random.default_rng(2)
    steps = [rng.normal(size=(3, 6)) for _ in range(6)]
    scale = np.array([[1.0], [1e3], [10.0]])  # the 10⁻⁷ under the root is negligible
    plain = run(ExcessMTL(mse_terms(3), robust_step_size=1.0), steps)
    scaled = run(ExcessMTL(mse_terms(3), robust_step_size=1.0), [g * scale for g in steps])
    for (_, w), (_, w_scaled) in zip(plain, scaled, strict=True):
        assert abs(w.sum() - 3) < 1e-12 and (w > 0).all()
        np.testing.assert_allclose(w_scaled, w, rtol=1e-5)


def test_a_task_that_stops_converging_gains_weight():
    """Two tasks with the same gradient at first; the first's then shrinks (converging), the
    second's does not: the second's excess risk stays higher, and so does its weight."""
    strategy = ExcessMTL(mse_terms(2), robust_step_size=1.0).double()
    for t in range(1, 6):
        g = torch.tensor([[1.0 / t, 0.0], [0.0, 1.0]]).double()
        _, w = strategy.aggregate(g, torch.ones(2))
    assert w[1] > 1.5 > w[0]


def test_a_zero_first_gradient_takes_its_baseline_later_and_a_skipped_step_changes_nothing():
    strategy = ExcessMTL(mse_terms(2), robust_step_size=1.0).double()
    _, w = strategy.aggregate(torch.tensor([[1.0, 0.0], [0.0, 0.0]]).double(), torch.ones(2))
    assert torch.equal(w, torch.ones(2).double()) and strategy.baseline[1] == 0
    state = {k: v for k, v in strategy.state_dict().items()}
    d, w = strategy.aggregate(torch.full((2, 2), torch.nan).double(), torch.ones(2))
    assert d.isnan().all() and strategy.baseline[1] == 0
    assert torch.equal(strategy.state_dict()["weight"], state["weight"])
    _, w = strategy.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).double(), torch.ones(2))
    assert torch.isfinite(w).all() and abs(float(strategy.baseline[1]) - 2.0) < 1e-7


def test_a_resumed_strategy_continues_exactly():
    rng = np.random.default_rng(5)
    steps = [torch.from_numpy(rng.normal(size=(3, 8))) for _ in range(4)]
    alone, stopped = ExcessMTL(mse_terms(3)).double(), ExcessMTL(mse_terms(3)).double()
    for g in steps[:2]:
        alone.aggregate(g, torch.ones(3))
        stopped.aggregate(g, torch.ones(3))
    resumed = ExcessMTL(mse_terms(3)).double()
    resumed.load_state_dict(stopped.state_dict())
    for g in steps[2:]:
        expected, got = alone.aggregate(g, torch.ones(3)), resumed.aggregate(g, torch.ones(3))
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_a_resumed_state_goes_to_the_strategys_device():
    """A checkpoint is read on the CPU; the run's strategy is on its device (meta stands in for
    a GPU here): the sums of squares must follow it, or the next step mixes devices."""
    stopped = ExcessMTL(mse_terms(2))
    stopped.aggregate(torch.randn(2, 5), torch.ones(2))
    resumed = ExcessMTL(mse_terms(2)).to("meta")
    resumed.set_extra_state(through_disk(stopped.state_dict())["_extra_state"])
    assert resumed.squares.device == resumed.weight.device
    assert torch.equal(resumed.baseline, stopped.baseline)


def test_a_step_size_of_zero_is_refused():
    with pytest.raises(ConfigError, match=r"weighting.robust_step_size=0 is not allowed"):
        ExcessMTL(mse_terms(2), robust_step_size=0)
