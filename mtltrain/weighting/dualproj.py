"""DualProj (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization").

d = π((1/K)·Σ_k g_k): the mean gradient projected onto the dual cone of the task gradients,
{x : g_j·x ≥ 0 ∀ j}, exactly (`dual_cone`, no ridge). Its scale is the mean's; "weight" logs
the w with d = Σ_k w_k·g_k. `representation=true` works on the shared representation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting
from mtltrain.weighting.solvers import project_to_dual_cone


class DualProj(GradientWeighting):
    """d = π(mean_k g_k), π the projection onto the dual cone of the task gradients.

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
        projection = project_to_dual_cone(gramian, torch.full((k,), 1.0 / k, dtype=torch.float64))
        self.record(projection.converged)
        return projection.weights
