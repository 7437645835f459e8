"""Fixed weights: total = Σ_k w_k·L_k with w_k from the config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm
from mtltrain.weighting.base import Weighting


def weight_vector(
    names: Sequence[str], weights: Mapping[str, float] | Sequence[float] | None
) -> list[float]:
    """One weight per term from a {term: w} mapping, a list in term order, or None (all 1)."""
    if weights is None:
        return [1.0] * len(names)
    if isinstance(weights, Mapping):
        if set(weights) != set(names):
            raise ConfigError(
                f"weighting.weights names {sorted(weights)} do not match the loss terms "
                f"{list(names)}: give one weight per term"
            )
        return [float(weights[n]) for n in names]
    if len(weights) != len(names):
        raise ConfigError(
            f"weighting.weights={list(weights)} has {len(weights)} values but there are "
            f"{len(names)} loss terms {list(names)}: give one weight per term"
        )
    return [float(w) for w in weights]


class FixedWeighting(Weighting):
    """Σ_k w_k·L_k; the usual hand-tuned baseline (default: all w_k = 1)."""

    def __init__(
        self,
        terms: Sequence[LossTerm],
        weights: Mapping[str, float] | Sequence[float] | None = None,
    ) -> None:
        super().__init__(terms)
        self.register_buffer("weight", torch.tensor(weight_vector(self.names, weights)))

    def contributions(self, losses: Mapping[str, Tensor]) -> Tensor:
        return self.weight * self.stack(losses)

    def weights(self) -> Tensor:
        return self.weight.detach().clone()
