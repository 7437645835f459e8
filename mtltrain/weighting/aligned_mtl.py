"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for
Multi-Task Learning", CVPR 2023).

The gradient system is made well conditioned: with M = G·Gᵀ = V·Λ·Vᵀ (the eigenvalues above
rounding, rank r), B = √λ_min·V·Λ^(−1/2)·Vᵀ, and d = Σ_k α_k·g_k with α = B·1: the aligned
gradients G̃ = Bᵀ·G have orthogonal rows of equal norm √λ_min, summed (as the official code and
LibMTL, α = B.sum(0); torchjd's default takes their mean, 1/K of this). "weight" logs α.
`representation=true` is the paper's upper-bound form, on the shared representation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting
from mtltrain.weighting.solvers import EPS


class AlignedMTL(GradientWeighting):
    """d = Σ α_k g_k, α = B·1, B = √λ_min·V·Λ^(−1/2)·Vᵀ from M = VΛVᵀ (Senushkin et al. 2023).

    The task gradients made orthogonal and of equal norm (aligned), then summed.

    Paper: Senushkin et al., CVPR 2023.
    Scale: sum (torchjd: the mean, 1/K of it).
    Logs: `direction_norm`.
    """

    def __init__(
        self, terms: Sequence[LossTerm], representation: bool = False, every: int = 1
    ) -> None:
        super().__init__(terms, every)
        self.level = "representation" if representation else "parameters"

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        eigenvalues, vectors = torch.linalg.eigh(gramian)
        kept = eigenvalues > eigenvalues.max() * len(eigenvalues) * EPS
        if not bool(kept.any()):  # every gradient is zero: nothing to align
            return torch.zeros_like(eigenvalues)
        lam, v = eigenvalues[kept], vectors[:, kept]
        balance = lam.min().sqrt() * (v * lam.rsqrt()) @ v.T
        return balance.sum(dim=1)
