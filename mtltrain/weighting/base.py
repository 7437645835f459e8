"""The one interface every weighting strategy implements.

The training loop hands a strategy the named loss terms of a step and the shared parameters;
the strategy does the backward pass and returns each term's contribution to the total (the
contributions sum to the total). Loss-based strategies only define `contributions`;
gradient-based ones override `backward`. `report()` returns what the strategy wants logged,
as {quantity: {term: value}} with at least the per-term "weight".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtltrain.losses import LossTerm


class Weighting(nn.Module):
    """Base class: holds the loss terms; learned parameters are module parameters."""

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        super().__init__()
        self.terms = tuple(terms)
        self.names = tuple(t.name for t in terms)

    def stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The term losses as one vector, in term order."""
        return torch.stack([losses[n] for n in self.names])

    def contributions(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Each term's share of the total loss, as a vector in term order."""
        raise NotImplementedError

    def backward(self, losses: Mapping[str, Tensor], shared_params: Sequence[Tensor]) -> Tensor:
        """Back-propagate the total loss; return the detached per-term contributions."""
        parts = self.contributions(losses)
        parts.sum().backward()
        return parts.detach()

    def weights(self) -> Tensor:
        """The multiplier each term's loss gets now, as a detached vector in term order."""
        raise NotImplementedError

    def report(self) -> dict[str, Tensor]:
        """Quantities to log, each a detached vector in term order; "weight" always."""
        return {"weight": self.weights()}
