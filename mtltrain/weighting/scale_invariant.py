"""Scale-invariant loss: total = Σ_k log(L_k + ε), ε = 1e-8 (the log makes each task's
gradient ∇L_k/L_k: scaling a loss by a constant does not change it). Its weights, the
multipliers of ∇L_k, are 1/(L_k + ε) at the step's losses. Losses must be ≥ 0."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.step import Step
from mtltrain.weighting.base import Weighting

EPS = 1e-8


class ScaleInvariant(Weighting):
    """Σ_k log(L_k + ε).

    Each task's gradient is divided by its loss.

    Scale: weight 1/L_k.
    Logs: nothing else.
    """

    elementwise = True

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        super().__init__(terms)
        self.require_nonnegative_losses("takes the log of each loss")
        self.register_buffer("weight", torch.ones(len(terms)))

    def observe(self, step: Step) -> None:
        self.weight.copy_(1 / (step.losses.detach() + EPS))

    def contributions(self, losses: Tensor) -> Tensor:
        return torch.log(losses + EPS)

    def weights(self) -> Tensor:
        return self.weight.clone()
