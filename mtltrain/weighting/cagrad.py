"""CAGrad (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021).

The direction maximises the worst task's local improvement in a ball around the mean gradient
g₀: d = g₀ + (√φ/‖g_w‖)·g_w with φ = c²‖g₀‖², g_w = Σ_k w_k·g_k and
w = argmin_{w ∈ Δ} g_wᵀg₀ + √φ·‖g_w‖, then d/(1 + c²) (`rescale`, as the authors' code does
by default; without it, the paper's formula). The inner problem is solved exactly: its
minimiser is the min-norm point of the hull of the shifted gradients g_k + t·g₀ at the t with
√φ·t = ‖g_w‖ (writing ‖g_w‖ = min_s (‖g_w‖²/s + s)/2), found by a safeguarded secant search
over t, each step an exact min-norm solve (`min_norm`). Its scale is the mean's. Where the
optimal g_w is 0 the formula has no value: d = g₀ then, counted. "weight" logs the w with
d = Σ_k w_k·g_k. c = 0.4 (the paper's multi-task default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Range
from mtltrain.weighting.min_norm import EPS, min_norm_point


class CAGrad(GradientWeighting):
    """d = (g₀ + √φ·g_w/‖g_w‖)/(1 + c²), w the exact minimiser of g_w·g₀ + √φ·‖g_w‖."""

    solves = True
    RANGES: ClassVar[Mapping[str, Range]] = {"c": (lambda v: v >= 0, "it must be >= 0")}

    def __init__(
        self,
        terms: Sequence[LossTerm],
        c: float = 0.4,
        rescale: bool = True,
        representation: bool = False,
    ) -> None:
        super().__init__(terms)
        self.check_settings({"c": c})
        self.c, self.rescale = c, rescale
        self.level = "representation" if representation else "parameters"

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        k = gramian.shape[0]
        mean = torch.full((k,), 1.0 / k, dtype=torch.float64)
        radius = self.c * float(mean @ gramian @ mean) ** 0.5  # √φ = c·‖g₀‖
        weights = mean.clone()
        if radius > 0:
            w, converged = conflict_averse(gramian, radius)
            norm = float(w @ gramian @ w) ** 0.5
            self.record(converged and norm > 0)
            if norm > 0:
                weights += (radius / norm) * w
        return weights / (1 + self.c**2) if self.rescale else weights


def conflict_averse(gramian: Tensor, radius: float) -> tuple[Tensor, bool]:
    """w ∈ Δ minimising g_w·g₀ + radius·‖g_w‖, and whether the search met its tolerance."""
    k = gramian.shape[0]
    mean = torch.full((k,), 1.0 / k, dtype=torch.float64)
    pull = gramian @ mean  # g_k·g₀
    g0g0 = float(mean @ pull)

    def shifted_minimiser(t: float) -> tuple[Tensor, float]:
        """w(t) = the min-norm weights of g_k + t·g₀, and ‖g_w(t)‖ − radius·t."""
        shifted = gramian + t * (pull[:, None] + pull[None, :]) + t * t * g0g0
        w = min_norm_point(shifted).weights
        return w, math.sqrt(max(0.0, float(w @ gramian @ w))) - radius * t

    low, (w_low, f_low) = 0.0, shifted_minimiser(0.0)
    if f_low <= 0:  # 0 is in the hull of the gradients: g_w = 0
        return w_low, True
    high = math.sqrt(float(gramian.diagonal().max())) / radius
    f_high = shifted_minimiser(high)[1]
    tolerance = 1e-13 * math.sqrt(float(gramian.diagonal().max()))
    side = 0
    for _ in range(100):
        t = (low * f_high - high * f_low) / (f_high - f_low)  # regula falsi (Illinois)
        w, f = shifted_minimiser(t)
        if abs(f) <= tolerance or high - low <= EPS * high:
            return w, True
        if f > 0:
            low, f_low = t, f
            if side == 1:
                f_high /= 2
            side = 1
        else:
            high, f_high = t, f
            if side == -1:
                f_low /= 2
            side = -1
    return w, False
