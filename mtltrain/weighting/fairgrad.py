"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024).

d = Σ_k w_k·g_k with w > 0 solving GᵀG·w = w^(−1/α): the α-fair allocation of the
improvement among tasks (α = 1: Nash-MTL's bargaining; α → ∞: max-min fairness), solved to
rounding by Newton's method (`bargaining`) where the authors use scipy's least squares. No
gradient clipping (the authors' code clips the update to norm 1). Failures keep the last solved
weights and are counted, as for `nash_mtl`. Default α = 2, as the authors' CelebA runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import Range
from mtltrain.weighting.nash_mtl import FairWeighting


class FairGrad(FairWeighting):
    """d = Σ w_k g_k, GᵀG·w = w^(−1/α) (Ban & Ji 2024).

    The α-fair allocation (α = 1: Nash-MTL), solved by Newton's method to rounding.

    Paper: Ban & Ji, ICML 2024.
    Scale: w unnormalised.
    Logs: `direction_norm`, `solver_unconverged`.
    """

    RANGES: ClassVar[Mapping[str, Range]] = {"alpha": (lambda v: v > 0, "it must be > 0")}

    def __init__(
        self,
        terms: Sequence[LossTerm],
        alpha: float = 2.0,
        representation: bool = False,
        every: int = 1,
    ) -> None:
        self.check_settings({"alpha": alpha})
        super().__init__(terms, power=alpha, representation=representation, every=every)
