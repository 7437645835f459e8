"""LDC-MTL (Xiao, Dong, Zou & Ji, "LDC-MTL: Balancing Multi-Task Learning through Scalable Loss
Discrepancy Control", 2025): loss discrepancy control as a bilevel problem, solved first-order.

Router weights σ = softmax(W), losses pre-normalised by τ_k = L_k(0)/min_j L_j(0) (the first
step's losses, used from the second step on; `normalise`), u_k = σ_k·L_k/τ_k. Lower level:
the model minimises g = Σ_k u_k; upper level: the router minimises the discrepancy
f = Σ_{k<K} |u_k − u_{k+1}| of neighbouring tasks. The penalised single-level problem the
paper solves (its value-function term left out, as its first-order algorithm does) is
total = g + λ·f: the model and the router both descend it, one step each per batch, O(1) in K.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtltrain.losses import LossTerm
from mtltrain.step import Step
from mtltrain.weighting.base import Range, Weighting

EPS = 1e-8  # of a first-step loss, in the pre-normalisation τ


class LDCMTL(Weighting):
    """Σ_k u_k + λ·Σ_{k<K} |u_k − u_{k+1}|, u_k = σ_k·L_k/τ_k, σ = softmax(W) a learned router.

    The router is a vector of K logits W (σ uniform at the start), stepped by its own Adam
    optimizer (`lr`) on the gradient of the same total at the step's losses, given in `observe`;
    the model's gradient is Σ_k w_k·∇L_k with w_k = (σ_k/τ_k)·(1 + λ·(s_k − s_{k−1})), s_k the
    sign of u_k − u_{k+1} (0 beyond the ends). λ is `penalty`. τ_k = (L_k + ε)/(min_j L_j + ε)
    of the first step that updated the model with losses all finite and positive (a zero one, a
    masked loss on a batch without valid targets, would make every other τ_k ≈ L_k/ε for the
    whole run; ε = 1e-8; τ = 1 with `normalise=false`), kept in the state and used from the next
    step on: the official code divides that first step's losses already, which at σ uniform
    makes every u_k equal, a point where the discrepancy has no derivative (that one step is
    trained on the raw losses here). The router descends g too, as in the official code: with a
    small λ it drifts toward the task of least normalised loss; a large λ holds the u_k
    together. The official code's routers differ by benchmark (a softmax of a linear layer on
    pooled decoder features, clamped to [0.2, 0.8], on NYUv2 and Cityscapes; a sigmoid of a free
    vector on CelebA and QM9) and share the model's Adam; here the router reads no features (the
    strategy sees losses, not the model's activations), is a softmax as the paper's, and has an
    optimizer of its own. The discrepancy pairs tasks in term order, as the official code does.
    The pre-normalisation divides by losses, so it refuses a term whose loss can be negative.

    Paper: Xiao et al. 2025.
    Scale: Σ σ = 1, each loss divided by τ_k.
    Logs: `router` (σ), `tau`, `discrepancy` (f).
    """

    RANGES: ClassVar[Mapping[str, Range]] = {
        "penalty": (lambda v: v >= 0, "it must be >= 0"),
        "lr": (lambda v: v > 0, "it must be > 0"),
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        penalty: float = 0.05,
        lr: float = 1e-3,
        normalise: bool = True,
    ) -> None:
        super().__init__(terms)
        self.check_settings({"penalty": penalty, "lr": lr})
        if normalise:
            self.require_nonnegative_losses("divides each loss by its first value (normalise)")
        self.penalty, self.normalise = float(penalty), bool(normalise)
        k = len(terms)
        self.logits = nn.Parameter(torch.zeros(k))
        self.register_buffer("tau", torch.zeros(k) if normalise else torch.ones(k))  # 0: unset
        self.register_buffer("weight", torch.ones(k) / k)
        self.register_buffer("gap", torch.zeros(()))
        self.optimizer = torch.optim.Adam([self.logits], lr=lr)

    def parts(self, losses: Tensor, router: Tensor) -> Tensor:
        """Each term's part of g + λ·f: u_k plus half of the |u_k − u_{k±1}| it is in."""
        u = router * losses / self.divisor()
        gaps = (u[..., :-1] - u[..., 1:]).abs()  # none for one task
        halves = F.pad(gaps, (0, 1)) + F.pad(gaps, (1, 0))
        return u + 0.5 * self.penalty * halves

    def divisor(self) -> Tensor:
        """τ once measured, 1 before."""
        return torch.where(self.tau.gt(0), self.tau, torch.ones_like(self.tau))

    def observe(self, step: Step) -> None:
        losses = step.losses.detach().to(self.weight)
        if not bool(torch.isfinite(losses).all()):
            return
        with torch.enable_grad():
            at = losses.clone().requires_grad_()
            router = torch.softmax(self.logits, dim=0)
            total = self.parts(at, router).sum()
            weight, self.logits.grad = torch.autograd.grad(total, [at, self.logits])
        u = router.detach() * losses / self.divisor()
        self.weight.copy_(weight)
        self.gap.copy_((u[:-1] - u[1:]).abs().sum())

    def after_step(self, step: Step, recompute: Callable[[Step], Tensor]) -> None:
        """τ from the first updated step's losses that are all finite and positive, used from
        the next step on."""
        losses = step.losses.detach().to(self.tau)
        usable = bool((torch.isfinite(losses) & losses.gt(0)).all())
        if usable and not bool(self.tau.gt(0).all()):
            self.tau.copy_((losses + EPS) / (losses.min() + EPS))

    def contributions(self, losses: Tensor) -> Tensor:
        return self.parts(losses, torch.softmax(self.logits.detach(), dim=-1))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def weights(self) -> Tensor:
        return self.weight.clone()

    def report(self) -> dict[str, Tensor]:
        return {
            "weight": self.weights(),
            "router": torch.softmax(self.logits.detach(), dim=0),
            "tau": self.tau.clone(),
            "discrepancy": self.gap.clone(),
        }
