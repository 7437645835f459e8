"""IMTL (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021): IMTL-G on the gradients, IMTL-L on the losses, or both (`variant`).

- IMTL-G: d = Σ_k α_k·g_k with Σα = 1 and equal projections d·u_k on every unit gradient
  u_k = g_k/‖g_k‖, so no task is favoured. In closed form α ∝ M⁺·n, n_k = ‖g_k‖ (from
  (Mα)_k/n_k = const), the paper's D, U formula written with the Gramian. A zero gradient
  (below 3e-8 of the largest, where M⁺ cannot resolve it) has no direction and gets α = 0.
  Where no α gives equal positive projections (two opposite gradients: only d = 0 is
  impartial; or Σ M⁺n ≤ 0, where Σα = 1 turns the projections negative) the step takes
  α = 1/K, counted in "solver_unconverged". "weight" logs α (sum 1).
- IMTL-L: each loss scaled by a learned e^(s_k), with the regulariser −s_k: contributions
  e^(s_k)·L_k − s_k, whose optimum is e^(s_k) = 1/L_k (every scaled loss at 1). s is trained
  with the model, without weight decay; "scale" logs e^s. Alone it is loss-based.
- hybrid: IMTL-G on the gradients of the IMTL-L-scaled losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import PRECISION, GradientWeighting, Range, resolved_rows
from mtltrain.weighting.solvers import EPS

VARIANTS = ("gradient", "loss", "hybrid")


class IMTL(GradientWeighting):
    """IMTL-G: equal projections on the unit gradients; IMTL-L: e^s·L − s; or both.

    IMTL-G: α with equal projections of d on every unit gradient, closed form α ∝ M⁺‖g‖; IMTL-L:
    e^s·L − s learned, logged as `scale` (e^s); `variant` chooses `hybrid` (both), `gradient` or
    `loss`.

    Paper: Liu et al., ICLR 2021.
    Scale: Σ α = 1.
    Scale (variant=loss): weight e^s_k.
    Logs: `direction_norm`, `scale`, `solver_unconverged`.
    Logs (variant=loss): `scale`.
    """

    solves = True
    RANGES: ClassVar[Mapping[str, Range]] = {
        "variant": (VARIANTS.__contains__, f"choose one of {list(VARIANTS)}")
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        variant: str = "hybrid",
        representation: bool = False,
        every: int = 1,
    ) -> None:
        super().__init__(terms, every)
        self.check_settings({"variant": variant})
        self.variant = variant
        if variant != "gradient":
            self.require_nonnegative_losses("scales each loss towards 1 (IMTL-L)")
            self.log_scale = nn.Parameter(torch.zeros(len(terms)))
        if variant == "loss":
            self.level = None
        else:
            self.level = "representation" if representation else "parameters"

    @classmethod
    def loss_based(cls, settings: Mapping[str, Any]) -> bool:
        """IMTL-L alone (variant=loss) weighs the losses; the other variants, the gradients
        (and a subclass that takes its settings as **kwargs, whose variant is not seen: judged
        by its gradients, so not stacked, and CR-MOGM's build checks its level)."""
        return settings.get("variant") == "loss"

    def contributions(self, losses: Tensor) -> Tensor:
        if self.variant == "gradient":
            return losses
        return torch.exp(self.log_scale) * losses - self.log_scale

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        kept = resolved_rows(gramian, PRECISION)  # a zero gradient has no direction
        if not bool(kept.any()):  # every gradient zero: d = 0 whatever α
            return torch.full((gramian.shape[0],), 1.0 / gramian.shape[0], dtype=gramian.dtype)
        rows = gramian[kept][:, kept]
        norms = rows.diagonal().sqrt()
        alpha = torch.zeros(gramian.shape[0], dtype=gramian.dtype)
        alpha[kept] = torch.linalg.pinv(rows, hermitian=True) @ norms
        solved = _equal_positive_projections(rows, alpha[kept], norms) and float(alpha.sum()) > 0
        self.record(solved)
        if not solved:  # no direction with equal positive projections: counted, equal α
            return torch.full_like(alpha, 1.0 / len(alpha))
        return alpha / alpha.sum()

    def weights(self) -> Tensor:
        if self.variant == "loss":  # the multiplier of each loss's gradient
            return torch.exp(self.log_scale).detach()
        return super().weights()

    def report(self) -> dict[str, Tensor]:
        report = {"weight": self.weights()} if self.variant == "loss" else super().report()
        if self.variant != "gradient":
            report["scale"] = torch.exp(self.log_scale).detach()
        return report


def _equal_positive_projections(gramian: Tensor, alpha: Tensor, norms: Tensor) -> bool:
    """Whether d = Σ α_k g_k has equal projections d·u_k (to 1e-6, or rounding) that are
    positive (above rounding): M⁺n solves the equations only where they have a solution."""
    projections = gramian @ alpha / norms
    rounding = 4 * len(alpha) * EPS * float(((gramian.abs() @ alpha.abs()) / norms).max())
    low, high = float(projections.min()), float(projections.max())
    return low > rounding and high - low <= 1e-6 * high + rounding
