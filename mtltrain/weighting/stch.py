"""Smooth Tchebycheff scalarization (Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff
Scalarization for Multi-Objective Optimization", ICML 2024).

The Tchebycheff scalarization max_k λ_k·(f_k − z_k) made smooth: μ·log Σ_k exp(λ_k·(f_k − z_k)/μ),
which lies within μ·log K above the max and tends to it as μ → 0. Two forms (`form`):

- `normalised` (default), the paper's multi-task form (its official code, as LibMTL's STCH):
  for the first `warmup_epochs` epochs the total is Σ_k log(L_k + ε) (each task's gradient
  divided by its loss); the mean term losses of the last warm-up epoch become the nadir point
  n; from then on f_k = log(L_k/n_k + ε) with z = 0 and the total is K·μ·log Σ_k
  exp(λ_k·log(L_k/n_k + ε)/μ), so each task is measured against its own scale (a loss scaled by
  c scales its nadir by c: nothing changes). ε = 1e-20 as the official code.
- `plain`: μ·log Σ_k exp(λ_k·(L_k − z_k)/μ) of the raw losses, z the ideal point `ideal`.

The weight of ∇L_k is the derivative of the total: K·λ_k·p_k/(L_k + ε·n_k) (normalised) or
λ_k·p_k (plain), p = softmax_k(λ_k·f_k/μ); 1/(L_k + ε) in the warm-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm
from mtltrain.step import Step
from mtltrain.weighting.base import Range, Values, Weighting, named_values, numbers_of

EPS = 1e-20  # the official code's
FORMS = ("normalised", "plain")


class SmoothTchebycheff(Weighting):
    """K·μ·log Σ_k exp(λ_k·log(L_k/n_k)/μ) after a warm-up of Σ_k log L_k that sets the nadir n.

    `form=normalised` (the paper's multi-task form): Σ_k log(L_k + ε) for `warmup_epochs`
    epochs; the mean losses of the last of them are the nadir point n_k (kept in the state,
    logged as `nadir`, 0 until set and under `form=plain`; an epoch whose mean losses are not
    all finite and positive leaves it unset, the warm-up then goes on); then
    K·μ·log Σ_k exp(λ_k·log(L_k/n_k + ε)/μ),
    the official code's total (which subtracts a detached max inside the log-sum-exp: its value
    differs from this one by a constant, its gradient does not). `form=plain`: μ·log Σ_k
    exp(λ_k·(L_k − z_k)/μ), z = `ideal`. Smaller μ (`mu`) is closer to the max: μ → 0 trains
    only the worst task. λ is `preference` (1 for every task, as the official code). The
    contributions are each term's share total·p_k of the smooth max (log(L_k + ε) in the
    warm-up). The normalised form takes logarithms of losses, so it refuses a term whose loss
    can be negative. A normalised run of `trainer.epochs` ≤ `warmup_epochs` never leaves the
    warm-up: it is not refused (a short trial run is a fair use), and one warning line says so
    when it is built (`run_warnings`).

    Paper: Lin et al., ICML 2024.
    Scale: K × the smooth max (normalised, as the official code), 1 × (plain).
    Logs: `nadir`.
    """

    RANGES: ClassVar[Mapping[str, Range]] = {
        "mu": (lambda v: v > 0, "it must be > 0"),
        "form": (FORMS.__contains__, f"choose one of {list(FORMS)}"),
        "warmup_epochs": (lambda v: isinstance(v, int) and v >= 1, "it must be an integer >= 1"),
        "preference": (lambda v: v > 0, "each λ_k must be > 0"),
    }

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        super().check_settings(settings)
        ideal = settings.get("ideal")
        if settings.get("form", "normalised") == "normalised" and any(numbers_of(ideal)):
            raise ConfigError(
                f"weighting.ideal={ideal!r} is not allowed with form=normalised, whose ideal "
                "point is 0 on the log-normalised losses: use form=plain or leave ideal at 0"
            )

    def __init__(
        self,
        terms: Sequence[LossTerm],
        mu: float = 1.0,
        form: str = "normalised",
        warmup_epochs: int = 5,
        preference: Values = 1.0,
        ideal: Values = 0.0,
    ) -> None:
        super().__init__(terms)
        settings = {"mu": mu, "form": form, "warmup_epochs": warmup_epochs}
        self.check_settings({**settings, "preference": preference, "ideal": ideal})
        self.mu, self.form, self.warmup_epochs = float(mu), form, warmup_epochs
        if form == "normalised":
            self.require_nonnegative_losses("takes the log of each loss (form=normalised)")
        prefs = named_values(self.names, preference, "weighting.preference", default=1.0)
        ideals = named_values(self.names, ideal, "weighting.ideal", default=0.0)
        self.register_buffer("preference", torch.tensor(prefs))
        self.register_buffer("ideal", torch.tensor(ideals))
        self.register_buffer("nadir", torch.zeros(len(terms)))  # 0: not yet set
        self.register_buffer("weight", torch.ones(len(terms)))

    def total_parts(self, losses: Tensor) -> Tensor:
        """Each term's part of the total at `losses` (differentiable, any float dtype)."""
        if self.form == "plain":
            return self.smooth_max_parts(losses - self.ideal)
        # both branches are computed (no Python branch on a tensor: stacked runs vmap this);
        # the unused one at a harmless nadir of 1
        warm = self.nadir.le(0).any()
        nadir = torch.where(warm, torch.ones_like(self.nadir), self.nadir)
        normalised = len(self.terms) * self.smooth_max_parts(torch.log(losses / nadir + EPS))
        return torch.where(warm, torch.log(losses + EPS), normalised)

    def smooth_max_parts(self, f: Tensor) -> Tensor:
        """μ·log Σ_k exp(λ_k·f_k/μ), split into its shares total·p_k, p = softmax(λ·f/μ)."""
        scaled = self.preference * f / self.mu
        return self.mu * torch.logsumexp(scaled, dim=-1, keepdim=True) * torch.softmax(scaled, -1)

    def observe(self, step: Step) -> None:
        losses = step.losses.detach()
        if not bool(torch.isfinite(losses).all()):  # a step to be skipped: weights kept
            return
        with torch.enable_grad():
            at = losses.clone().requires_grad_()
            (weight,) = torch.autograd.grad(self.total_parts(at).sum(), at)
        self.weight.copy_(weight)

    def contributions(self, losses: Tensor) -> Tensor:
        return self.total_parts(losses)

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        if self.form == "plain" or epoch < self.warmup_epochs - 1 or bool(self.nadir.gt(0).all()):
            return
        usable = bool((torch.isfinite(mean_losses) & mean_losses.gt(0)).all())
        if usable:  # else the warm-up goes on to the next epoch
            self.nadir.copy_(mean_losses.to(self.nadir))

    def run_warnings(self, epochs: int) -> list[str]:
        if self.form == "plain" or epochs > self.warmup_epochs:
            return []
        warmup = self.warmup_epochs
        return [
            f"trainer.epochs={epochs} ≤ weighting.warmup_epochs={warmup}: the run never leaves "
            "STCH's warm-up (Σ_k log L_k) to train on its smooth Tchebycheff total; give "
            f"trainer.epochs > {warmup} or a smaller weighting.warmup_epochs"
        ]

    def weights(self) -> Tensor:
        return self.weight.clone()

    def report(self) -> dict[str, Tensor]:
        return {"weight": self.weights(), "nadir": self.nadir.clone()}
