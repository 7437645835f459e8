"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liang, Stone & Liu, NeurIPS 2023).

Logits ξ, z = softmax(ξ). The model follows the gradient of Σ_k z_k·log(L_k − b_k + ε)/c with
c = Σ_k z_k/(L_k − b_k + ε) held constant (b_k: `min_losses`, the losses' lower bounds,
ε = 1e-8): each ∇L_k gets weight w_k = z_k/(c·(L_k − b_k + ε)), the weights sum to 1 and are
set from the step's losses before its backward pass; the contributions are w_k·L_k ("weight"
logs w, "z" the softmax).
After the model's step, the same batch's losses are computed again and ξ takes one step of its
own Adam (learning rate `lr`, weight decay `weight_decay`: the paper's β and γ) along the
gradient of z·δ, δ_k = log(L_k − b_k + ε) before the step − the same after: a task whose loss
fell little gains weight (a δ that is not finite leaves ξ as it is). Losses must stay above
b_k (the log), so the NLLs are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from mtltrain.losses import LossTerm
from mtltrain.step import Step
from mtltrain.weighting.base import Range, Values, Weighting, named_values

EPS = 1e-8


class FAMO(Weighting):
    """Σ_k z_k·log(L_k − b_k)/c, z = softmax(ξ), ξ updated from the losses after the step.

    The step's gradient is Σ_k w_k·∇L_k with w_k ∝ z_k/(L_k − b_k): its contributions are
    w_k·L_k (the gradient of Σ_k z_k·log(L_k − b_k)/c with c held constant). ξ is stepped by its
    own Adam optimizer (`lr`, `weight_decay`) on each batch's log-loss decrease, so its update
    needs the batch's losses after the step: one more forward pass per step. The lower bounds
    b_k are `min_losses` (0). It takes logarithms of losses, so it refuses a term whose loss can
    be negative (`gaussian_nll`, `laplace_nll`, `beta_nll`) with one line.

    Paper: Liu et al., NeurIPS 2023.
    Scale: Σ w = 1.
    Logs: `z`.
    """

    elementwise = True

    RANGES: ClassVar[Mapping[str, Range]] = {
        "lr": (lambda v: v > 0, "it must be > 0"),
        "weight_decay": (lambda v: v >= 0, "it must be >= 0"),
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Values = 0.0,
    ) -> None:
        super().__init__(terms)
        self.check_settings({"lr": lr, "weight_decay": weight_decay})
        self.require_nonnegative_losses("takes the log of each loss")
        bounds = named_values(self.names, min_losses, "weighting.min_losses", default=0.0)
        self.register_buffer("min_losses", torch.tensor(bounds))
        self.logits = nn.Parameter(torch.zeros(len(terms)))
        self.register_buffer("weight", torch.full((len(terms),), 1.0 / len(terms)))
        self.register_buffer("losses_before", torch.zeros(len(terms)))
        self.optimizer = torch.optim.Adam([self.logits], lr=lr, weight_decay=weight_decay)

    def shifted(self, losses: Tensor) -> Tensor:
        return losses - self.min_losses + EPS

    def observe(self, step: Step) -> None:
        losses = step.losses.detach()
        self.losses_before.copy_(losses)
        z = torch.softmax(self.logits.detach(), dim=0)
        self.weight.copy_(z / self.shifted(losses) / (z / self.shifted(losses)).sum())

    def after_step(self, step: Step, recompute: Callable[[Step], Tensor]) -> None:
        delta = self.shifted(self.losses_before).log() - self.shifted(recompute(step)).log()
        if not bool(torch.isfinite(delta).all()):  # the update broke a loss: ξ stays
            return
        with torch.enable_grad():
            torch.softmax(self.logits, dim=0).backward(delta.detach(), inputs=[self.logits])

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def weights(self) -> Tensor:
        return self.weight.clone()

    def report(self) -> dict[str, Tensor]:
        return {"weight": self.weights(), "z": torch.softmax(self.logits.detach(), dim=0)}
