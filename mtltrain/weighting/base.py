"""The one interface every weighting strategy implements.

Each step the training loop calls `observe(outputs, targets)` with the step's detached
outputs (strategies that adapt to measured performance update their state there), then
`backward(losses, shared_params)`: the strategy back-propagates and returns each loss term's
contribution to the total (the contributions sum to the total). Loss-based strategies only
define `contributions`; gradient-based ones override `backward`. `report()` returns what the
strategy wants logged, {quantity: vector in term order}, with at least the per-term "weight".
The loop never asks which strategy it holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, MeanLogVar

Values = float | Sequence[float] | Mapping[str, float] | None


def named_values(names: Sequence[str], values: Values, setting: str, default: float) -> list[float]:
    """One value per name from None (`default`), a number, a list in order, or {name: value}."""
    if values is None:
        return [float(default)] * len(names)
    if isinstance(values, (int, float)):
        return [float(values)] * len(names)
    if isinstance(values, Mapping):
        if set(values) != set(names):
            raise ConfigError(
                f"{setting} names {sorted(values)} do not match {list(names)}: "
                "give one value per name"
            )
        return [float(values[n]) for n in names]
    if len(values) != len(names):
        raise ConfigError(
            f"{setting}={list(values)} has {len(values)} values but there are {len(names)} "
            f"({list(names)}): give one value each"
        )
    return [float(v) for v in values]


class Weighting(nn.Module):
    """Base class: holds the loss terms; learned parameters are module parameters.

    `learns` marks the terms whose scale a strategy may learn: not those whose loss already
    learns its own per-sample noise (Gaussian/Laplace/β-NLL), for which a second, task-level σ
    is not identifiable and a negative NLL would drive it without bound. Such terms keep
    weight 1 under the learned-scale strategies.
    """

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        super().__init__()
        self.terms = tuple(terms)
        self.names = tuple(t.name for t in terms)
        self.register_buffer("learns", torch.tensor([not t.heteroscedastic for t in terms]))
        self.all_learn = not any(t.heteroscedastic for t in terms)

    def where_learned(self, learned: Tensor, fixed: Tensor | float) -> Tensor:
        """`learned` for the terms whose scale is learned, `fixed` for the others."""
        return learned if self.all_learn else torch.where(self.learns, learned, fixed)

    def stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The term losses as one vector, in term order."""
        return torch.stack([losses[n] for n in self.names])

    def observe(
        self, outputs: Mapping[str, Tensor | MeanLogVar], targets: Mapping[str, Tensor]
    ) -> None:
        """See the step's detached outputs before `backward`; by default, nothing to do."""

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
