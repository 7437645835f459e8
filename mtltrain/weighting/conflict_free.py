"""ConFIG (Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
Neural Networks", 2024): the conflict-free update.

With u_k = g_k/‖g_k‖, the direction û is the unit vector along the least-norm x with
u_k·x = 1 for every k (x = U⁺·1: equal cosine with every task gradient), and
d = (Σ_k g_k·û)·û: its length is the sum of the gradients' projections on it. From the Gramian:
x = Σ_k β_k g_k, β = diag(1/‖g‖)·(Û·Ûᵀ)⁺·1. A zero gradient has no direction and is left
out. "weight" logs the w with d = Σ_k w_k·g_k (a
sum-like scale: Σ of projections).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, resolved_rows
from mtltrain.weighting.solvers import EPS


class ConFIG(GradientWeighting):
    """d = (Σ_k g_k·û)·û, û ∝ U⁺·1 the direction of equal cosine with every task gradient.

    Paper: Liu et al. 2024.
    Scale: sum of the projections.
    Logs: `direction_norm`.
    """

    def __init__(
        self, terms: Sequence[LossTerm], representation: bool = False, every: int = 1
    ) -> None:
        super().__init__(terms, every)
        self.level = "representation" if representation else "parameters"

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        norms = gramian.diagonal().clamp_min(0).sqrt()
        kept = resolved_rows(gramian, EPS)
        beta = torch.zeros_like(norms)
        if not bool(kept.any()):
            return beta
        n = norms[kept]
        units = gramian[kept][:, kept] / torch.outer(n, n)
        beta[kept] = torch.linalg.pinv(units, hermitian=True) @ torch.ones_like(n) / n
        length2 = float(beta @ gramian @ beta)  # ‖x‖²
        if length2 <= 0:
            return torch.zeros_like(norms)
        return (float(gramian.sum(dim=0) @ beta) / length2) * beta
