"""MoCo (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023).

Each task's gradient is tracked by a moving average Y_k ← Y_k − β_t·(Y_k − ĝ_k), which removes
the bias a stochastic MGDA step has; the weights take one projected-gradient step on MGDA's
problem with the tracked gradients, λ ← Π_Δ(λ − γ_t·(Y·Yᵀ + ρI)·λ), and d = Σ_k λ_k·Y_k. The
step sizes decay as β_t = β/t^σ_β and γ_t = γ/t^σ_γ (t the step, from 1). The defaults are
LibMTL's, taken from the authors' code: β = 0.5, γ = 0.1, σ_β = σ_γ = 0.5, ρ = 0, Y = 0 and
λ uniform at the start, and ĝ_k = L_k·g_k/‖g_k‖ (`normalize`; false: ĝ_k = g_k, the paper's
formula). Where they differ we follow the paper: λ is projected onto the simplex (that code
takes a softmax of the step instead), and a zero gradient stays zero when normalised (that
code divides by ‖g‖ + 1e-8). The paper's projection of Y_k onto a ball of radius L_k, there to
bound the gradients in its proof, is left out as in that code. Y and λ are saved with the run;
a skipped step (a Jacobian that is not finite) leaves them as they were. On the shared
parameters only: an average of representation gradients over different batches means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.weighting.base import GradientWeighting, Range, float64_gramian
from mtltrain.weighting.solvers import project_to_simplex

STEP_SIZE: Range = (lambda v: v > 0, "it must be > 0")
DECAY: Range = (lambda v: v >= 0, "it must be >= 0")


class MoCo(GradientWeighting):
    """d = Σ_k λ_k·Y_k, Y_k ← Y_k − β_t(Y_k − ĝ_k), λ ← Π_Δ(λ − γ_t(Y·Yᵀ + ρI)λ).

    Per step the engine takes one backward pass per task for its gradient of the shared
    parameters; the tracked gradients Y (K × D, one per task) move towards them, λ takes one
    projected-gradient step on ½‖Σ_k λ_k·Y_k‖² + ½ρ‖λ‖² over the simplex, and the shared layers
    move along Σ_k λ_k·Y_k (not a combination of this step's gradients). With β = 1, σ_β = 0
    and ρ = 0 (Y = this step's ĝ) it is one projected-gradient step of MGDA's problem from the
    last weights.

    Paper: Fernando et al., ICLR 2023.
    Scale: Σ λ = 1 (with `normalize`, each ĝ_k as long as its loss).
    Logs: `direction_norm`.
    """

    weighted_rows = False

    RANGES: ClassVar[Mapping[str, Range]] = {
        "beta": (lambda v: 0 < v <= 1, "it must be in (0, 1]"),
        "beta_sigma": DECAY,
        "gamma": STEP_SIZE,
        "gamma_sigma": DECAY,
        "rho": DECAY,
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize: bool = True,
    ) -> None:
        super().__init__(terms)
        settings = {"beta": beta, "beta_sigma": beta_sigma, "gamma": gamma, "rho": rho}
        self.check_settings({**settings, "gamma_sigma": gamma_sigma})
        if normalize:
            self.require_nonnegative_losses("scales each gradient to the length of its loss")
        self.beta, self.beta_sigma, self.rho = beta, beta_sigma, rho
        self.gamma, self.gamma_sigma, self.normalize = gamma, gamma_sigma, normalize
        self.tracked: Tensor | None = None  # Y, K × D, made at the first step
        self.steps = 0

    def combine(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        k = len(self.terms)
        if not bool(torch.isfinite(jacobian.sum() + losses.sum())):  # skipped: state unchanged
            nan = torch.full((k,), torch.nan, device=jacobian.device, dtype=jacobian.dtype)
            return nan @ jacobian, nan
        rows = jacobian
        if self.normalize:
            norms = jacobian.norm(dim=1)
            scale = torch.where(norms > 0, losses.to(jacobian) / norms, 0.0)
            rows = scale[:, None] * jacobian
        t = self.steps + 1
        previous = self.tracked if self.tracked is not None else torch.zeros_like(jacobian)
        tracked = torch.lerp(previous, rows, self.beta / t**self.beta_sigma)
        gramian = float64_gramian(tracked).cpu()
        uniform = torch.full((k,), 1.0 / k, dtype=torch.float64)
        lam = self.weight.double().cpu() if self.steps else uniform  # λ₁ exactly, not rounded
        step = self.gamma / t**self.gamma_sigma
        lam = project_to_simplex(lam - step * (gramian @ lam + self.rho * lam))
        self.tracked, self.steps = tracked, t
        weights = lam.to(jacobian)
        return weights @ tracked, weights

    def get_extra_state(self) -> dict:
        return {"tracked": self.tracked, "steps": self.steps}

    def set_extra_state(self, state: dict) -> None:
        """A checkpoint is read on the CPU: Y goes where the strategy is (its buffers)."""
        tracked = state["tracked"]
        self.tracked = None if tracked is None else tracked.to(self.weight.device)
        self.steps = state["steps"]
