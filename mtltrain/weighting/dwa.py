"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019).

total = Σ_k w_k·L_k with, in epoch t, w_k(t) = K·exp(r_k(t−1)/T)/Σ_j exp(r_j(t−1)/T) and
r_k(t−1) = L̄_k(t−1)/L̄_k(t−2), the ratio of the task's mean training losses in the last two
epochs: a task whose loss falls slowly gains weight. w = 1 in the first two epochs. The weights
sum to K and carry no gradient; T (`temperature`, 2 in the paper) softens them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import Range, Weighting


class DynamicWeightAverage(Weighting):
    """Σ_k K·softmax(r/T)_k·L_k, r the ratio of the last two epochs' mean losses.

    w_k = K·softmax(r/T)_k, r_k the ratio of the task's mean training loss in the last two
    epochs; w = 1 in the first two epochs. It takes ratios of losses, so it refuses a term whose
    loss can be negative (`gaussian_nll`, `laplace_nll`, `beta_nll`) with one line.

    Paper: Liu, Johns & Davison, CVPR 2019.
    Scale: Σ w = K.
    Logs: nothing else.
    """

    elementwise = True

    RANGES: ClassVar[Mapping[str, Range]] = {"temperature": (lambda v: v > 0, "it must be > 0")}

    def __init__(self, terms: Sequence[LossTerm], temperature: float = 2.0) -> None:
        super().__init__(terms)
        self.check_settings({"temperature": temperature})
        self.require_nonnegative_losses("takes ratios of mean losses")
        self.temperature = temperature
        self.register_buffer("weight", torch.ones(len(terms)))
        # the mean losses of the epochs before the last and of the last (NaN: not yet trained)
        self.register_buffer("history", torch.full((2, len(terms)), torch.nan))

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        self.history.copy_(torch.stack([self.history[1], mean_losses.to(self.history)]))
        if not bool(torch.isnan(self.history).any()):
            ratio = self.history[1] / self.history[0]
            self.weight.copy_(len(self.terms) * torch.softmax(ratio / self.temperature, dim=0))

    def weights(self) -> Tensor:
        return self.weight.clone()
