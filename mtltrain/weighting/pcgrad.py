"""PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020).

For each task i, in a random order of the other tasks j, g_i is projected onto the normal plane
of every g_j it conflicts with: g_i ← g_i − (g_i·g_j/‖g_j‖²)·g_j where g_i·g_j < 0 (with the
original g_j, as the paper; a zero g_j conflicts with nothing); d = Σ_i g_i (a sum, as the
paper's Algorithm 1; the authors' code can also take the mean). Every step is a linear
combination of the original gradients, so the surgery runs on coefficients with the Gramian
alone and d = Σ_k w_k·g_k; "weight" logs w. The order is drawn from the strategy's own
generator, seeded by `seed`, and saved with the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.constraints import Seed
from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Seeded


class PCGrad(Seeded, GradientWeighting):
    """d = Σ_i g_i, each g_i projected off every g_j it conflicts with, in a random order.

    The order is drawn from a generator of its own (`seed`).

    Paper: Yu et al., NeurIPS 2020.
    Scale: sum.
    Logs: `direction_norm`.
    """

    def __init__(self, terms: Sequence[LossTerm], seed: Seed = 0, every: int = 1) -> None:
        super().__init__(terms, every)
        self.seed_draws(seed)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        k = gramian.shape[0]
        coefficients = torch.eye(k, dtype=torch.float64)  # row i: g_i's surgery, in g
        for i in range(k):
            for j in self.order(k):
                if j == i or gramian[j, j] <= 0:
                    continue
                dot = float(coefficients[i] @ gramian[:, j])  # (current g_i)·g_j
                if dot < 0:
                    coefficients[i, j] -= dot / float(gramian[j, j])
        return coefficients.sum(dim=0)
