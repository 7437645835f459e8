"""GradDrop (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign",
NeurIPS 2020).

Per coordinate of the shared gradient, the sign purity P = ½·(1 + Σ_k g_k/Σ_k |g_k|) is the
probability of keeping the positive parts: with U ~ U(0, 1) drawn per coordinate, each task
keeps g_k where (P > U and g_k > 0) or (P < U and g_k < 0), else 0 (leak 0); d = Σ_k of what
is kept (a sum). As in the paper, on the gradients of the shared representation (GradDrop is a
layer before the heads; `representation=false` drops on the shared parameters instead). Not a
weighted sum of the task gradients: "weight" logs the share of each task's gradient (in ℓ1)
that was kept. U is drawn from the strategy's own seeded generator, saved with the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Seeded


class GradDrop(Seeded, GradientWeighting):
    """d = Σ_k g_k·mask_k, the masks keeping one sign per coordinate with probability P."""

    weighted_rows = False

    def __init__(
        self, terms: Sequence[LossTerm], representation: bool = True, seed: int = 0
    ) -> None:
        super().__init__(terms)
        self.seed_draws(seed)
        self.level = "representation" if representation else "parameters"

    def combine(self, jacobian: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        total = jacobian.sum(dim=0)
        mass = jacobian.abs().sum(dim=0)
        purity = 0.5 * (1 + total / mass.clamp_min(torch.finfo(jacobian.dtype).tiny))
        draw = torch.rand(jacobian.shape[1], generator=self.generator).to(jacobian)
        keep = torch.where(purity > draw, jacobian > 0, jacobian < 0)
        kept = jacobian * keep
        share = kept.abs().sum(dim=1) / jacobian.abs().sum(dim=1).clamp_min(
            torch.finfo(jacobian.dtype).tiny
        )
        return kept.sum(dim=0), share
