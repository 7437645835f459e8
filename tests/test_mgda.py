"""MGDA: the min-norm point of the task gradients' convex hull, exact on hard cases.

The reference (tests/hard_gradients.py) is an independent float64 solution of the same
problem: every face of the simplex is tried (the affine min-norm point of each subset of the
gradients, by numpy's least squares on the KKT system), the feasible one of least norm wins.
That is exact for the K ≤ 10 of these tests and shares no code with the solver.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_config
from hard_gradients import assert_same_point, hard_cases, reference_min_norm

from mtltrain.build import build_job
from mtltrain.errors import ConfigError
from mtltrain.loop._job_step import PerJobStep
from mtltrain.losses import LossTerm, mse
from mtltrain.weighting.mgda import MGDA
from mtltrain.weighting.solvers import min_norm_point


def cases_with_a_pareto_stationary_one():
    both_ways = np.random.default_rng(3).normal(size=(4, 40))
    both_ways[1], both_ways[2] = 3 * both_ways[0], -0.5 * both_ways[0]
    return [
        *hard_cases(),
        ("collinear both ways", both_ways),
        ("opposite: Pareto-stationary", np.array([[1.0, 2.0], [-2.0, -4.0]])),
    ]


@pytest.mark.parametrize(
    ("case", "g"),
    cases_with_a_pareto_stationary_one(),
    ids=[c for c, _ in cases_with_a_pareto_stationary_one()],
)
def test_the_min_norm_point_is_exact(case, g):
    solution = min_norm_point(torch.from_numpy(g @ g.T))
    weights = solution.weights.numpy()
    assert solution.converged
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert_same_point(weights @ g, reference_min_norm(g), g)


@pytest.mark.parametrize(
    ("case", "g"),
    cases_with_a_pareto_stationary_one(),
    ids=[c for c, _ in cases_with_a_pareto_stationary_one()],
)
def test_a_warm_start_finds_the_same_point(case, g):
    """Started from every vertex at once, from one, and from the answer of a nearby problem:
    the same exact point (a warm solve is kept only where it ends on the optimality test)."""
    k = len(g)
    nearby = g + 0.3 * np.random.default_rng(0).normal(size=g.shape) * np.abs(g).max()
    for start in (
        torch.ones(k, dtype=torch.float64),
        torch.eye(k, dtype=torch.float64)[k - 1],
        min_norm_point(torch.from_numpy(nearby @ nearby.T)).weights,
    ):
        solution = min_norm_point(torch.from_numpy(g @ g.T), start=start)
        weights = solution.weights.numpy()
        assert solution.converged
        assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert_same_point(weights @ g, reference_min_norm(g), g)


def test_the_documented_precision_holds_on_random_degenerate_cases():
    """Near-zero gradients on the line through two opposite ones, norms 1 to 1e6, few
    dimensions: 1e-6 relative, or 3e-8 of the largest norm (a Gramian's √ε), and the optimality
    test passes."""
    rng = np.random.default_rng(7)
    for _ in range(400):
        k, dim = rng.integers(2, 7), rng.choice([1, 2, 3, 10])
        spread = np.logspace(0, rng.uniform(0, 6), k)[rng.permutation(k)]
        g = rng.normal(size=(k, dim)) * spread[:, None]
        if rng.random() < 0.4:
            g[rng.integers(k)] *= 1e-8
        if rng.random() < 0.4:
            g[1] = -rng.uniform(0.1, 10) * g[0]
        solution = min_norm_point(torch.from_numpy(g @ g.T))
        assert solution.converged
        assert_same_point(solution.weights.numpy() @ g, reference_min_norm(g), g, floor=3e-8)


def test_two_gradients_have_the_closed_form():
    """K = 2: α_1 = clip((g2 − g1)·g2 / ‖g1 − g2‖², 0, 1) (Sener & Koltun 2018, Alg. 1)."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        g1, g2 = rng.normal(size=(2, 5)) * rng.uniform(0.1, 10, size=(2, 1))
        alpha = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
        g = np.stack([g1, g2])
        weights = min_norm_point(torch.from_numpy(g @ g.T)).weights.numpy()
        assert weights[0] == pytest.approx(alpha, abs=1e-9)


TERMS = tuple(LossTerm(f"t{k}", f"t{k}", "mse", "regression", False, mse) for k in range(3))


@pytest.mark.parametrize(
    ("normalization", "scale"),
    [
        ("none", lambda g, loss: np.ones(len(g))),
        ("l2", lambda g, loss: np.linalg.norm(g, axis=1)),
        ("loss", lambda g, loss: loss),
        ("loss+", lambda g, loss: loss * np.linalg.norm(g, axis=1)),
    ],
)
def test_normalisations_choose_the_weights_of_the_raw_gradients(normalization, scale):
    """α is the min-norm point of ĝ_k = g_k/n_k; the direction combines the raw g_k."""
    rng = np.random.default_rng(2)
    g = rng.normal(size=(3, 20)) * np.array([[0.01], [1.0], [30.0]])
    loss = np.array([0.5, 2.0, 7.0])
    mgda = MGDA(TERMS, normalization=normalization).double()
    direction, weights = mgda.aggregate(torch.from_numpy(g), torch.from_numpy(loss))
    normalised = g / scale(g, loss)[:, None]
    expected = reference_min_norm(normalised)
    assert_same_point(weights.numpy() @ normalised, expected, normalised)
    torch.testing.assert_close(direction, weights @ torch.from_numpy(g))
    assert weights.sum().item() == pytest.approx(1.0)


def test_opposite_gradients_give_no_step_and_say_so():
    """At a Pareto-stationary point the min-norm point is 0: the shared part does not move,
    and the logged direction norm says so."""
    mgda = MGDA(TERMS[:2]).double()
    mgda.aggregate(torch.tensor([[1.0, 2.0], [3.0, 1.0]], dtype=torch.float64), torch.ones(2))
    assert mgda.report()["direction_norm"].item() > 1
    g = torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=torch.float64)
    direction, weights = mgda.aggregate(g, torch.ones(2))
    assert direction.abs().max() < 1e-15 and weights.tolist() == pytest.approx([0.5, 0.5])
    assert mgda.report()["direction_norm"].item() < 1e-15


def test_a_jacobian_that_is_not_finite_gives_a_nan_direction_and_keeps_the_state():
    mgda = MGDA(TERMS[:2], normalization="l2")
    good = mgda.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.ones(2))[1]
    direction, weights = mgda.aggregate(torch.tensor([[torch.nan, 0.0], [0.0, 1.0]]), torch.ones(2))
    assert direction.isnan().all() and weights.isnan().all()
    assert torch.equal(mgda.weights(), good) and mgda.unsolved.item() == 0


def test_a_zero_gradient_stays_zero_when_normalised():
    """‖g‖ = 0 with l2 (or a loss of 0 with loss): that task's ĝ is 0, the point is 0."""
    for normalization, losses in (("l2", torch.ones(2)), ("loss", torch.tensor([0.0, 1.0]))):
        g = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
        direction, weights = MGDA(TERMS[:2], normalization).double().aggregate(g, losses)
        assert weights.isfinite().all() and direction.abs().max() < 1e-12


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match=r"weighting.normalization='l1'.*'loss\+'"):
        MGDA(TERMS, normalization="l1")
    nll = LossTerm("y", "y", "gaussian_nll", "regression", True, mse)
    with pytest.raises(ConfigError, match=r"term y \(gaussian_nll\) can be negative"):
        MGDA((nll,), normalization="loss")


SMALL = [
    "dataset=two_slope",
    "model=sin_hetero",
    "dataset.n_train=64",
    "trainer.batch_size=16",
    "+dataset.tasks.y3={slope:0.5,intercept:-1.0,noise_std:1.0}",
    "+dataset.losses.y3=[mse]",
]


@pytest.mark.parametrize("strategy", ["mgda", "mgda_ub"])
def test_the_weights_are_the_min_norm_point_of_the_right_gradients(strategy):
    """On a real model: mgda solves on the gradients of the shared parameters, mgda_ub on
    those of the shared representation, each taken here one task at a time."""
    job = build_job(make_config([*SMALL, f"weighting={strategy}"]))
    batch = next(job.train_split.batches(16))
    outputs, features = job.model(batch.inputs)
    losses = [t.fn(outputs[t.task], batch.targets[t.task]) for t in job.terms]
    of = [features] if strategy == "mgda_ub" else job.model.shared_parameters()
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, of, retain_graph=True)])
            for loss in losses]  # fmt: skip
    g = torch.stack(rows).double().numpy()
    PerJobStep(job).train_step(batch)
    assert_same_point(job.strategy.weights().double().numpy() @ g, reference_min_norm(g), g)


class MixedPrecisionModel(torch.nn.Module):
    """Shared parameters of two dtypes (a float64 layer beside a float32 one)."""

    def __init__(self) -> None:
        super().__init__()
        self.w32 = torch.nn.Parameter(torch.randn(3, 4))
        self.w64 = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(4, 1) for _ in range(2))

    def forward(self, x):
        z = x @ self.w32 + (x.double() @ self.w64).float()
        return {f"t{i}": head(z) for i, head in enumerate(self.heads)}, z

    def shared_parameters(self):
        return [self.w32, self.w64]

    def task_parameters(self, task):
        return list(self.heads[int(task[1:])].parameters())


def test_shared_parameters_of_two_dtypes_get_gradients_of_their_own_dtypes():
    from mtltrain.loop._engine import engine_for

    model = MixedPrecisionModel()
    strategy = MGDA(
        tuple(LossTerm(f"t{i}", f"t{i}", "mse", "regression", False, mse) for i in range(2))
    )
    outputs, features = model(torch.randn(5, 3))
    losses = torch.stack([outputs[f"t{i}"].square().mean() for i in range(2)])
    engine_for(strategy, model)(losses, features)
    assert model.w32.grad.dtype == torch.float32 and model.w64.grad.dtype == torch.float64
