"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

total = Σ_k w_k·L_k with learned w_k that balance the tasks' training rates. At W, the weight
matrix of the last shared layer, G_k = ‖∇_W w_k·L_k‖ = w_k·‖∇_W L_k‖; with the inverse training
rate r_k = L̃_k / mean_j L̃_j, L̃_k = L_k/L_k(0) (L_k(0): the first finite loss of the run), w
follows the gradient of L_grad = Σ_k |G_k − mean_j(G_j)·r_k^α|, the target mean(G)·r^α held
constant, with its own Adam optimizer and learning rate, and is renormalised to Σ_k w_k = K
(after clamping at 1e-6, so no weight turns negative) before each step uses it. α is the
asymmetry: 0 pulls every task to the same gradient norm. The model's gradient is that of
Σ_k w_k·L_k with w held constant; "weight" logs w.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm
from mtltrain.models.base import MultiTaskNet
from mtltrain.step import Step
from mtltrain.weighting.base import Range, Weighting

MIN_WEIGHT = 1e-6


def last_shared_layer(model: MultiTaskNet, name: str | None = None) -> nn.Parameter:
    """The shared parameter `name` (as `model.named_parameters()` names it); without a name the
    model's own `last_shared_layer()` where it has one, else the weight of the last shared
    layer: the last shared parameter with two or more dims."""
    if name is not None:
        return named_shared_parameter(model, name)
    own = getattr(model, "last_shared_layer", None)
    if callable(own):
        return own()
    weights = [p for p in model.shared_parameters() if p.dim() >= 2]
    if not weights:
        raise ConfigError(
            f"GradNorm balances gradient norms at the last shared layer, but the model "
            f"{type(model).__name__} has no shared weight matrix: choose a model with a shared "
            "encoder, or a strategy that needs none"
        )
    return weights[-1]


def named_shared_parameter(model: MultiTaskNet, name: str) -> nn.Parameter:
    """The parameter `name` of `model`, or a one-line ConfigError where it is not a shared one."""
    shared = {id(p) for p in model.shared_parameters()}
    names = [n for n, p in model.named_parameters() if id(p) in shared]
    found = dict(model.named_parameters()).get(name)
    if found is None or id(found) not in shared:
        some = ", ".join(names[-4:]) if names else "none: it has no shared layers"
        raise ConfigError(
            f"weighting.layer={name} is not allowed: it is not a shared parameter of the model "
            f"{type(model).__name__}; give one as model.named_parameters() names it "
            f"(the last shared ones: {some}), or null for the architecture's default"
        )
    return found


class GradNorm(Weighting):
    """Σ_k w_k·L_k, w_k learned to equalise ‖∇_W w_k L_k‖·r_k^−α (Chen et al. 2018).

    w is learned so that ‖∇_W w_k·L_k‖ at the last shared weight matrix W follows the mean norm
    times r_k^α, r the relative inverse training rate. W is the shared parameter `layer` names
    (as model.named_parameters() does); null: the model's `last_shared_layer()` where it has one
    (cross-stitch: its last unit's α), else the last shared parameter with two or more
    dimensions (the last shared layer's weights: MTAN's, its backbone's last); L_k(0) is the
    run's first finite loss; w is clamped at 1e-6 and renormalised to Σw = K before each step
    uses it; w has its own Adam optimizer (`lr`). It takes ratios of losses, so it refuses a
    term whose loss can be negative (`gaussian_nll`, `laplace_nll`, `beta_nll`) with one line.

    Paper: Chen et al., ICML 2018.
    Scale: Σ w = K.
    Logs: nothing else.
    """

    unstackable: ClassVar[str] = "it differentiates each loss by its own model's shared layer"
    RANGES: ClassVar[Mapping[str, Range]] = {
        "alpha": (lambda v: v >= 0, "it must be >= 0"),
        "lr": (lambda v: v > 0, "it must be > 0"),
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        alpha: float = 1.5,
        lr: float = 0.025,
        layer: str | None = None,
    ) -> None:
        super().__init__(terms)
        self.layer_name = layer
        self.check_settings({"alpha": alpha, "lr": lr})
        self.require_nonnegative_losses("takes loss ratios L_k/L_k(0)")
        self.alpha = alpha
        self.weight = nn.Parameter(torch.ones(len(terms)))
        self.register_buffer("initial_losses", torch.full((len(terms),), torch.nan))
        self.optimizer = torch.optim.Adam([self.weight], lr=lr)

    def setup(self, model: MultiTaskNet) -> None:
        # in a list: the model's, not registered here
        self.layer = [last_shared_layer(model, self.layer_name)]

    def observe(self, step: Step) -> None:
        with torch.no_grad():  # the last update's weights, back on Σw = K
            self.weight.copy_(self.weights())
        losses = step.losses.detach()
        first = torch.isnan(self.initial_losses) & torch.isfinite(losses)
        self.initial_losses.copy_(torch.where(first, losses, self.initial_losses))
        norms = torch.stack([self.gradient_norm(loss, step) for loss in step.losses])
        grad_norms = self.weight * norms
        ratio = losses / self.initial_losses
        target = (grad_norms.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        (grad_norms - target).abs().sum().backward(inputs=[self.weight])

    def gradient_norm(self, loss: Tensor, step: Step) -> Tensor:
        """‖∇_W L‖ at the last shared layer (a backward pass through the heads only), of the
        global batch (each rank's pass gives its part)."""
        (grad,) = torch.autograd.grad(loss, self.layer, retain_graph=True)
        return step.ranks.sum(grad).norm()

    def contributions(self, losses: Tensor) -> Tensor:
        return self.weight.detach() * losses

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def weights(self) -> Tensor:
        """w clamped at 1e-6 and renormalised to Σw = K: what the next step uses."""
        w = self.weight.detach().clamp(min=MIN_WEIGHT)
        return w * (len(self.terms) / w.sum())
