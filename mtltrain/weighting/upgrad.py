"""UPGrad (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", torchjd).

d = (1/K)·Σ_k π(g_k): the mean of each task gradient projected onto the dual cone of all of
them, {x : g_j·x ≥ 0 ∀ j}, so no task's loss rises to first order and no gradient is dropped.
Each projection is exact (`dual_cone`, on the Gramian, without the ridge torchjd adds by
default). Its output is a mean (the unit weighting of the paper); "weight" logs the w with
d = Σ_k w_k·g_k. `representation=true` works on the gradients of the shared representation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting
from mtltrain.weighting.solvers import project_to_dual_cone


class UPGrad(GradientWeighting):
    """d = mean_k π(g_k), π the projection onto the dual cone of the task gradients.

    π is the exact projection onto the dual cone {x : g_j·x ≥ 0 ∀j}.

    Paper: Quinton & Rey 2024.
    Scale: mean.
    Logs: `direction_norm`, `solver_unconverged`.
    """

    solves = True

    def __init__(
        self, terms: Sequence[LossTerm], representation: bool = False, every: int = 1
    ) -> None:
        super().__init__(terms, every)
        self.level = "representation" if representation else "parameters"

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        k = gramian.shape[0]
        total = torch.zeros(k, dtype=torch.float64)
        for i in range(k):
            projection = project_to_dual_cone(gramian, torch.eye(k, dtype=torch.float64)[i] / k)
            self.record(projection.converged)
            total += projection.weights
        return total
