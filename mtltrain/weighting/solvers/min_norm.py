"""The exact min-norm point of the convex hull of K vectors, from their Gramian alone.

α = argmin_{α ≥ 0, Σα = 1} αᵀMα with M = G·Gᵀ: the weights of the shortest vector Gᵀα in
the hull of the rows of G. Solved by Wolfe's algorithm (Wolfe 1976, "Finding the nearest point
in a polytope"), which is finite and exact: it keeps a set S of affinely independent vertices
(the "corral") whose affine min-norm point has positive weights, adds the vertex that most
decreases the norm, and on the way back into the simplex drops the vertices whose weight
reaches 0. Every quantity it needs is an inner product, i.e. an entry of M. It stops when no
vertex g_j has g_j·x < x·x (x the current point) beyond rounding, which at the optimum is the
KKT condition of the problem, or when rounding keeps the best vertex from shortening x.
Peers use Frank–Wolfe with a stopping tolerance (torchjd's MGDA: ε = 1e-3, at most 100 steps),
whose result can stay far from this point.

Precision: the point is within 1e-6 of the exact one, relative, or, where the exact point is
itself that short, within 3e-8 of the largest gradient's norm: from a Gramian a length is known
to √ε ≈ 1.5e-8 of the largest (tests/test_mgda.py checks both against an independent solution).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

EPS = torch.finfo(torch.float64).eps


class MinNorm(NamedTuple):
    """The weights α, whether the optimality test passed, and the major iterations taken."""

    weights: Tensor
    converged: bool
    iterations: int


def min_norm_point(
    gramian: Tensor, max_iterations: int | None = None, start: Tensor | None = None
) -> MinNorm:
    """α ∈ Δ minimising αᵀMα for a float64 Gramian M (K × K, on the host); solved in NumPy,
    whose calls on K × K arrays cost a tenth of torch's. `start` (the last step's α): its
    support is the first corral, which saves most iterations where the point moves little;
    a warm solve that does not end on the optimality test is done again from the start."""
    k = gramian.shape[0]
    m = gramian.double().numpy(force=True)
    top = float(m.diagonal().max())
    if top <= 0:  # every vector is zero: any α gives the zero point
        return MinNorm(torch.full((k,), 1.0 / k, dtype=torch.float64), True, 0)
    m = m / top  # the same α; entries of order 1 keep the solves accurate
    limit = max_iterations or 10 * k + 10
    support = [] if start is None else np.flatnonzero(start.numpy(force=True) > 0).tolist()
    if support:
        warm = _wolfe(m, support, limit)
        if warm.optimal:
            return MinNorm(torch.from_numpy(warm.weights), True, warm.iterations)
    cold = _wolfe(m, [int(m.diagonal().argmin())], limit)
    return MinNorm(torch.from_numpy(cold.weights), cold.converged, cold.iterations)


class _Solve(NamedTuple):
    weights: np.ndarray
    converged: bool
    iterations: int
    optimal: bool  # ended on the optimality test (not on rounding keeping x from shortening)


def _wolfe(m: np.ndarray, corral: list[int], limit: int) -> _Solve:
    """Wolfe's major cycles from the min-norm point of the affine hull of `corral`."""
    k = m.shape[0]
    size = np.abs(m)
    weights = np.zeros(k)
    weights[corral] = 1.0 / len(corral)
    if len(corral) > 1:
        corral, weights = _minor_cycle(m, corral, weights)
    norm = float(weights @ m @ weights)
    for iteration in range(1, limit + 1):
        mw = m @ weights
        # a vertex outside the corral with x·g_j < x·x shortens x; none: x is optimal (KKT).
        # "<" beyond the rounding error of both sides, a few ulps of their terms' sizes
        sized = size @ weights
        rounding = 4 * k * EPS * (sized + weights @ sized)
        gain = weights @ mw - mw - rounding
        gain[corral] = -np.inf
        j = int(gain.argmax())
        if gain[j] <= 0:
            return _Solve(weights, True, iteration, True)
        corral, candidate = _minor_cycle(m, [*corral, j], weights)
        shorter = float(candidate @ m @ candidate)
        if shorter >= norm:  # rounding keeps the best vertex from helping: x is as good as it gets
            return _Solve(weights, True, iteration, False)
        weights, norm = candidate, shorter
    return _Solve(weights, False, limit, False)


def _minor_cycle(
    m: np.ndarray, corral: list[int], weights: np.ndarray
) -> tuple[list[int], np.ndarray]:
    """Move to the affine min-norm point of the corral, dropping vertices on the way until
    that point has positive weights on all of them."""
    while True:
        v = _affine_min_norm(m[np.ix_(corral, corral)])
        current = weights[corral]
        if bool((v > 0).all()):
            weights = np.zeros_like(weights)
            weights[corral] = v
            return corral, weights
        # the longest step from the current point towards v that stays in the simplex
        leaving = v <= 0
        gap = current - v
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(leaving & (gap > 0), current / np.maximum(gap, EPS), np.inf)
        ratios = np.where(leaving & (gap <= 0), 0.0, ratios)
        theta = float(np.clip(ratios.min(), 0.0, 1.0))
        moved = current + theta * (v - current)
        keep = moved > EPS * moved.max()
        keep[int(ratios.argmin())] = False  # the vertex that reached 0 leaves
        corral = [c for c, kept in zip(corral, keep.tolist(), strict=True) if kept]
        weights = np.zeros_like(weights)
        weights[corral] = moved[keep] / moved[keep].sum()


def _affine_min_norm(m: np.ndarray) -> np.ndarray:
    """v minimising vᵀMv subject to Σv = 1, as x = p_0 + Σ_i t_i·(p_i − p_0) from the shortest
    vertex p_0: the normal equations of t are in the differences p_i − p_0, which stay well
    scaled when p_0 is near zero and the others are not (where the bordered KKT system loses
    the small weights to rounding)."""
    n = m.shape[0]
    base = int(m.diagonal().argmin())
    rest = [i for i in range(n) if i != base]
    v = np.zeros(n)
    v[base] = 1.0
    if not rest:
        return v
    # (p_i − p_0)·(p_j − p_0) and (p_i − p_0)·p_0, from the Gramian
    cross = m[np.ix_(rest, rest)] - m[rest, base][:, None] - m[base, rest][None, :] + m[base, base]
    drift = m[rest, base] - m[base, base]
    t = np.linalg.lstsq(cross, -drift, rcond=None)[0]  # LAPACK's gelsd, as torch's "gelsd"
    v[rest] = t
    v[base] = 1.0 - t.sum()
    return v
