"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, ICML 2022).

d = Σ_k α_k·g_k with α > 0 the Nash bargaining solution GᵀGα = 1/α (elementwise), solved to
rounding by Newton's method (`bargaining`, p = 1) instead of the paper's sequence of convex
problems. Its scale is the paper's: α is not normalised (the authors' code divides the Gramian
by its norm first and clips the update to norm 1; neither is done here), and d does not change
when every gradient is scaled alike. A zero gradient (below the Gramian's resolution) has
nothing to bargain with and gets α = 0; if all are zero, d = 0. Where no direction improves
every task (the bargaining problem has no solution: 0 in the hull of the gradients, as with two
opposite ones) or the solve does not converge, the step keeps the weights of the last solved
step (before any: α_k = 1/‖g_k‖, the solution for orthogonal gradients) and the failure is
counted ("solver_unconverged"). "weight" logs α.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, resolved_rows
from mtltrain.weighting.solvers import EPS, fair_weights


class FairWeighting(GradientWeighting):
    """The α-fair weights M·w = w^(−1/power) (see `bargaining`); failures keep the last solved
    weights, or before any those of orthogonal gradients, and are counted."""

    solves = True

    def __init__(
        self, terms: Sequence[LossTerm], power: float, representation: bool, every: int = 1
    ) -> None:
        super().__init__(terms, every)
        self.power = power
        self.level = "representation" if representation else "parameters"
        self.solved_once = False

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        solution = fair_weights(gramian, self.power)
        self.record(solution.converged)
        if solution.converged:
            self.solved_once = True
            return solution.weights
        if self.solved_once:
            return self.weight.double().cpu()
        squared_norms = gramian.diagonal()
        orthogonal = squared_norms.clamp_min(1e-300) ** (-self.power / (self.power + 1))
        return torch.where(resolved_rows(gramian, EPS), orthogonal, 0.0)

    def get_extra_state(self) -> dict:
        return {"solved_once": self.solved_once}

    def set_extra_state(self, state: dict) -> None:
        self.solved_once = state["solved_once"]


class NashMTL(FairWeighting):
    """d = Σ α_k g_k, GᵀGα = 1/α: the Nash bargaining solution (Navon et al. 2022).

    Solved by Newton's method to rounding.

    Paper: Navon et al., ICML 2022.
    Scale: α unnormalised (d invariant to a common scale).
    Logs: `direction_norm`, `solver_unconverged`.
    """

    def __init__(
        self, terms: Sequence[LossTerm], representation: bool = False, every: int = 1
    ) -> None:
        super().__init__(terms, power=1.0, representation=representation, every=every)
