"""CR-MOGM (Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of Stochastic
Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022).

A wrapper of another gradient-based strategy whose direction is a weighted sum of the step's
task gradients (`weighted_rows`: MGDA, CAGrad, Nash-MTL, PCGrad, UPGrad, ...): its weights λ_t
are averaged over the steps, λ̄_t = α·λ̄_{t−1} + (1 − α)·λ_t, and d = Σ_k λ̄_k·g_k with this
step's gradients. The paper shows that the averaged weights make a stochastic gradient
manipulation converge, where the weights computed from one batch's noisy gradients do not.
λ̄_1 = λ_1 (as torchjd's CRMOGMWeighting), so the first step is the inner strategy's. α is
fixed, 0.9 by default as torchjd's (which notes that the paper's Corollary 1 lets α_t grow
towards 1 as the learning rate decays); α = 0 is the inner strategy itself, step for step.
The inner strategy is built from its own config (conf/weighting/<inner>.yaml, its settings
updated by `inner_settings`), takes the same hooks (its loss transform, its extra batches,
its optimizers, its state), and its state is saved inside this one's. The inner strategy's
`every` = n (`+weighting.inner_settings.every=n`) recomputes λ_t, and so λ̄_t, every n steps;
the steps between reuse λ̄.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm
from mtltrain.models.base import MultiTaskNet
from mtltrain.step import Step
from mtltrain.weighting.base import GradientWeighting, Range, Weighting


class CRMOGM(GradientWeighting):
    """d = Σ_k λ̄_k·g_k, λ̄_t = α·λ̄_{t−1} + (1 − α)·λ_t, λ_t another strategy's weights.

    `weighting=cr_mogm weighting.inner=<name>` chooses the strategy whose weights are averaged
    (`+weighting.inner_settings.<setting>=<value>` changes its settings); a strategy whose
    direction is not a weighted sum of the step's gradients (GradDrop, DB-MTL, MoCo) or a
    loss-based one, by its class or with its settings (`imtl_l`: IMTL with variant=loss, whose
    weights e^s are learned with the model, not computed from the step's gradients), is refused
    in one line naming those it can wrap, by the config check. Its cost is the inner
    strategy's. The inner strategy's reports are logged with the prefix `inner_` (its λ_t as
    `inner_weight`, a solver's failures as `inner_solver_unconverged`).

    Paper: Zhou et al., NeurIPS 2022.
    Scale: the inner strategy's (λ̄ averages its weights).
    Logs: `direction_norm`, `inner_weight`, `inner_direction_norm`, `inner_solver_unconverged`.
    """

    RANGES: ClassVar[Mapping[str, Range]] = {
        "alpha": (lambda v: 0 <= v < 1, "it must be in [0, 1)")
    }

    def __init__(
        self, terms: Sequence[LossTerm], inner: Callable[..., Weighting], alpha: float = 0.9
    ) -> None:
        super().__init__(terms)
        self.check_settings({"alpha": alpha})
        strategy = inner(terms=terms)
        if not self.wraps(type(strategy)) or strategy.level is None:  # IMTL variant=loss
            raise ConfigError(
                f"weighting.inner={type(strategy).__name__} is not allowed: CRMOGM averages the "
                "weights of a gradient-based strategy whose direction is a weighted sum of the "
                "step's task gradients (weighted_rows), which it is not with these settings"
            )
        self.inner: GradientWeighting = strategy
        self.alpha = alpha
        self.level = strategy.level
        self.extra_batches = strategy.extra_batches  # SDMGrad's, MoDo's: the loop draws them
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @classmethod
    def wraps(cls, strategy: type, settings: Mapping[str, Any] | None = None) -> bool:
        """Whether CR-MOGM can average a strategy's weights: a gradient-based one whose
        direction is Σ_k w_k·g_k of the step's gradients (not another CR-MOGM); with its
        `settings` (all of them), not one that is loss-based with them (IMTL-L: its weights
        e^s are learned with the model, not computed from the step's gradients)."""
        return (
            isinstance(strategy, type)
            and issubclass(strategy, GradientWeighting)
            and strategy.weighted_rows
            and not issubclass(strategy, CRMOGM)
            and (settings is None or not strategy.loss_based(settings))
        )

    def setup(self, model: MultiTaskNet) -> None:
        self.inner.setup(model)

    def observe(self, step: Step) -> None:
        self.inner.observe(step)

    def contributions(self, losses: Tensor) -> Tensor:
        return self.inner.contributions(losses)

    def observe_extra(self, jacobians: Sequence[Tensor]) -> None:
        self.inner.observe_extra(jacobians)

    def reuses_weights(self) -> bool:
        """The inner strategy's `every`: between its recomputations the average λ̄ is reused."""
        return self.inner.reuses_weights()

    def combine(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        _, weights = self.inner.aggregate(jacobian, losses, at)
        if not bool(torch.isfinite(weights).all()):  # a skipped step leaves the average alone
            return weights @ jacobian, weights
        current = weights.double()
        if bool(self.started):
            current = self.alpha * self.weight.double() + (1 - self.alpha) * current
        self.started.fill_(True)
        averaged = current.to(jacobian)
        return averaged @ jacobian, averaged

    def after_step(self, step: Step, recompute: Callable[[Step], Tensor]) -> None:
        self.inner.after_step(step, recompute)

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        self.inner.on_epoch_end(epoch, mean_losses)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self.inner.optimizers()

    def model_optimizer_parameters(self) -> list[nn.Parameter]:
        return self.inner.model_optimizer_parameters()

    def report(self) -> dict[str, Tensor]:
        inner = {f"inner_{quantity}": value for quantity, value in self.inner.report().items()}
        return {**inner, **super().report()}
