"""Geometric mean of the losses: total = (Π_k (L_k + ε))^(1/K), ε = 1e-8 (the GLS objective of
Chennupati et al. 2019). Its weights, the multipliers of ∇L_k, are total/(K·(L_k + ε)) at the
step's losses; each term's contribution is total/K. Losses must be ≥ 0."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.step import Step
from mtltrain.weighting.base import Weighting

EPS = 1e-8


class GeometricMean(Weighting):
    """(Π_k L_k)^(1/K).

    Paper: Chennupati et al. 2019.
    Scale: weight total/(K·L_k).
    Logs: nothing else.
    """

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        super().__init__(terms)
        self.require_nonnegative_losses("takes the log of each loss")
        self.register_buffer("weight", torch.ones(len(terms)))

    def observe(self, step: Step) -> None:
        losses = step.losses.detach() + EPS
        self.weight.copy_(losses.log().mean().exp() / (len(self.terms) * losses))

    def contributions(self, losses: Tensor) -> Tensor:
        mean = torch.log(losses + EPS).mean().exp()
        return mean.expand(len(self.terms)) / len(self.terms)

    def weights(self) -> Tensor:
        return self.weight.clone()
