"""Projection onto the dual cone of the task gradients, from their Gramian alone.

The dual cone of the rows g_k of G is {x : g_k·x ≥ 0 for every k}: the directions that no
task's loss rises along. The projection of Gᵀu onto it is Gᵀv with

    v = argmin_{v ≥ u} vᵀMv,    M = G·Gᵀ

(Quinton & Rey 2024, Proposition 1: the dual of min ‖x − Gᵀu‖² subject to Gx ≥ 0). With
v = u + λ this is a nonnegative quadratic program in λ, solved here exactly by an active-set
method (Lawson–Hanson's, on the Gramian): the free coordinates of λ take the unconstrained
minimiser on their subspace, a coordinate leaves when the step towards it would make it
negative, and the most negative gradient coordinate joins while one is below zero beyond
rounding (the KKT conditions of the problem). No ridge is added to M: torchjd's default adds
1e-4 to its diagonal, which moves the result when gradient norms differ widely.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mtltrain.weighting.base import resolved_rows
from mtltrain.weighting.solvers.min_norm import EPS


class Projection(NamedTuple):
    """The weights v (Gᵀv is the projection), and whether the optimality test passed."""

    weights: Tensor
    converged: bool


def project_to_dual_cone(
    gramian: Tensor, u: Tensor, max_iterations: int | None = None
) -> Projection:
    """v ≥ u minimising vᵀMv for a float64 Gramian M (K × K) and weights u, on the host
    (solved in NumPy, whose calls on K × K arrays cost a tenth of torch's).

    The cone depends on the gradients' directions only, so the problem is solved on the unit
    gradients ĝ_k = g_k/‖g_k‖ (Gᵀu = Ĝᵀ(‖g‖·u)), where a tiny gradient's constraint is as well
    conditioned as any; a zero gradient's constraint holds for every direction and is left out.
    """
    u = u.double()
    kept = resolved_rows(gramian, EPS)
    v = u.clone()
    if not bool(kept.any()):  # every gradient is zero: the projection is zero whatever v
        return Projection(v, True)
    rows = kept.numpy(force=True)
    m = gramian.double().numpy(force=True)[np.ix_(rows, rows)]
    n = np.sqrt(np.maximum(m.diagonal(), 0))
    unit = m / np.outer(n, n)
    scaled, converged = _nonnegative_qp(unit, n * u.numpy(force=True)[rows], max_iterations)
    v[kept] = torch.from_numpy(scaled / n)
    return Projection(v, converged)


def _nonnegative_qp(
    m: np.ndarray, u: np.ndarray, max_iterations: int | None
) -> tuple[np.ndarray, bool]:
    """v = u + λ, λ ≥ 0, minimising vᵀmv: the active-set method of the module."""
    k = m.shape[0]
    size = np.abs(m)
    free: list[int] = []
    lam = np.zeros(k)
    value = float(u @ m @ u)
    for _ in range(max_iterations or 10 * k + 10):
        v = u + lam
        gradient = m @ v
        # a coordinate at its bound whose gradient is below 0 beyond rounding would lower vᵀMv
        rounding = 4 * k * EPS * (size @ np.abs(v))
        pull = -(gradient + rounding)
        pull[free] = -np.inf
        j = int(pull.argmax())
        if pull[j] <= 0:
            return v, True
        moved, candidate = _settle(m, u, [*free, j], lam)
        lower = float((u + candidate) @ m @ (u + candidate))
        if lower >= value:  # rounding keeps the best coordinate from helping: as good as it gets
            return v, True
        free, lam, value = moved, candidate, lower
    return u + lam, False


def _settle(
    m: np.ndarray, u: np.ndarray, free: list[int], lam: np.ndarray
) -> tuple[list[int], np.ndarray]:
    """Move the free coordinates to their unconstrained minimiser, dropping those that would
    turn negative on the way, until the minimiser is positive on all that are left."""
    while True:
        target = np.zeros_like(lam)
        rhs = -(m[free] @ u)
        # LAPACK's gelsd, as torch's "gelsd"
        target[free] = np.linalg.lstsq(m[np.ix_(free, free)], rhs, rcond=None)[0]
        if bool((target[free] > 0).all()):
            return free, target
        current = lam[free]
        leaving = target[free] <= 0
        gap = current - target[free]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(leaving & (gap > 0), current / np.maximum(gap, EPS), np.inf)
        ratios = np.where(leaving & (gap <= 0), 0.0, ratios)
        theta = float(np.clip(ratios.min(), 0.0, 1.0))
        lam = lam + theta * (target - lam)
        keep = lam[free] > EPS * max(1.0, float(np.abs(lam).max()))
        keep[int(ratios.argmin())] = False  # the coordinate that reached 0 leaves
        lam[[i for i, kept in zip(free, keep.tolist(), strict=True) if not kept]] = 0.0
        free = [i for i, kept in zip(free, keep.tolist(), strict=True) if kept]
        if not free:
            return free, lam
