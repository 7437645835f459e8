"""CAGrad (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021).

The direction maximises the worst task's local improvement in a ball around the mean gradient
g₀: d = g₀ + (√φ/‖g_w‖)·g_w with φ = c²‖g₀‖², g_w = Σ_k w_k·g_k and
w = argmin_{w ∈ Δ} g_wᵀg₀ + √φ·‖g_w‖, then d/(1 + c²) (`rescale`, as the authors' code does
by default; without it, the paper's formula). The inner problem is solved exactly: its
minimiser is the min-norm point of the hull of the shifted gradients g_k + t·g₀ at the one
root of the decreasing h(t) = ‖g_w(t)‖/t − √φ (see `conflict_averse`), found by a safeguarded
secant search over log t, each step an exact min-norm solve (`min_norm`). Its scale is the
mean's. Where the optimal g_w is 0 (below the Gramian's resolution) the formula has no value:
d = g₀ then, counted. A zero gradient can neither gain nor lose and is left out of the inner
problem (one below 3e-8 of the largest, where lengths of combinations are rounding); a g₀
below the Gramian's resolution leaves a ball of radius 0: d = g₀. "weight" logs
the w with d = Σ_k w_k·g_k. c = 0.4 (the paper's multi-task default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import PRECISION, GradientWeighting, Range, resolved_rows
from mtltrain.weighting.solvers import EPS, min_norm_point


class CAGrad(GradientWeighting):
    """d = (g₀ + √φ·g_w/‖g_w‖)/(1 + c²), w the exact minimiser of g_w·g₀ + √φ·‖g_w‖.

    g₀ is the mean gradient, √φ = c‖g₀‖, and w = argmin g_w·g₀ + c‖g₀‖‖g_w‖ is solved exactly
    (min-norm points of shifted gradients and a safeguarded root search, not a fixed number of
    optimizer steps); `rescale=true` divides by 1 + c² as the authors' code does (false: the
    paper's formula).

    Paper: Liu et al., NeurIPS 2021.
    Scale: mean (g₀ the mean gradient).
    Logs: `direction_norm`, `solver_unconverged`.
    """

    solves = True
    RANGES: ClassVar[Mapping[str, Range]] = {"c": (lambda v: v >= 0, "it must be >= 0")}

    def __init__(
        self,
        terms: Sequence[LossTerm],
        c: float = 0.4,
        rescale: bool = True,
        representation: bool = False,
        every: int = 1,
    ) -> None:
        super().__init__(terms, every)
        self.check_settings({"c": c})
        self.c, self.rescale = c, rescale
        self.level = "representation" if representation else "parameters"

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        k = gramian.shape[0]
        mean = torch.full((k,), 1.0 / k, dtype=torch.float64)
        largest = math.sqrt(max(0.0, float(gramian.diagonal().max())))
        mean_norm = math.sqrt(max(0.0, float(mean @ gramian @ mean)))  # ‖g₀‖
        radius = self.c * mean_norm  # √φ
        weights = mean.clone()
        if radius > 0 and mean_norm > PRECISION * largest:  # else g₀ is 0 to the Gramian
            kept = resolved_rows(gramian, PRECISION)  # a zero gradient can neither gain nor lose
            rows = gramian[kept][:, kept]
            w, converged = conflict_averse(rows, radius, mean[kept])
            self.record(converged)
            if converged:
                weights[kept] += (radius / math.sqrt(float(w @ rows @ w))) * w
        return weights / (1 + self.c**2) if self.rescale else weights


def conflict_averse(gramian: Tensor, radius: float, center: Tensor) -> tuple[Tensor, bool]:
    """w ∈ Δ minimising g_w·g₀ + radius·‖g_w‖, g₀ = Σ_k center_k·g_k, and whether the search
    met its tolerance (it does not where the optimal g_w is below the Gramian's resolution).

    Writing radius·‖g_w‖ = min_s radius·(‖g_w‖²/s + s)/2, the problem is min over t = s/radius
    of ψ(t) = N(t)²/(2t) + t·(radius² − ‖g₀‖²)/2, N(t) the min-norm of the hull of g_k + t·g₀;
    ψ is convex (a partial minimum of a jointly convex function) with ψ'(t) = (radius² −
    ‖g_w(t)‖²/t²)/2, so h(t) = ‖g_w(t)‖/t − radius decreases and its one root is the optimum.
    Below t_min = PRECISION·max‖g‖/radius ‖g_w‖ is rounding: an h ≤ 0 there means g_w ≈ 0.
    """
    pull = gramian @ center  # g_k·g₀
    g0g0 = float(center @ pull)
    largest = math.sqrt(max(0.0, float(gramian.diagonal().max())))

    def at(t: float) -> tuple[Tensor, float]:
        """w(t) = the min-norm weights of g_k + t·g₀, and h(t)."""
        shifted = gramian + t * (pull[:, None] + pull[None, :]) + t * t * g0g0
        w = min_norm_point(shifted).weights
        return w, math.sqrt(max(0.0, float(w @ gramian @ w))) / t - radius

    low, high = PRECISION * largest / radius, largest / radius  # h(high) ≤ 0: ‖g_w‖ ≤ max‖g‖
    w_low, h_low = at(low)
    if h_low <= 0:  # the optimal g_w is below rounding: no direction to add
        return w_low, False
    w, h_high = at(high)
    if h_high >= 0:
        return w, True
    # Illinois regula falsi on log t, where h's root sits at any scale
    x_low, x_high, side = math.log(low), math.log(high), 0
    for _ in range(200):
        x = (x_low * h_high - x_high * h_low) / (h_high - h_low)
        w, h = at(math.exp(x))
        if abs(h) <= 1e-13 * radius or x_high - x_low <= 4 * EPS:
            return w, True
        if h > 0:
            x_low, h_low = x, h
            if side == 1:
                h_high /= 2
            side = 1
        else:
            x_high, h_high = x, h
            if side == -1:
                h_low /= 2
            side = -1
    return w, False
