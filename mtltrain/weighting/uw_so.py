"""UW-SO, soft optimal uncertainty weighting (Kirchdorfer, Elich, Kutsche, Stiefelhagen & Pietsch,
"Analytical Uncertainty-Based Loss Weighting in Multi-Task Learning", GCPR 2024).

No σ is learned: the optimum of uncertainty weighting at fixed losses weighs each task by
1/L_k, and UW-SO normalises that by a softmax with temperature T:
w = softmax((1/(L_k + ε))/T), ε = 1e-8, detached; total = Σ_k w_k·L_k. T = 1 (the authors'
code's default). Losses must be ≥ 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.step import Step
from mtltrain.weighting.base import Range, Weighting

EPS = 1e-8


class SoftOptimalUncertainty(Weighting):
    """Σ_k softmax(1/(T·L))_k·L_k (Kirchdorfer et al. 2024).

    The weights are uncertainty weighting's optimum at fixed losses, detached; T =
    `temperature`.

    Paper: Kirchdorfer et al., GCPR 2024.
    Scale: Σ w = 1.
    Logs: nothing else.
    """

    elementwise = True

    RANGES: ClassVar[Mapping[str, Range]] = {"temperature": (lambda v: v > 0, "it must be > 0")}

    def __init__(self, terms: Sequence[LossTerm], temperature: float = 1.0) -> None:
        super().__init__(terms)
        self.check_settings({"temperature": temperature})
        self.require_nonnegative_losses("weighs each loss by 1/L")
        self.temperature = temperature
        self.register_buffer("weight", torch.full((len(terms),), 1.0 / len(terms)))

    def observe(self, step: Step) -> None:
        inverse = 1 / (step.losses.detach() + EPS)
        self.weight.copy_(torch.softmax(inverse / self.temperature, dim=0))

    def weights(self) -> Tensor:
        return self.weight.clone()
