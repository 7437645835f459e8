"""Auto-Lambda (Liu, James, Davison & Johns, "Auto-Lambda: Disentangling Dynamic Task
Relationships", TMLR 2022).

Task weights λ learned by a one-step bilevel problem: the model trains on Σ_k λ_k·L_k, and λ
follows the gradient of the validation loss after a virtual step of the model,
θ' = θ − α·∇_θ Σ_k λ_k·L_k(θ), whose λ-gradient is −α·∇²_{λ,θ}(Σ_k λ_k·L_k)·∇_θ' L_val(θ').
The mixed second derivative times d = ∇_θ' L_val(θ') is the paper's central finite difference,
(L_k(θ + εd) − L_k(θ − εd))/(2ε) with ε = 0.01/‖d‖, of the training batch's losses, so the
meta-gradient is −α times it. L_val is the sum of the `primary` terms' losses (all terms: the
multi-task setting) on a validation batch: of the validation split where one is held out
(`trainer.validation`), else of the training set in an order of its own (what the paper's code
does for its multi-task experiments). The loop hands it over (`extra_batches`); a step without
it (a step runner's `train_step` called alone) uses its own batch in its place. λ takes one
step of its own Adam (`lr`) per training step. Two deviations from the authors' code: the loop
steps λ's optimizer after the model's step, so a meta-gradient moves the weights from the next
step on (theirs moves them before the model's step on the same batch); and the virtual step is
a plain gradient step of size α (`virtual_lr`, by default the model optimizer's initial
learning rate, which a `trainer.lr_scheduler` does not change: theirs follows the schedule),
without the momentum and weight decay of their SGD. The extra forward passes run on copies of
the model's buffers (batch-norm statistics stay the step's own). A meta-gradient that is not
finite leaves λ as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, compute_losses
from mtltrain.models.base import MultiTaskNet
from mtltrain.step import Step
from mtltrain.weighting.base import Range, Weighting

RELATIVE_EPS = 0.01  # ε·‖d‖ of the finite difference (the authors' code)


class AutoLambda(Weighting):
    """Σ_k λ_k·L_k, λ stepped by Adam along the validation loss's gradient after a virtual step.

    The meta-gradient of λ_k is −α·(L_k(θ + εd) − L_k(θ − εd))/(2ε) on the step's training
    batch, d = ∇L_val at θ' = θ − α∇_θ Σ λ_k L_k, ε = 0.01/‖d‖ (the paper's finite difference);
    L_val sums the `primary` terms' losses on a validation batch (the validation split where
    held out, else the training set in another order). λ starts at `init` (> 0) and takes one
    step of its own Adam (`lr`) per training step, after the model's. Costs three more forward
    passes and two more backward passes a step.

    Paper: Liu et al., TMLR 2022.
    Scale: λ_k = `init` (0.1) at the start, then learned (unconstrained: the paper's).
    Logs: nothing else.
    """

    elementwise = True
    unstackable: ClassVar[str] = "its meta-step runs the model at other parameters, per job"
    extra_batches = ("validation",)
    RANGES: ClassVar[Mapping[str, Range]] = {
        "init": (lambda v: v > 0, "it must be > 0 (each task's starting weight λ_k)"),
        "lr": (lambda v: v > 0, "it must be > 0"),
        "virtual_lr": (lambda v: v > 0, "it must be > 0"),
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        init: float = 0.1,
        lr: float = 1e-4,
        virtual_lr: float = 1e-3,
        primary: Sequence[str] | None = None,
    ) -> None:
        super().__init__(terms)
        self.check_settings({"init": init, "lr": lr, "virtual_lr": virtual_lr})
        chosen = self.names if primary is None else list(primary)
        if not chosen or any(name not in self.names for name in chosen):
            raise ConfigError(
                f"weighting.primary={list(chosen)} is not allowed: name terms among "
                f"{list(self.names)} (null: all of them)"
            )
        self.register_buffer("primary", torch.tensor([float(n in chosen) for n in self.names]))
        self.lam = nn.Parameter(torch.full((len(terms),), float(init)))
        self.optimizer = torch.optim.Adam([self.lam], lr=lr)
        self.virtual_lr = virtual_lr
        self.model_parameters: dict[str, Tensor] = {}  # set up with the model
        self.run_model = None

    def setup(self, model: MultiTaskNet) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(
                "AutoLambda runs the model at other parameters on its validation batches, "
                "which only mtltrain's loop hands it: train it with the CLI (or mtltrain.train)"
            )
        self.model_parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
        buffers = dict(model.named_buffers())

        def run_model(parameters: dict[str, Tensor], inputs: Tensor):
            own_buffers = {n: b.clone() for n, b in buffers.items()}
            return functional_call(model, {**parameters, **own_buffers}, (inputs,))[0]

        self.run_model = run_model

    def losses_at(self, parameters: dict[str, Tensor], batch) -> Tensor:
        """The term losses of `batch` under the model with `parameters`."""
        return compute_losses(self.terms, self.run_model(parameters, batch.inputs), batch.targets)

    def observe(self, step: Step) -> None:
        validation = step.extra_batches[0] if step.extra_batches else step.batch
        names, params = list(self.model_parameters), list(self.model_parameters.values())
        lam = self.lam.detach()
        grads = torch.autograd.grad(
            (lam * step.losses).sum(), params, retain_graph=True, allow_unused=True
        )
        alpha = self.virtual_lr
        virtual = {
            n: (p.detach() if g is None else p.detach() - alpha * g).requires_grad_()
            for n, p, g in zip(names, params, grads, strict=True)
        }
        with torch.enable_grad():
            loss = (self.primary * self.losses_at(virtual, validation)).sum()
            d = torch.autograd.grad(loss, list(virtual.values()), allow_unused=True)
        d = [torch.zeros_like(p) if g is None else g for p, g in zip(params, d, strict=True)]
        norm = torch.cat([g.reshape(-1) for g in d]).norm()
        if not bool(torch.isfinite(norm)):
            return
        meta = torch.zeros_like(lam)
        if norm > 0:
            eps = RELATIVE_EPS / norm
            with torch.no_grad():
                shifted = [
                    {n: p + sign * eps * g for n, p, g in zip(names, params, d, strict=True)}
                    for sign in (1, -1)
                ]
                plus, minus = (self.losses_at(s, step.batch) for s in shifted)
            meta = -alpha * (plus - minus) / (2 * eps)
        if bool(torch.isfinite(meta).all()):
            self.lam.grad = meta.to(self.lam)

    def contributions(self, losses: Tensor) -> Tensor:
        return self.lam.detach() * losses

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def weights(self) -> Tensor:
        return self.lam.detach().clone()
