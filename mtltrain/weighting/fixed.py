"""Fixed weights: total = Σ_k w_k·L_k with w_k from the config (≥ 0 unless `allow_negative`:
a negative weight maximises that loss, which is rarely what is meant)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm
from mtltrain.weighting.base import Values, Weighting, named_values, numbers_of


class FixedWeighting(Weighting):
    """Σ_k w_k·L_k; the usual hand-tuned baseline (default: all w_k = 1).

    Scale: sum (for the mean, 1/K each: `weighting=fixed weighting.weights=0.333` with K = 3).
    Logs: nothing else.
    """

    elementwise = True

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        weights = settings.get("weights")
        if weights is not None and all(w == 0 for w in numbers_of(weights)):
            raise ConfigError(
                f"weighting.weights={weights} is not allowed: with every weight 0 the total loss "
                "is 0 and nothing trains; give at least one weight that is not 0"
            )
        if any(w < 0 for w in numbers_of(weights)) and not settings.get("allow_negative"):
            raise ConfigError(
                f"weighting.weights={weights} is not allowed: a negative weight maximises its "
                "loss; set weighting.allow_negative=true if that is meant"
            )

    def __init__(
        self, terms: Sequence[LossTerm], weights: Values = None, allow_negative: bool = False
    ) -> None:
        super().__init__(terms)
        self.check_settings({"weights": weights, "allow_negative": allow_negative})
        values = named_values(self.names, weights, "weighting.weights", default=1.0)
        self.register_buffer("weight", torch.tensor(values))

    def weights(self) -> Tensor:
        return self.weight
