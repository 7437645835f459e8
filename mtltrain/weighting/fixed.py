"""Fixed weights: total = Σ_k w_k·L_k with w_k from the config."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import Values, Weighting, named_values


class FixedWeighting(Weighting):
    """Σ_k w_k·L_k; the usual hand-tuned baseline (default: all w_k = 1)."""

    def __init__(self, terms: Sequence[LossTerm], weights: Values = None) -> None:
        super().__init__(terms)
        values = named_values(self.names, weights, "weighting.weights", default=1.0)
        self.register_buffer("weight", torch.tensor(values))

    def weights(self) -> Tensor:
        return self.weight
