"""GradDrop (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign",
NeurIPS 2020).

As in the paper, a layer on the shared representation A (batch × features) before the heads:
per feature, G_k = Σ_batch sgn(A)·∇_A L_k, the sign purity P = ½·(1 + Σ_k G_k/Σ_k |G_k|) is the
probability of keeping the positive side: with U ~ U(0, 1) drawn per feature, task k keeps its
gradient at that feature, for every example of the batch, where (P > U and G_k > 0) or
(P < U and G_k < 0), else 0 (leak 0, f the identity); d = Σ_k of what is kept (a sum).
`representation=false` drops on the shared parameters instead (an extension): G_k = g_k per
coordinate. Not a weighted sum of the task gradients: "weight" logs the share of each task's
gradient (in ℓ1) that was kept. U is drawn from the strategy's own seeded generator, saved with
the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtltrain.constraints import Seed
from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Seeded


class GradDrop(Seeded, GradientWeighting):
    """d = Σ_k ∇_A L_k·mask_k, the masks keeping one sign of G_k per feature with probability P.

    Per feature of the representation A, one sign of G_k = Σ_batch sgn(A)·∇_A L_k is kept for
    the whole batch with probability its purity P = ½(1 + ΣG/Σ|G|); d is the sum of what is
    kept. Its `weight` is the share of each gradient it kept.

    Paper: Chen et al., NeurIPS 2020.
    Scale: sum.
    Logs: `direction_norm`.
    """

    weighted_rows = False

    def __init__(
        self, terms: Sequence[LossTerm], representation: bool = True, seed: Seed = 0
    ) -> None:
        super().__init__(terms)
        self.seed_draws(seed)
        self.level = "representation" if representation else "parameters"

    def combine(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        batched = self.level == "representation" and len(at) > 0
        signed = _per_feature(jacobian, at) if batched else jacobian
        purity = 0.5 * (1 + signed.sum(dim=0) / _nonzero(signed.abs().sum(dim=0)))
        draw = torch.rand(signed.shape[1], generator=self.generator).to(signed)
        keep = torch.where(purity > draw, signed > 0, signed < 0)
        kept = jacobian * (_over_the_batch(keep, at) if batched else keep)
        share = kept.abs().sum(dim=1) / _nonzero(jacobian.abs().sum(dim=1))
        return kept.sum(dim=0), share


def _per_feature(jacobian: Tensor, at: Sequence[Tensor]) -> Tensor:
    """K × F: Σ over the batch (first dimension) of sgn(A)·∇_A L_k, for each A in `at`."""
    k = jacobian.shape[0]
    pieces = jacobian.split([a.numel() for a in at], dim=1)
    return torch.cat(
        [
            (rows.view(k, len(a), -1) * a.detach().sign().reshape(1, len(a), -1)).sum(dim=1)
            for rows, a in zip(pieces, at, strict=True)
        ],
        dim=1,
    )


def _over_the_batch(keep: Tensor, at: Sequence[Tensor]) -> Tensor:
    """The K × F masks repeated for every example of the batch: K × D like the Jacobian."""
    k = keep.shape[0]
    pieces = keep.split([a[0].numel() for a in at], dim=1)
    return torch.cat(
        [
            m.unsqueeze(1).expand(k, len(a), -1).reshape(k, -1)
            for m, a in zip(pieces, at, strict=True)
        ],
        dim=1,
    )


def _nonzero(x: Tensor) -> Tensor:
    """x with zeros raised to the smallest normal number (so 0/0 gives 0)."""
    return x.clamp_min(torch.finfo(x.dtype).tiny)
