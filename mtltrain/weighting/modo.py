"""MoDo: multi-objective gradient descent with double sampling (Chen, Fernando, Ying & Chen,
"Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
Conflict-Avoidance", NeurIPS 2023).

Each step takes three independent batches: λ ← Π_Δ(λ − γ·(G₁·G₂ᵀ·λ + ρ·λ)) from the task
Jacobians G₁, G₂ of two of them (an unbiased estimate of the Gramian's λ-gradient, which one
batch's G·Gᵀ is not), then d = Σ_k λ_k·g_k of the third: the step's own batch, whose task heads
get their own, unweighted gradients. The loop draws the two from the training set
(`extra_batches`); where none are handed over (a loop of one's own), the step's own Jacobian
stands for both, the deterministic form. λ starts at 1/K and is kept in the buffer `weight`;
extra batches whose cross-Gramian is not finite leave it as it was. Three batches as the
paper's Algorithm 1 and LibMTL (the authors' NYU-v2/Office code takes two and steps along
Σ_k λ_k·(g₁ₖ + g₂ₖ) of both). γ = ρ = 0.1 are the authors' code's defaults (LibMTL's: γ = 1e-3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import (
    GradientWeighting,
    Range,
    float64_cross_gramian,
    float64_gramian,
)
from mtltrain.weighting.solvers import project_to_simplex


class MoDo(GradientWeighting):
    """d = Σ_k λ_k·g_k of the step's batch, λ ← Π_Δ(λ − γ(G₁G₂ᵀλ + ρλ)) from two other batches.

    G₁ and G₂ are the task Jacobians of two independent training batches drawn each step (the
    double sampling), g_k the step's own batch's task gradients; Π_Δ is the Euclidean
    projection onto the simplex, `gamma` γ the step size of λ, `rho` ρ its ℓ₂ regularisation.
    Costs three forward and 3K backward passes a step.

    Paper: Chen et al., NeurIPS 2023.
    Scale: Σ λ = 1.
    Logs: `direction_norm`.
    """

    extra_batches = ("train", "train")
    RANGES: ClassVar[Mapping[str, Range]] = {
        "gamma": (lambda v: v > 0, "it must be > 0"),
        "rho": (lambda v: v >= 0, "it must be >= 0"),
    }

    def __init__(self, terms: Sequence[LossTerm], gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__(terms)
        self.check_settings({"gamma": gamma, "rho": rho})
        self.gamma, self.rho = gamma, rho
        self.cross: Tensor | None = None  # G₁·G₂ᵀ of this step's extra batches

    def observe_extra(self, jacobians: Sequence[Tensor]) -> None:
        first, second = jacobians
        self.cross = float64_cross_gramian(first, second).cpu()

    def combine(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        cross = self.cross if self.cross is not None else float64_gramian(jacobian).cpu()
        self.cross = None
        lam = self.weight.double().cpu()
        if bool(torch.isfinite(cross).all()):
            lam = modo_step(lam, cross, self.gamma, self.rho)
        weights = lam.to(jacobian)
        direction = weights @ jacobian
        if not bool(torch.isfinite(direction).all()):
            weights = torch.full_like(weights, torch.nan)
        return direction, weights


def modo_step(lam: Tensor, cross: Tensor, gamma: float, rho: float) -> Tensor:
    """Π_Δ(λ − γ·(C·λ + ρ·λ)), C = G₁·G₂ᵀ (float64)."""
    return project_to_simplex(lam - gamma * (cross @ lam + rho * lam))
