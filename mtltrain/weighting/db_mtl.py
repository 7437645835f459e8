"""DB-MTL (Lin, Ye, Xu, Shi & Zhang, "Dual-Balancing for Multi-Task Learning", 2023).

Loss scale: each task's loss enters as log(L_k + ε) (ε = 1e-8). Gradient scale: ĝ_k, an
exponential moving average of the gradient of log(L_k + ε) (ĝ ← β·ĝ + (1 − β)·g, from 0,
β = 0.9 as LibMTL), is scaled to the largest of their norms: d = Σ_k (max_j ‖ĝ_j‖/‖ĝ_k‖)·ĝ_k
(a sum of K gradients of equal norm). "weight" logs the scale of each ĝ_k. The averages are
saved with the run. On the shared parameters only: an average of representation gradients
over different batches means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Range

EPS = 1e-8


class DBMTL(GradientWeighting):
    """d = Σ_k (max‖ĝ‖/‖ĝ_k‖)·ĝ_k, ĝ_k a moving average of ∇log L_k (Lin et al. 2023).

    It takes the log of each loss, then scales each task's moving-average gradient ĝ_k to the
    largest norm. Some surveys list it among the loss-based strategies because it transforms the
    losses, but its second half scales each task's gradient, so it needs them all: it is
    gradient-based here.

    Paper: Lin et al. 2023.
    Scale: sum of K gradients of equal norm.
    Logs: `direction_norm`.
    """

    weighted_rows = False

    RANGES: ClassVar[Mapping[str, Range]] = {"beta": (lambda v: 0 <= v < 1, "it must be in [0, 1)")}

    def __init__(self, terms: Sequence[LossTerm], beta: float = 0.9) -> None:
        super().__init__(terms)
        self.check_settings({"beta": beta})
        self.require_nonnegative_losses("takes the log of each loss")
        self.beta = beta
        self.average: Tensor | None = None  # K × D, made at the first step

    def contributions(self, losses: Tensor) -> Tensor:
        return torch.log(losses + EPS)

    def combine(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        if not bool(torch.isfinite(jacobian.sum())):  # a skipped step leaves the average alone
            nan = torch.full((len(self.terms),), torch.nan, device=jacobian.device)
            return nan @ jacobian, nan
        if self.average is None:
            self.average = torch.zeros_like(jacobian)
        self.average.lerp_(jacobian, 1 - self.beta)
        norms = self.average.norm(dim=1)
        scale = torch.where(norms > 0, norms.max() / norms, 0.0)  # a zero ĝ_k stays zero
        return scale @ self.average, scale

    def get_extra_state(self) -> dict:
        return {"average": self.average}

    def set_extra_state(self, state: dict) -> None:
        """A checkpoint is read on the CPU: the average goes where the strategy is (its
        buffers)."""
        average = state["average"]
        self.average = None if average is None else average.to(self.weight.device)
