"""Hard cases of task gradients and independent float64 solutions of the problems gradient-based
strategies solve, written here without the strategies' own solvers (numpy only).

The cases: K = 2..10 random; conflicting (one gradient nearly opposite another); exactly and
nearly (1e-4) opposite, which puts 0 in or next to the hull; one near-zero gradient (1e-7,
1e-9) and one exactly zero; collinear ones; norms from 1 to 1e4; more tasks than dimensions.
(Closer than ~1e-8 of the largest norm a Gramian cannot tell nearly opposite from opposite:
‖g_i + g_j‖² is below its rounding. `unresolved_cases` holds such cases, on which only
robustness is asked.)
"""

from __future__ import annotations

import itertools

import mpmath
import numpy as np


def hard_cases(most: int = 10, dims: int = 40) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for k in range(2, most + 1):
        g = rng.normal(size=(k, dims))
        cases.append((f"K={k} random", g))
        conflicting = g.copy()
        conflicting[1] = -0.7 * conflicting[0] + 0.01 * rng.normal(size=dims)
        cases.append((f"K={k} conflicting", conflicting))
        opposite = g.copy()
        opposite[1] = -opposite[0]
        cases.append((f"K={k} opposite", opposite))
        nearly = opposite.copy()
        nearly[1] += 1e-4 * rng.normal(size=dims)
        cases.append((f"K={k} nearly opposite", nearly))
        tiny = g.copy()
        tiny[-1] *= 1e-7
        cases.append((f"K={k} near-zero", tiny))
        tinier = g.copy()
        tinier[-1] *= 1e-9
        cases.append((f"K={k} 1e-9 of the others", tinier))
        zero = g.copy()
        zero[-1] = 0.0
        cases.append((f"K={k} zero", zero))
        collinear = g.copy()
        collinear[1] = 3 * collinear[0]
        cases.append((f"K={k} collinear", collinear))
        cases.append((f"K={k} norms 1 to 1e4", g * np.logspace(0, 4, k)[:, None]))
        cases.append((f"K={k} in 3 dimensions", rng.normal(size=(k, 3))))
    return cases


def unresolved_cases(dims: int = 40) -> list[tuple[str, np.ndarray]]:
    """Gradients whose differences a Gramian cannot resolve: opposite up to 1e-9, a row of
    1e-12 next to rows of 1, and every row zero."""
    rng = np.random.default_rng(1)
    cases = []
    for k in (2, 3, 5):
        g = rng.normal(size=(k, dims))
        g[1] = -g[0] + 1e-9 * rng.normal(size=dims)
        cases.append((f"K={k} opposite up to 1e-9", g.copy()))
        g[1] = rng.normal(size=dims) * 1e-12
        cases.append((f"K={k} one row of 1e-12", g.copy()))
        cases.append((f"K={k} all zero", np.zeros((k, dims))))
    return cases


def assert_same_point(d: np.ndarray, expected: np.ndarray, g: np.ndarray, floor=1e-9) -> None:
    """1e-6 relative, or `floor` of the largest gradient's norm where the point is ~0 (a
    Gramian knows lengths to √ε ≈ 1.5e-8 of the largest)."""
    error = np.linalg.norm(d - expected)
    scale = np.linalg.norm(expected)
    largest = np.linalg.norm(g, axis=1).max()
    assert error <= 1e-6 * scale or error <= floor * largest, (error, scale, largest)


def reference_min_norm(g: np.ndarray) -> np.ndarray:
    """The min-norm point of the hull of the rows of g, by trying every face (on g scaled to a
    largest norm of 1, where least squares is accurate, then scaled back)."""
    scale = np.linalg.norm(g, axis=1).max()
    g = g / scale
    m = g @ g.T
    best, point = np.inf, None
    for size in range(1, len(g) + 1):
        for face in map(list, itertools.combinations(range(len(g)), size)):
            kkt = np.ones((size + 1, size + 1))
            kkt[:size, :size], kkt[size, size] = m[np.ix_(face, face)], 0.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            v = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
            if abs(v.sum() - 1) > 1e-9 or v.min() < -1e-12:
                continue
            d = v @ g[face]
            if d @ d < best:
                best, point = d @ d, d
    return point * scale


def reference_projection(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The projection of x onto the dual cone {y : g_k·y ≥ 0 ∀ k}, by trying every set of
    active constraints in the primal (on unit rows: the cone depends on directions only)."""
    norms = np.linalg.norm(g, axis=1)
    units = g[norms > 0] / norms[norms > 0, None]
    best, point = np.inf, None
    for size in range(len(units) + 1):
        for active in map(list, itertools.combinations(range(len(units)), size)):
            y = x.copy()
            if active:
                rows = units[active]
                y -= rows.T @ np.linalg.lstsq(rows @ rows.T, rows @ x, rcond=None)[0]
            if (units @ y < -1e-10 * np.linalg.norm(x)).any():
                continue
            if np.linalg.norm(y - x) < best:
                best, point = np.linalg.norm(y - x), y
    return point


def reference_fair(g: np.ndarray, power: float) -> np.ndarray | None:
    """w > 0 with M·w = w^(−1/power), by damped Newton on the convex f(w) = ½wᵀMw − Σ h(w_k)
    in 40-digit arithmetic (mpmath), so its answer is exact to far beyond float64; None where
    it finds no solution (f unbounded below)."""
    mpmath.mp.dps = 40
    k = len(g)
    m = mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in g @ g.T])
    p = mpmath.mpf(power)

    def f(w: list) -> mpmath.mpf:
        h = sum(mpmath.log(x) if power == 1 else x ** (1 - 1 / p) / (1 - 1 / p) for x in w)
        quad = sum(w[i] * m[i, j] * w[j] for i in range(k) for j in range(k))
        return quad / 2 - h

    w = [m[i, i] ** (-p / (p + 1)) for i in range(k)]
    for _ in range(300):
        pull = [x ** (-1 / p) for x in w]
        residual = [sum(m[i, j] * w[j] for j in range(k)) - pull[i] for i in range(k)]
        worst = max(abs(r / q) for r, q in zip(residual, pull, strict=True))
        if worst < mpmath.mpf(10) ** -30:
            return np.array([float(x) for x in w])
        hessian = m.copy()
        for i in range(k):
            hessian[i, i] += pull[i] / (p * w[i])
        step = mpmath.lu_solve(hessian, mpmath.matrix([-r for r in residual]))
        t = mpmath.mpf(1)
        for i in range(k):
            if step[i] < 0:
                t = min(t, mpmath.mpf("0.99") * w[i] / -step[i])
        start = f(w)  # near the solution f's changes fall below its precision: full steps
        while worst > 1e-8 and f([w[i] + t * step[i] for i in range(k)]) > start and t > 1e-30:
            t /= 2
        w = [w[i] + t * step[i] for i in range(k)]
        if max(w) > mpmath.mpf(10) ** 30:
            return None
    return None


def reference_cagrad_weights(g: np.ndarray, radius: float, g0: np.ndarray) -> np.ndarray | None:
    """w ∈ Δ minimising g_w·g₀ + radius·‖g_w‖, from the KKT conditions on every support S:
    with x = w_S/‖g_w‖, M_SS·x = (μ·1 − a_S)/ρ and xᵀM_SSx = 1, a quadratic in μ (a = G·g₀,
    ρ = radius); the feasible candidate of least objective wins, or None where that is a w
    with g_w = 0 (0 in the hull, objective 0)."""
    k = len(g)
    m = g @ g.T
    a, rho = g @ g0, radius

    def objective(w: np.ndarray) -> float:
        return float(w @ a + rho * np.sqrt(max(0.0, w @ m @ w)))

    best, weights = np.inf, None
    for size in range(1, k + 1):
        for support in map(list, itertools.combinations(range(k), size)):
            sub = m[np.ix_(support, support)]
            if np.linalg.cond(sub) > 1e12:
                continue
            inv = np.linalg.inv(sub)
            ones, a_s = np.ones(size), a[support]
            quad = [ones @ inv @ ones, -2 * ones @ inv @ a_s, a_s @ inv @ a_s - rho**2]
            for mu in np.roots(quad):
                if abs(mu.imag) > 1e-12:
                    continue
                x = inv @ (mu.real * ones - a_s) / rho
                if x.min() <= 0:
                    continue
                w = np.zeros(k)
                w[support] = x / x.sum()
                if objective(w) < best:
                    best, weights = objective(w), w
    zero_in_hull = np.linalg.norm(reference_min_norm(g)) <= 1e-9 * np.linalg.norm(g, axis=1).max()
    return None if zero_in_hull and best > 0 else weights


def reference_simplex_projection(v: np.ndarray) -> np.ndarray:
    """The Euclidean projection of v onto the probability simplex, max(v − θ, 0) with θ found
    by bisection on Σ max(v − θ, 0) = 1 (not the sort-based formula of the code)."""
    low, high = v.min() - 1.0, v.max()  # the sum is ≥ K ≥ 1 at the one, 0 at the other
    for _ in range(100):
        middle = (low + high) / 2
        if np.maximum(v - middle, 0).sum() > 1:
            low = middle
        else:
            high = middle
    return np.maximum(v - (low + high) / 2, 0)
