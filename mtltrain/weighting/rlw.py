"""Random Loss Weighting (Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting",
TMLR 2022).

total = Σ_k w_k·L_k with w = softmax(ε), ε ~ N(0, I) drawn anew every step (the weights sum to
1, as the authors' code). ε comes from the strategy's own generator, seeded by `seed` and saved
with the run, so a resumed run draws what it would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.constraints import Seed
from mtltrain.losses import LossTerm
from mtltrain.step import Step
from mtltrain.weighting.base import Seeded, Weighting


class RandomLossWeighting(Seeded, Weighting):
    """Σ_k softmax(ε)_k·L_k, ε ~ N(0, I) every step (Lin et al. 2022).

    ε is drawn from a generator of its own, seeded by `weighting.seed` (the run's seed by
    default) and saved in the checkpoint.

    Paper: Lin et al., TMLR 2022.
    Scale: Σ w = 1.
    Logs: nothing else.
    """

    elementwise = True

    def __init__(self, terms: Sequence[LossTerm], seed: Seed = 0) -> None:
        super().__init__(terms)
        self.seed_draws(seed)
        self.register_buffer("weight", torch.full((len(terms),), 1.0 / len(terms)))

    def observe(self, step: Step) -> None:
        draw = torch.randn(len(self.terms), generator=self.generator)
        self.weight.copy_(torch.softmax(draw, dim=0))

    def weights(self) -> Tensor:
        return self.weight.clone()
