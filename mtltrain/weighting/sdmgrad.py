"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (Xiao, Ban & Ji,
"Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms",
NeurIPS 2023).

The direction d = G(w + λ/K·1)/(1 + λ) = (Σ_k w_k·g_k + λ·g₀)/(1 + λ), g₀ the mean gradient, is
the one of the simplex weights w that minimise ½‖Gw + λg₀‖²: kept near the average direction g₀
by λ. Each step takes three independent batches: w is moved by `iterations` steps of projected
SGD with momentum (step size `lr`, momentum `momentum`, restarted each step, as the authors'
code) along M·(w + λ/K·1) with M = G₁·G₂ᵀ of two of them (the double sampling: an unbiased
estimate of the Gramian, which one batch's G·Gᵀ is not), divided by the square of the mean of
√M_kk over k; d is taken on the third, the step's own batch, whose task heads get their own,
unweighted gradients. The loop draws the two from the training set (`extra_batches`); where none
are handed over (a loop of one's own), the step's own Jacobian stands for both, the
deterministic form. w starts at 1/K and carries over between steps (buffer `simplex_weight`);
"weight" logs the weights of d, (w + λ/K)/(1 + λ). Extra batches whose cross-Gramian is not
finite leave w as it was. A diagonal of M that two batches make negative counts as 0 in the
scale (the authors' code adds 1e-4 under the root instead, LibMTL clamps as here), and where
all of it is ≤ 0 w stays as it was (LibMTL divides by 1e-8 there). The authors' code also
multiplies d by K and clips its norm to 1 (their `max_norm`); here d is the convex
combination, and `trainer.grad_clip` clips where set. Defaults:
λ = 0.3, 20 iterations, momentum 0.5 (the authors' code and LibMTL), step size 10 (the authors';
LibMTL: 5).
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


class SDMGrad(GradientWeighting):
    """d = (Σ_k w_k·g_k + λ·g₀)/(1 + λ), w on the simplex stepped down ½‖Gw + λg₀‖² by SGD.

    w takes `iterations` projected steps of SGD with momentum (`lr`, `momentum`) along
    M(w + λ/K·1), M = G₁G₂ᵀ of two independent training batches drawn each step, normalised by
    mean_k √M_kk squared; d is taken on the step's own batch. `lamda` λ ≥ 0 pulls d towards the
    mean gradient g₀ (λ = 0: a stochastic MGDA). Costs three forward and 3K backward passes a
    step.

    Paper: Xiao et al., NeurIPS 2023.
    Scale: Σ weights = 1 (a convex combination, as the mean).
    Logs: `simplex_weight`, `direction_norm`.
    """

    extra_batches = ("train", "train")
    RANGES: ClassVar[Mapping[str, Range]] = {
        "lamda": (lambda v: v >= 0, "it must be >= 0"),
        "iterations": (lambda v: isinstance(v, int) and v >= 1, "it must be an integer >= 1"),
        "lr": (lambda v: v > 0, "it must be > 0"),
        "momentum": (lambda v: 0 <= v < 1, "it must be in [0, 1)"),
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        lamda: float = 0.3,
        iterations: int = 20,
        lr: float = 10.0,
        momentum: float = 0.5,
    ) -> None:
        super().__init__(terms)
        settings = {"lamda": lamda, "iterations": iterations, "lr": lr, "momentum": momentum}
        self.check_settings(settings)
        self.lamda, self.iterations, self.lr, self.momentum = lamda, iterations, lr, momentum
        k = len(terms)
        self.register_buffer("simplex_weight", torch.full((k,), 1.0 / k))
        self.cross: Tensor | None = None  # G₁·G₂ᵀ of this step's extra batches

    def observe_extra(self, jacobians: Sequence[Tensor]) -> None:
        first, second = jacobians
        self.cross = float64_cross_gramian(first, second).cpu()

    def direction_weights(self, w: Tensor) -> Tensor:
        """(w + λ/K)/(1 + λ): the weight of each row of the step's Jacobian in d."""
        return (w + self.lamda / len(w)) / (1 + self.lamda)

    def combine(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        cross = self.cross if self.cross is not None else float64_gramian(jacobian).cpu()
        self.cross = None
        w = self.simplex_weight.double().cpu()
        if bool(torch.isfinite(cross).all()):
            w = sdmgrad_weights(w, cross, self.lamda, self.iterations, self.lr, self.momentum)
        weights = self.direction_weights(w).to(jacobian)
        direction = weights @ jacobian
        if not bool(torch.isfinite(direction).all()):
            return direction, torch.full_like(weights, torch.nan)
        self.simplex_weight.copy_(w)
        return direction, weights

    def report(self) -> dict[str, Tensor]:
        return {**super().report(), "simplex_weight": self.simplex_weight.clone()}


def sdmgrad_weights(
    w: Tensor, cross: Tensor, lamda: float, iterations: int, lr: float, momentum: float
) -> Tensor:
    """`iterations` steps of projected SGD with momentum from `w` on ½wᵀMw + λ·wᵀM·1/K,
    M = `cross` / (mean_k √max(cross_kk, 0))² (float64); `w` itself where that mean is 0."""
    scale = cross.diagonal().clamp_min(0).sqrt().mean()
    if scale == 0:  # no gradient of one batch has a positive product with the other's
        return w
    m = cross / scale**2
    pull = lamda * m.mean(dim=1)  # λ·M·1/K
    velocity = torch.zeros_like(w)
    for _ in range(iterations):
        velocity = momentum * velocity + m @ w + pull
        w = project_to_simplex(w - lr * velocity)
    return w
