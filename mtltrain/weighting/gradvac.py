"""GradVac (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine", ICLR 2021).

PCGrad towards a target similarity: for each task i and each other task j in a random order,
where the cosine φ_ij of the current g_i and g_j is below the target φ̂_ij, g_i moves along g_j
until their cosine is φ̂_ij: g_i ← g_i + ‖g_i‖·(φ̂_ij·√(1 − φ_ij²) − φ_ij·√(1 − φ̂_ij²)) /
(‖g_j‖·√(1 − φ̂_ij²))·g_j; every φ̂_ij follows φ_ij as an exponential moving average,
φ̂ ← (1 − β)·φ̂ + β·φ (β = 0.5, φ̂ starts at 0, as LibMTL). A target of 1 has no finite move
(g_i would have to become parallel to g_j): g_i is left as it is. d = Σ_i g_i (a sum). On the whole
shared gradient ("model level"; the paper also works per layer). The surgery runs on
coefficients with the Gramian; "weight" logs w in d = Σ_k w_k·g_k. The order is drawn from the
strategy's own seeded generator; φ̂ and the generator are saved with the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.constraints import Seed
from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Range, Seeded


class GradVac(Seeded, GradientWeighting):
    """d = Σ_i g_i, each g_i moved along g_j up to the moving target cosine φ̂_ij.

    φ̂_ij is a moving average (`beta`) of the cosines; the order is drawn from a generator of
    its own (`seed`).

    Paper: Wang et al., ICLR 2021.
    Scale: sum.
    Logs: `direction_norm`.
    """

    RANGES: ClassVar[Mapping[str, Range]] = {"beta": (lambda v: 0 < v <= 1, "it must be in (0, 1]")}

    def __init__(
        self, terms: Sequence[LossTerm], beta: float = 0.5, seed: Seed = 0, every: int = 1
    ) -> None:
        super().__init__(terms, every)
        self.seed_draws(seed)
        self.check_settings({"beta": beta})
        self.beta = beta
        self.register_buffer("target", torch.zeros(len(terms), len(terms), dtype=torch.float64))

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        k = gramian.shape[0]
        coefficients = torch.eye(k, dtype=torch.float64)
        target = self.target.cpu()
        for i in range(k):
            for j in self.order(k):
                norm_j = math.sqrt(max(0.0, float(gramian[j, j])))
                norm_i = math.sqrt(max(0.0, float(coefficients[i] @ gramian @ coefficients[i])))
                if j == i or norm_j == 0 or norm_i == 0:
                    continue
                cosine = float(coefficients[i] @ gramian[:, j]) / (norm_i * norm_j)
                cosine = min(1.0, max(-1.0, cosine))  # rounding can leave [−1, 1]
                goal = float(target[i, j])
                if cosine < goal < 1:
                    shift = goal * math.sqrt(1 - cosine**2) - cosine * math.sqrt(1 - goal**2)
                    coefficients[i, j] += norm_i * shift / (norm_j * math.sqrt(1 - goal**2))
                target[i, j] = (1 - self.beta) * goal + self.beta * cosine
        self.target.copy_(target)
        return coefficients.sum(dim=0)
