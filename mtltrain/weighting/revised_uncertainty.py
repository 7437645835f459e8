"""Revised uncertainty weighting (Liebel & Körner 2018, "Auxiliary Tasks in Multi-task Learning").

term_k = L_k/(2·c_k²) + ln(1 + c_k²), c_k learned, initialised to 1. The regulariser is always
positive, so the total stays ≥ 0 for non-negative losses and c → 0 is not rewarded. At a fixed
L_k the optimum is c_k² = (L_k + sqrt(L_k² + 8·L_k))/4. Terms whose loss learns its own
per-sample σ(x) keep weight 1 (see `Weighting`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import Range, Weighting


class RevisedUncertaintyWeighting(Weighting):
    """Σ_k L_k/(2·c_k²) + ln(1 + c_k²) (Liebel & Körner 2018).

    The regulariser ln(1 + c²) is positive, so the total stays ≥ 0 and c → 0 is not rewarded;
    the optimum at a fixed loss is c² = (L + √(L² + 8L))/4.

    Paper: Liebel & Körner 2018.
    Scale: weight 1/(2c_k²).
    Logs: `c`.
    """

    elementwise = True

    RANGES: ClassVar[Mapping[str, Range]] = {
        "init_c": (lambda v: v > 0, "it must be > 0 (the weight is 1/(2c²))")
    }

    def __init__(self, terms: Sequence[LossTerm], init_c: float = 1.0) -> None:
        super().__init__(terms)
        self.check_settings({"init_c": init_c})
        self.c = nn.Parameter(torch.full((len(terms),), float(init_c)))

    def contributions(self, losses: Tensor) -> Tensor:
        c2 = self.c.square()
        return self.where_learned(losses / (2 * c2) + torch.log1p(c2), losses)

    def weights(self) -> Tensor:
        return self.where_learned(1 / (2 * self.c.square()), 1.0).detach()

    def report(self) -> dict[str, Tensor]:
        return {"weight": self.weights(), "c": self.c.detach().clone()}
