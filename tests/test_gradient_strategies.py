"""The gradient-based strategies: each solver against an independent float64 solution of the
same problem on the hard cases (tests/hard_gradients.py), each surgery against the same surgery
done on the vectors themselves, and the property each method is built for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import mse_terms, through_disk
from hard_gradients import (
    assert_same_point,
    hard_cases,
    reference_cagrad_weights,
    reference_fair,
    reference_min_norm,
    reference_projection,
)

from mtltrain.errors import ConfigError
from mtltrain.weighting.aligned_mtl import AlignedMTL
from mtltrain.weighting.cagrad import CAGrad, conflict_averse
from mtltrain.weighting.conflict_free import ConFIG
from mtltrain.weighting.db_mtl import DBMTL
from mtltrain.weighting.dualproj import DualProj
from mtltrain.weighting.fairgrad import FairGrad
from mtltrain.weighting.graddrop import GradDrop
from mtltrain.weighting.gradvac import GradVac
from mtltrain.weighting.imtl import IMTL
from mtltrain.weighting.nash_mtl import NashMTL
from mtltrain.weighting.pcgrad import PCGrad
from mtltrain.weighting.solvers import fair_weights
from mtltrain.weighting.upgrad import UPGrad

CASES = hard_cases()
IDS = [name for name, _ in CASES]


def direction(strategy, g: np.ndarray) -> np.ndarray:
    """The direction `strategy` gives for the rows of g, in float64."""
    d, weights = strategy.double().aggregate(torch.from_numpy(g), torch.ones(len(g)))
    assert torch.isfinite(weights).all()
    return d.numpy()


# ---- solvers, against independent solutions --------------------------------------------------


@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_upgrad_is_the_mean_of_exact_projections(case, g):
    expected = np.mean([reference_projection(g, gi) for gi in g], axis=0)
    strategy = UPGrad(mse_terms(len(g)))
    assert_same_point(direction(strategy, g), expected, g, floor=3e-8)
    assert strategy.unsolved.item() == 0


@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_dualproj_is_the_exact_projection_of_the_mean(case, g):
    expected = reference_projection(g, g.mean(axis=0))
    assert_same_point(direction(DualProj(mse_terms(len(g))), g), expected, g, floor=3e-8)


def test_a_ridge_would_move_the_projection_when_norms_differ():
    """torchjd's default adds 1e-4 to the Gramian's diagonal; with norms 1e-2 and 1 the
    projection it gives is off by far more than the 1e-6 ours is held to."""
    g = np.array([[1e-2, 0.0], [-1.0, 0.5]])
    exact = reference_projection(g, g.mean(axis=0))
    assert_same_point(direction(DualProj(mse_terms(2)), g), exact, g)
    m = g @ g.T + 1e-4 * np.eye(2)
    lam = np.clip(np.linalg.solve(m, -(m @ np.full(2, 0.5))), 0, None)  # both constraints bind
    ridged = (np.full(2, 0.5) + lam) @ g
    assert np.linalg.norm(ridged - exact) > 1e-4 * np.linalg.norm(exact)


def feasible(g: np.ndarray) -> bool:
    """Whether some direction improves every task (Gordan: 0 not in the hull of the unit rows)."""
    units = g / np.linalg.norm(g, axis=1, keepdims=True)
    return np.linalg.norm(reference_min_norm(units)) > 1e-6


@pytest.mark.parametrize("power", [1.0, 2.0])
@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_fair_weights_solve_their_equations_exactly(case, g, power):
    """Nash-MTL (p = 1) and FairGrad (p = 2): M·w = w^(−1/p), against Newton on log w; a
    zero gradient has nothing to bargain with and gets w = 0."""
    solution = fair_weights(torch.from_numpy(g @ g.T), power)
    kept = np.linalg.norm(g, axis=1) > 0
    assert (solution.weights.numpy()[~kept] == 0).all()
    if not feasible(g[kept]):  # no direction improves every task: no solution, and it says so
        assert not solution.converged
        return
    expected = reference_fair(g[kept], power)
    assert solution.converged and expected is not None
    assert_same_point(solution.weights.numpy() @ g, expected @ g[kept], g)


def test_nash_mtl_keeps_the_last_solved_weights_and_counts_a_failure():
    nash = NashMTL(mse_terms(2)).double()
    first = nash.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).double(), torch.ones(2))[1]
    torch.testing.assert_close(first, torch.tensor([1.0, 0.5]).double())  # 1/‖g‖, orthogonal
    opposite = torch.tensor([[1.0, 2.0], [-2.0, -4.0]]).double()
    _, weights = nash.aggregate(opposite, torch.ones(2))
    assert torch.equal(weights, first) and nash.report()["solver_unconverged"].item() == 1


@pytest.mark.parametrize("c", [0.4, 0.9])
@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_cagrad_solves_its_inner_problem_exactly(case, g, c):
    """The inner problem's value is the reference's or below; the direction matches wherever
    it is well defined (d depends on g_w/‖g_w‖, which a g_w near 0 leaves to rounding); a
    ball of radius 0 (g₀ = 0) gives d = g₀, and an optimal g_w of 0 gives d = g₀, counted."""
    k = len(g)
    largest = np.linalg.norm(g, axis=1).max()
    kept = np.linalg.norm(g, axis=1) > 3e-8 * largest  # a zero gradient can neither gain nor lose
    g0 = g.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    strategy = CAGrad(mse_terms(k), c=c)
    d = direction(strategy, g)
    if np.linalg.norm(g0) <= 3e-8 * largest:
        assert_same_point(d, g0 / (1 + c**2), g, floor=3e-8)
        return

    def value(w: np.ndarray) -> float:
        return float((w @ g[kept]) @ g0 + radius * np.linalg.norm(w @ g[kept]))

    w_ref = reference_cagrad_weights(g[kept], radius, g0)
    m = torch.from_numpy((g @ g.T)[np.ix_(kept, kept)])
    w_ours, converged = conflict_averse(m, radius, torch.full((int(kept.sum()),), 1.0 / k).double())
    best = 0.0 if w_ref is None else value(w_ref)
    rounding = 3e-8 * largest * (radius + np.linalg.norm(g0))  # ‖g_w‖ to √ε of the largest
    assert value(w_ours.numpy()) <= best + 1e-9 * abs(best) + rounding
    gw = 0 * g0 if w_ref is None else w_ref @ g[kept]
    if np.linalg.norm(gw) >= 1e-4 * largest:
        expected = (g0 + radius / np.linalg.norm(gw) * gw) / (1 + c**2)
        assert converged and strategy.unsolved.item() == 0
        assert_same_point(d, expected, g, floor=3e-8)
    elif strategy.unsolved.item() > 0:  # its own Gramian's search, not this one's: rounding
        assert_same_point(d, g0 / (1 + c**2), g, floor=3e-8)
        assert strategy.unsolved.item() == 1


def test_cagrad_with_a_small_c_still_solves_a_small_but_resolved_mean():
    """c = 0.01 and ‖g₀‖ = 2e-6 of the largest: a radius of 2e-8, yet g₀ is resolved."""
    g = np.array([[1.0, 2e-6], [-1.0, 2e-6]])
    c = 0.01
    g0 = g.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    w = reference_cagrad_weights(g, radius, g0)
    gw = w @ g
    expected = (g0 + radius / np.linalg.norm(gw) * gw) / (1 + c**2)
    strategy = CAGrad(mse_terms(2), c=c)
    np.testing.assert_allclose(direction(strategy, g), expected, rtol=1e-6, atol=1e-12)
    assert strategy.unsolved.item() == 0


def test_cagrad_without_rescale_is_the_papers_formula():
    g = np.array([[1.0, 0.2], [-0.5, 1.0]])
    with_rescale = direction(CAGrad(mse_terms(2), c=0.5), g)
    without = direction(CAGrad(mse_terms(2), c=0.5, rescale=False), g)
    np.testing.assert_allclose(with_rescale * 1.25, without, rtol=1e-12)


@pytest.mark.parametrize(("case", "g"), [c for c in CASES if len(c[1]) <= c[1].shape[1]],
                         ids=[n for n, g in CASES if len(g) <= g.shape[1]])  # fmt: skip
def test_imtl_g_gives_equal_projections_on_the_unit_gradients(case, g):
    """The paper's conditions on the vectors: Σα = 1 and d·u_k equal and positive for all k
    (a zero gradient left out, α = 0); where they have one solution (no two gradients share
    a direction), it is the reference's; where none (opposite gradients), α = 1/K, counted."""
    norms = np.linalg.norm(g, axis=1)
    kept = norms > 3e-8 * norms.max()  # below, M⁺ cannot resolve a gradient
    units, rows = g[kept] / norms[kept, None], g[kept]
    k, n = len(g), len(rows)
    strategy = IMTL(mse_terms(k), variant="gradient").double()
    d, alpha = strategy.aggregate(torch.from_numpy(g), torch.ones(k))
    system = np.vstack([(units[1:] - units[0]) @ rows.T, np.ones((1, n))])
    rhs = np.r_[np.zeros(n - 1), 1.0]
    solution = np.linalg.lstsq(system, rhs, rcond=None)[0]
    largest = norms.max()  # a Gramian's rounding, in length: ~1e-16 of it
    impartial = units[0] @ (solution @ rows)  # the common projection
    if np.linalg.norm(system @ solution - rhs) > 1e-9 or impartial < 1e-9 * largest:
        assert strategy.unsolved.item() == 1
        np.testing.assert_allclose(alpha.numpy(), 1 / k)
        return
    assert strategy.unsolved.item() == 0 and (alpha.numpy()[~kept] == 0).all()
    projections = units @ d.numpy()
    np.testing.assert_allclose(projections, projections[0], rtol=1e-6, atol=1e-10 * largest)
    assert alpha.sum().item() == pytest.approx(1.0) and projections[0] > 0
    if np.linalg.matrix_rank(system) == n:
        assert_same_point(d.numpy(), solution @ rows, g, floor=3e-8)


def test_imtl_g_counts_a_closed_form_whose_weights_sum_below_zero():
    """Σ M⁺n < 0: the equal projections of M⁺n turn negative under Σα = 1."""
    u = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.5]])
    g = u / np.linalg.norm(u, axis=1, keepdims=True) * np.array([[1.0], [1.0], [0.1]])
    alpha = np.linalg.pinv(g @ g.T) @ np.linalg.norm(g, axis=1)
    assert alpha.sum() < 0
    strategy = IMTL(mse_terms(3), variant="gradient").double()
    _, weights = strategy.aggregate(torch.from_numpy(g), torch.ones(3))
    assert strategy.unsolved.item() == 1
    np.testing.assert_allclose(weights.numpy(), 1 / 3)


# ---- surgeries, against the same surgery on the vectors -------------------------------------


def orders(seed: int, k: int, count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(k, generator=generator).tolist() for _ in range(count)]


@pytest.mark.parametrize(("case", "g"), CASES[:18], ids=IDS[:18])
def test_pcgrad_is_the_projection_surgery_on_the_vectors(case, g):
    k = len(g)
    projected = g.copy()
    for i, order in zip(range(k), orders(7, k, k), strict=True):
        for j in order:
            dot = projected[i] @ g[j]
            if j != i and dot < 0 and g[j] @ g[j] > 0:
                projected[i] -= dot / (g[j] @ g[j]) * g[j]
    ours = direction(PCGrad(mse_terms(k), seed=7), g)
    np.testing.assert_allclose(ours, projected.sum(axis=0), rtol=1e-9, atol=1e-9 * np.abs(g).max())


def test_pcgrad_leaves_two_tasks_without_conflict():
    """For two tasks the surgery's sum has no negative projection on either gradient."""
    rng = np.random.default_rng(4)
    for _ in range(50):
        g = rng.normal(size=(2, 6))
        g[1] = -g[0] + 0.3 * rng.normal(size=6)
        d = direction(PCGrad(mse_terms(2)), g)
        assert (g @ d >= -1e-12).all()


def test_gradvac_is_its_surgery_on_the_vectors_and_moves_its_targets():
    rng = np.random.default_rng(5)
    g = rng.normal(size=(3, 8))
    strategy = GradVac(mse_terms(3), beta=0.5, seed=3).double()
    targets = np.zeros((3, 3))
    for step, order_list in enumerate([orders(3, 3, 6)[0:3], orders(3, 3, 6)[3:6]]):
        moved = g.copy()
        for i, order in enumerate(order_list):
            for j in order:
                if j == i:
                    continue
                cos = moved[i] @ g[j] / (np.linalg.norm(moved[i]) * np.linalg.norm(g[j]))
                goal = targets[i, j]
                if cos < goal:
                    moved[i] += (np.linalg.norm(moved[i]) * (goal * np.sqrt(1 - cos**2) - cos *
                                 np.sqrt(1 - goal**2)) / (np.linalg.norm(g[j]) *
                                 np.sqrt(1 - goal**2))) * g[j]  # fmt: skip
                targets[i, j] = 0.5 * goal + 0.5 * cos
        ours = strategy.aggregate(torch.from_numpy(g), torch.ones(3))[0].numpy()
        np.testing.assert_allclose(ours, moved.sum(axis=0), rtol=1e-9, err_msg=f"step {step}")
        np.testing.assert_allclose(strategy.target.numpy(), targets, rtol=1e-12)


def test_gradvac_leaves_a_gradient_whose_target_cosine_is_one():
    """After parallel gradients with β = 1 the target is 1, which no finite move reaches."""
    strategy = GradVac(mse_terms(2), beta=1.0).double()
    strategy.aggregate(torch.tensor([[1.0, 0.0], [2.0, 0.0]]).double(), torch.ones(2))
    assert strategy.target[0, 1].item() == 1.0
    d, _ = strategy.aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).double(), torch.ones(2))
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0]).double())


def test_graddrop_on_a_representation_keeps_one_sign_per_feature_for_the_whole_batch():
    """The paper's G_k = Σ_batch sgn(A)·∇_A L_k: here G = (0, 3), (−3, −1), (2, −3) per
    feature, so P = 1, 0 and 0.4; feature 2 keeps one task for both examples."""
    a = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 1.0, 1.0]])
    grad_a = torch.tensor(
        [[[1.0, 2.0, 1.0], [1.0, -1.0, 1.0]], [[2.0, 1.0, -1.0], [-1.0, 0.0, -2.0]]]
    )
    strategy = GradDrop(mse_terms(2), seed=0)
    first_task = 0
    for _ in range(2000):
        d, _ = strategy.aggregate(grad_a.reshape(2, -1), torch.ones(2), at=(a,))
        d = d.view(2, 3)
        torch.testing.assert_close(d[:, 0], grad_a[1, :, 0])  # P = 1: the positive G_1 only
        torch.testing.assert_close(d[:, 1], grad_a[:, :, 1].sum(dim=0))  # P = 0: both negative
        first_task += bool(torch.equal(d[:, 2], grad_a[0, :, 2]))
        assert torch.equal(d[:, 2], grad_a[0, :, 2]) or torch.equal(d[:, 2], grad_a[1, :, 2])
    assert abs(first_task / 2000 - 0.4) < 0.03


def test_graddrop_on_parameters_keeps_one_sign_per_coordinate_with_probability_its_purity():
    j = torch.tensor([[3.0, 1.0, -1.0], [1.0, -1.0, -2.0]])  # purity per coordinate: 1, ½, 0
    strategy = GradDrop(mse_terms(2), representation=False, seed=0)
    kept_positive = torch.zeros(3)
    for _ in range(4000):
        d, share = strategy.aggregate(j, torch.ones(2))
        kept_positive += (d == torch.tensor([4.0, 1.0, 0.0])).float()
        assert d[0] == 4.0 and d[2] == -3.0  # pure coordinates: all of the one sign kept
    assert abs(kept_positive[1] / 4000 - 0.5) < 0.03
    assert ((share >= 0) & (share <= 1)).all()


# ---- the other closed forms -----------------------------------------------------------------


def test_aligned_mtl_by_hand_and_its_aligned_system():
    """Orthogonal gradients of norms 1 and 2: λ = 1, 4; B = diag(1, ½); the aligned rows
    Bᵀ·G have equal norm √λ_min = 1 and stay orthogonal."""
    g = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    strategy = AlignedMTL(mse_terms(2))
    np.testing.assert_allclose(direction(strategy, g), [1.0, 1.0, 0.0], rtol=1e-12)
    rng = np.random.default_rng(6)
    g = rng.normal(size=(4, 9)) * np.logspace(0, 2, 4)[:, None]
    weights = strategy.gramian_weights(torch.from_numpy(g @ g.T), torch.ones(4)).numpy()
    eigenvalues, v = np.linalg.eigh(g @ g.T)
    balance = np.sqrt(eigenvalues.min()) * (v / np.sqrt(eigenvalues)) @ v.T
    aligned = balance.T @ g
    np.testing.assert_allclose(aligned @ aligned.T, eigenvalues.min() * np.eye(4), atol=1e-9)
    np.testing.assert_allclose(weights, balance.sum(axis=1), rtol=1e-9)


WELL_POSED = [(n, g) for n, g in CASES if np.linalg.cond(g @ g.T) < 1e8]


@pytest.mark.parametrize(("case", "g"), WELL_POSED, ids=[n for n, _ in WELL_POSED])
def test_aligned_mtl_gives_each_task_its_share_of_the_balanced_system(case, g):
    """G·d = √λ_min·M^(1/2)·1 for a full-rank M (from d = Gᵀ·B·1), with M^(1/2) by numpy."""
    eigenvalues, v = np.linalg.eigh(g @ g.T)
    expected = np.sqrt(eigenvalues.min()) * (v * np.sqrt(eigenvalues)) @ v.T @ np.ones(len(g))
    projections = g @ direction(AlignedMTL(mse_terms(len(g))), g)
    np.testing.assert_allclose(projections, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_config_is_the_pseudo_inverse_direction_on_the_vectors(case, g):
    """A zero gradient has no direction and is left out."""
    norms = np.linalg.norm(g, axis=1)
    rows = g[norms > 0]
    best = np.linalg.pinv(rows / norms[norms > 0, None]) @ np.ones(len(rows))
    unit = best / np.linalg.norm(best)
    expected = (rows @ unit).sum() * unit
    assert_same_point(direction(ConFIG(mse_terms(len(g))), g), expected, g, floor=3e-8)


def test_config_has_equal_cosines_with_every_gradient():
    g = np.random.default_rng(8).normal(size=(4, 10))
    d = direction(ConFIG(mse_terms(4)), g)
    cosines = g @ d / (np.linalg.norm(g, axis=1) * np.linalg.norm(d))
    np.testing.assert_allclose(cosines, cosines[0], rtol=1e-10)
    assert cosines[0] > 0


def test_db_mtl_by_hand():
    """ĝ ← 0.9·ĝ + 0.1·g from 0; each ĝ_k scaled to the largest norm."""
    strategy = DBMTL(mse_terms(2), beta=0.9)
    j1 = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
    d, scale = strategy.aggregate(j1, torch.ones(2))
    torch.testing.assert_close(scale, torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(d, 0.1 * (j1[0] + 5 * j1[1]))
    j2 = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    d, scale = strategy.aggregate(j2, torch.ones(2))
    average = 0.9 * 0.1 * j1 + 0.1 * j2  # rows: [0.27, 0.36], [0, 0.29]
    torch.testing.assert_close(scale, torch.tensor([1.0, 0.45 / 0.29]))
    torch.testing.assert_close(d, average[0] + 0.45 / 0.29 * average[1])


def test_settings_out_of_range_are_refused():
    with pytest.raises(ConfigError, match=r"weighting.c=-1"):
        CAGrad(mse_terms(2), c=-1)
    with pytest.raises(ConfigError, match=r"weighting.alpha=0"):
        FairGrad(mse_terms(2), alpha=0)
    with pytest.raises(ConfigError, match=r"weighting.variant='both'.*'hybrid'"):
        IMTL(mse_terms(2), variant="both")
    with pytest.raises(ConfigError, match=r"weighting.beta=1"):
        DBMTL(mse_terms(2), beta=1)


def test_db_mtl_resumed_state_goes_to_the_strategys_device():
    """A checkpoint is read on the CPU; the average of the gradients must follow the strategy
    to its device (meta stands in for a GPU), or the next step mixes devices."""
    stopped = DBMTL(mse_terms(2))
    stopped.aggregate(torch.randn(2, 5), torch.ones(2))
    resumed = DBMTL(mse_terms(2)).to("meta")
    resumed.set_extra_state(through_disk(stopped.state_dict())["_extra_state"])
    assert resumed.average.device == resumed.weight.device
