"""The α-fair weights of the task gradients, from their Gramian: w > 0 with M·w = w^(−1/p).

p = 1 is the Nash bargaining solution of Nash-MTL (Navon et al. 2022: GᵀGα = 1/α); p → ∞
approaches max-min fairness (FairGrad, Ban & Ji 2024). The equations are the stationarity
condition of the strictly convex f(w) = ½·wᵀMw − Σ_k h(w_k), h' = w^(−1/p) (h = log for
p = 1), so Newton's method with a line search that keeps w > 0 finds the one solution to
rounding, quadratically. Where no direction improves every task (0 in the hull of the
gradients, e.g. two opposite ones) f is unbounded below and there is no solution: the weights
grow without bound, and the solve says so instead of returning a fallback of its own (peers'
convex solvers then return the previous or equal weights without a word). So does a solution
whose d = Σ w_k g_k cancels below CANCELLATION of Σ w_k‖g_k‖, where a Gramian cannot tell
nearly opposite gradients from opposite ones.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mtltrain.weighting.base import resolved_rows
from mtltrain.weighting.solvers.min_norm import EPS

TOLERANCE = 1e-9  # on |w_k^(1/p)·(Mw)_k − 1|, the equations made scale-free, above rounding
# ρ = ‖Σ w_k g_k‖ / Σ w_k‖g_k‖ below this: a float64 Gramian knows ‖d‖² only to ε/ρ² > 2e-6
CANCELLATION = 1e-5
DIVERGED = 1e12  # weights this far above those of orthogonal gradients: f is unbounded below


class Fair(NamedTuple):
    """The weights, whether they solve the equations, and the Newton steps taken."""

    weights: Tensor
    converged: bool
    iterations: int


def fair_weights(gramian: Tensor, power: float = 1.0, max_iterations: int = 100) -> Fair:
    """w > 0 with M·w = w^(−1/power), M a float64 Gramian on the host; a zero gradient has
    nothing to bargain with: w = 0 (all zero: d = 0)."""
    kept = resolved_rows(gramian, EPS)
    weights = torch.zeros(gramian.shape[0], dtype=torch.float64)
    if bool(kept.any()):
        solution = _solve(gramian.double()[kept][:, kept], power, max_iterations)
        weights[kept] = solution.weights
        return Fair(weights, solution.converged, solution.iterations)
    return Fair(weights, True, 0)


def _solve(m: Tensor, power: float, max_iterations: int) -> Fair:
    """fair_weights on gradients that are all resolved (a diagonal > 0)."""
    top = float(m.diagonal().max())
    m = m / top  # if m'·w' = w'^(−1/p), then w = w'·top^(−p/(p+1)) solves the original
    scale = top ** (-power / (power + 1))
    start = m.diagonal() ** (-power / (power + 1))  # exact for orthogonal rows
    w = start
    for iteration in range(1, max_iterations + 1):
        pull = w ** (-1 / power)
        residual = m @ w - pull
        rounding = 4 * len(w) * EPS * (m.abs() @ w)  # Mw cancels when gradients nearly oppose
        if bool((residual.abs() <= TOLERANCE * pull + rounding).all()):
            return Fair(w * scale, _resolved(m, w), iteration)
        step = _newton_step(m + torch.diag(pull / (power * w)), residual)
        w = _line_search(m, w, step, power)
        if not bool(torch.isfinite(w).all()) or float((w / start).max()) > DIVERGED:
            return Fair(w * scale, False, iteration)
    return Fair(w * scale, False, max_iterations)


def _resolved(m: Tensor, w: Tensor) -> bool:
    """Whether ‖Σ w_k g_k‖ is at least CANCELLATION of Σ w_k‖g_k‖ (w ≥ 0)."""
    return float(w @ m @ w) >= (CANCELLATION * float(w @ m.diagonal().sqrt())) ** 2


def _newton_step(hessian: Tensor, residual: Tensor) -> Tensor:
    """−H⁻¹r, solved on the Jacobi-scaled system D·H·D (D = diag(H)^(−1/2)): weights that
    differ by orders of magnitude (tiny and huge gradients) keep the solve accurate."""
    d = hessian.diagonal().rsqrt()
    scaled = hessian * torch.outer(d, d)
    y = torch.linalg.lstsq(scaled, -(d * residual).unsqueeze(1), driver="gelsd").solution[:, 0]
    return d * y


def _objective(m: Tensor, w: Tensor, power: float) -> tuple[float, float]:
    """f(w) = ½·wᵀMw − Σ h(w_k), h = log (p = 1) or w^(1 − 1/p)/(1 − 1/p), and a bound on
    its rounding error (wᵀMw cancels when gradients nearly oppose)."""
    h = torch.log(w) if power == 1 else w ** (1 - 1 / power) / (1 - 1 / power)
    rounding = 4 * len(w) * EPS * float(w @ m.abs() @ w + h.abs().sum())
    return float(0.5 * w @ m @ w - h.sum()), rounding


def _line_search(m: Tensor, w: Tensor, step: Tensor, power: float) -> Tensor:
    """Backtracking (Armijo, up to f's rounding) along `step`, never leaving w > 0."""
    shrinking = step < 0
    t = 1.0
    if bool(shrinking.any()):
        t = min(1.0, 0.99 * float((w[shrinking] / -step[shrinking]).min()))
    start, rounding = _objective(m, w, power)
    slope = float((m @ w - w ** (-1 / power)) @ step)
    for _ in range(60):
        if _objective(m, w + t * step, power)[0] <= start + 1e-4 * t * slope + rounding:
            break
        t /= 2
    return w + t * step
