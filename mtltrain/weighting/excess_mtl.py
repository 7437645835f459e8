"""ExcessMTL (He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning with
Excess Risks", ICML 2024).

Each task's excess risk (its distance to convergence, not its loss, which a noisy task keeps
high) is estimated from its gradient by a second-order Taylor expansion with a diagonal
AdaGrad-style Hessian: Ê_k = g_kᵀ·H_k⁻¹·g_k with H_k = diag(√(Σ_{s≤t} g_{k,s}² + 10⁻⁷)), the
squares summed over the steps so far. The weights take an exponentiated-gradient step on the
estimates relative to the task's first one (the paper's scale processing): w_k ← w_k·exp(η·Ê_k
/Ê_k⁽⁰⁾), normalised to Σ w = K, and d = Σ_k w_k·g_k. As the official code (and LibMTL's):
the weights start at 1 and sum to K (the paper's lie on the simplex: the same direction divided
by K), the first step only records the baseline Ê⁽⁰⁾, and η = 0.01 (its default; its README's
example uses 1). Where it differs: that code weights the whole loss, so the task heads'
gradients are scaled by w_k too, which here (as for every gradient-based strategy) they are
not; a task's baseline is its first nonzero estimate (that code divides by a zero one), its
weight moving from the step after; and the update is taken in log space (a softmax), so a
large ratio saturates the weights instead of overflowing. The sums of
squares, the baselines and the weights are saved with the run; a skipped step (a Jacobian that
is not finite) leaves them as they were. On the shared parameters only: a sum of squares of
representation gradients over different batches means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Range

ADAGRAD_EPS = 1e-7  # added to the sums of squares under the root, as the official code


class ExcessMTL(GradientWeighting):
    """d = Σ_k w_k·g_k, w_k ∝ w_k·exp(η·Ê_k/Ê_k⁽⁰⁾), Ê_k = g_kᵀ·diag(√Σ_s g_{k,s}²)⁻¹·g_k.

    Per step the engine takes one backward pass per task for its gradient of the shared
    parameters; each task's squared gradients are added to its running sum (K × D, the
    AdaGrad statistics), its excess risk is estimated from them, and the weights take one
    exponentiated-gradient step towards the tasks furthest from convergence relative to where
    they started.

    Paper: He et al., ICML 2024.
    Scale: Σ w = K (1 each at the start).
    Logs: `direction_norm`.
    """

    RANGES: ClassVar[Mapping[str, Range]] = {
        "robust_step_size": (lambda v: v > 0, "it must be > 0")
    }

    def __init__(self, terms: Sequence[LossTerm], robust_step_size: float = 0.01) -> None:
        super().__init__(terms)
        self.check_settings({"robust_step_size": robust_step_size})
        self.robust_step_size = robust_step_size
        self.weight.fill_(1.0)
        self.squares: Tensor | None = None  # Σ_s g_s², K × D, made at the first step
        self.baseline = torch.zeros(len(terms), dtype=torch.float64)  # Ê⁽⁰⁾, 0: none yet

    def combine(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        if not bool(torch.isfinite(jacobian.sum())):  # a skipped step leaves the state alone
            nan = torch.full((len(self.terms),), torch.nan, device=jacobian.device)
            return nan.to(jacobian) @ jacobian, nan.to(jacobian)
        squared = jacobian.square()
        squares = squared if self.squares is None else self.squares + squared
        excess = (squared / (squares + ADAGRAD_EPS).sqrt()).sum(dim=1).double().cpu()
        known = self.baseline > 0
        ratio = torch.where(known, excess / torch.where(known, self.baseline, 1.0), 0.0)
        log_weights = self.weight.double().cpu().log() + self.robust_step_size * ratio
        weights = len(self.terms) * torch.softmax(log_weights, dim=0)
        self.squares = squares
        self.baseline = torch.where(known, self.baseline, excess)
        weights = weights.to(jacobian)
        return weights @ jacobian, weights

    def get_extra_state(self) -> dict:
        return {"squares": self.squares, "baseline": self.baseline}

    def set_extra_state(self, state: dict) -> None:
        """A checkpoint is read on the CPU: the sums of squares go where the strategy is (its
        buffers); the baselines stay on the host, where the weights are computed."""
        squares = state["squares"]
        self.squares = None if squares is None else squares.to(self.weight.device)
        self.baseline = state["baseline"]
