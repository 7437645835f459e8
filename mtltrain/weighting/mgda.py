"""MGDA: the min-norm point of the task gradients' convex hull (Désidéri 2012; Sener & Koltun,
"Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

d = Σ_k α_k·g_k with α = argmin_{α ∈ Δ} ‖Σ_k α_k·ĝ_k‖², solved exactly (`min_norm`), where
ĝ_k = g_k/n_k with the normalisation n_k of the paper's code: `none` (n = 1, the paper's
formula), `l2` (n = ‖g_k‖), `loss` (n = L_k), `loss+` (n = L_k·‖g_k‖). As in that code the
normalisation only chooses α: the direction combines the raw gradients. Its output is a convex
combination (Σα = 1, a mean-like scale, not a sum); "weight" logs α. At a Pareto-stationary
point the min-norm point is 0 and the shared layers do not move: that is MGDA's answer, not a
failure, and "direction_norm" shows it. `representation=true` is MGDA-UB: the gradients are
those of the shared representation (the encoder's output for the batch), an upper bound that
costs one backward pass through the heads per task instead of through the whole network. Task
heads get their own unweighted gradients, as in the paper's Algorithm 2 (its code scales them
by α too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Range
from mtltrain.weighting.solvers import min_norm_point

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GradientWeighting):
    """d = Σ α_k·g_k, α the exact min-norm point of the (normalised) gradients' hull.

    Per step the engine takes one backward pass per task to get each task's gradient of the
    shared parameters, or with `representation=true` (MGDA-UB) of the shared representation, the
    encoder's output for the batch: the passes then stop there, so they run through the heads
    only, and one more pass carries the combined gradient through the encoder. α solves min ‖Σ_k
    α_k·ĝ_k‖² over the simplex exactly (Wolfe's min-norm-point algorithm on the float64
    Gramian). The normalisation (ĝ = g/‖g‖, g/L, g/(L·‖g‖)) only chooses α, as in the paper's
    code; d combines the raw gradients. The task heads get their own, unweighted gradients (the
    paper's Algorithm 2). Where the gradients conflict so that 0 is in their hull (a
    Pareto-stationary point), d = 0 and the shared layers do not move: that is MGDA's answer. A
    model without shared layers (`dataset=two_slope`'s one network per task) is refused in one
    line naming the model.

    Paper: Sener & Koltun, NeurIPS 2018.
    Scale: Σ α = 1.
    Logs: `direction_norm`, `solver_unconverged`.
    """

    solves = True

    RANGES: ClassVar[Mapping[str, Range]] = {
        "normalization": (NORMALIZATIONS.__contains__, f"choose one of {list(NORMALIZATIONS)}")
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        normalization: str = "none",
        representation: bool = False,
        every: int = 1,
    ) -> None:
        super().__init__(terms, every)
        self.check_settings({"normalization": normalization})
        if normalization.startswith("loss"):
            self.require_nonnegative_losses(f"normalises by the loss ({normalization})")
        self.normalization = normalization
        self.level = "representation" if representation else "parameters"

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        scale = {
            "none": torch.ones_like(losses),
            "l2": gramian.diagonal().sqrt(),
            "loss": losses,
            "loss+": losses * gramian.diagonal().sqrt(),
        }[self.normalization]
        scale = torch.where(scale > 0, scale, 1.0)  # a zero gradient stays zero when normalised
        solution = min_norm_point(gramian / torch.outer(scale, scale), start=self.weight)
        self.record(solution.converged)
        return solution.weights
