"""The one interface every weighting strategy implements: hooks the loop calls, each a no-op
by default, so a strategy defines only what it needs.

A step, in the order the loop calls them:

- `setup(model)` once, before training: check the model (a gradient-based strategy needs shared
  layers) and find what the strategy reads of it.
- `observe(step)` after the forward pass, before the backward pass: the step's detached outputs
  and targets (DTP's KPIs), its losses with their graph (GradNorm's gradient norms, FAMO's
  losses before the update), and its extra batches (`extra_batches`, below).
- `contributions(losses)`: the vector the engine back-propagates. Loss-based strategies
  (`level = None`) return each term's share of the total, Σ of which is back-propagated;
  gradient-based ones (`level = "parameters"` or `"representation"`) return the per-term
  objectives whose Jacobian the engine computes and hands to `aggregate(jacobian, losses)`.
- `observe_extra(jacobians)` (gradient-based strategies with extra batches): the Jacobian of
  each extra batch's term losses at the shared parameters, before `aggregate`.
- `after_step(step, recompute)` after the optimizer step: `recompute(step)` gives the batch's
  losses under the updated model (FAMO).
- `on_epoch_end(epoch, mean_losses)` with the epoch's mean term losses (DWA).
- `optimizers()`: the strategy's own optimizers, stepped after `after_step` with the gradients
  the strategy gave their parameters in `observe` or `after_step`; parameters they own are left
  out of the model's optimizer. The other parameters of a strategy (σ, c:
  `model_optimizer_parameters()`) are trained by the model's optimizer, without weight decay.
- `report()`: what to log, {quantity: vector in term order, or a 0-d tensor for a quantity of
  the whole strategy (a solver's failures)}, "weight" always.

A strategy that needs more than the step's batch says so in `extra_batches`: one entry per
batch, "train" (a batch of the training set, from a shuffle of its own) or "validation" (of the
validation split where one is held out, else of the training set). The loop hands them over in
`Step.extra_batches`, in that order, and for a gradient-based strategy the engine hands their
Jacobians to `observe_extra` (`mtltrain.loop._extra_batches` says where they come from).

Everything that changes while training is in `state_dict()` (parameters, buffers and the
`extra_state` a strategy adds) and in its optimizers' state, so a checkpoint restores it
exactly. The loop never asks which strategy it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm
from mtltrain.models.base import MultiTaskNet, has_shared_part
from mtltrain.step import Step

Values = float | Sequence[float] | Mapping[str, float] | None
Level = Literal["parameters", "representation"]
BatchSource = Literal["train", "validation"]
# what each value of a setting must satisfy, and the words that say so
Range = tuple[Callable[[Any], bool], str]


def named_values(names: Sequence[str], values: Values, setting: str, default: float) -> list[float]:
    """One value per name from None (`default`), a number, a list in order, or {name: value}."""
    if values is None:
        return [float(default)] * len(names)
    if isinstance(values, (int, float)):
        return [float(values)] * len(names)
    if isinstance(values, Mapping):
        if set(values) != set(names):
            raise ConfigError(
                f"{setting} names {sorted(values)} do not match {list(names)}: "
                "give one value per name"
            )
        return [float(values[n]) for n in names]
    if len(values) != len(names):
        raise ConfigError(
            f"{setting}={list(values)} has {len(values)} values but there are {len(names)} "
            f"({list(names)}): give one value each"
        )
    return [float(v) for v in values]


def numbers_of(value: Any) -> list[Any]:
    """The values a setting holds: a number or string itself, a list's or a mapping's items;
    none for None."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return list(value.values())
    return list(value) if isinstance(value, (list, tuple)) else [value]


GRAMIAN_BLOCK = 8192  # columns per float64 block of `float64_gramian`
# of the largest gradient's norm: the shortest length a float64 Gramian resolves (√ε ≈ 1.5e-8)
PRECISION = 3e-8


class Weighting(nn.Module):
    """Base class of every strategy: holds the loss terms; learned values are parameters.

    `learns` marks the terms whose scale a strategy may learn: not those whose loss already
    learns its own per-sample noise (Gaussian/Laplace/β-NLL), for which a second, task-level σ
    is not identifiable and a negative NLL would drive it without bound. Such terms keep
    weight 1 under the learned-scale strategies.
    """

    level: Level | None = None
    RANGES: ClassVar[Mapping[str, Range]] = {}
    # why runs of this strategy cannot be trained stacked (mtltrain.stacking) besides its
    # combining per-task gradients where it is not `loss_based`; "" where nothing else keeps it
    unstackable: ClassVar[str] = ""
    # `contributions` takes each term from its loss and the strategy's tensors elementwise, so
    # stacked runs' [N, K] losses and [N, K] tensors go through it at once (else it is vmapped)
    elementwise: ClassVar[bool] = False
    # `observe` reads the step's outputs and targets, not only its losses (DTP's KPIs)
    observes_predictions: ClassVar[bool] = False
    # the batches a step needs besides its own, each "train" or "validation" (see the module)
    extra_batches: ClassVar[tuple[BatchSource, ...]] = ()

    @classmethod
    def loss_based(cls, settings: Mapping[str, Any]) -> bool:
        """Whether the strategy built with `settings` (every one: the defaults where a config
        leaves them out) weighs the losses, not their gradients (its `level` is then None):
        what a config is judged by before anything is built (an inner strategy of CR-MOGM,
        stacking). By default the class's `level` says."""
        return cls.level is None

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """The settings against RANGES, before any data is loaded (the config check calls
        this, and so does the constructor): every value of a setting (a number, the numbers of
        a list or mapping, a string) must pass its check."""
        for name, (allowed, words) in cls.RANGES.items():
            value = settings.get(name)
            if not all(allowed(v) for v in numbers_of(value)):
                raise ConfigError(f"weighting.{name}={value!r} is not allowed: {words}")

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        super().__init__()
        self.terms = tuple(terms)
        self.names = tuple(t.name for t in terms)
        self.register_buffer("learns", torch.tensor([not t.heteroscedastic for t in terms]))
        self.all_learn = not any(t.heteroscedastic for t in terms)

    def where_learned(self, learned: Tensor, fixed: Tensor | float) -> Tensor:
        """`learned` for the terms whose scale is learned, `fixed` for the others."""
        return learned if self.all_learn else torch.where(self.learns, learned, fixed)

    def require_nonnegative_losses(self, why: str) -> None:
        """Refuse terms whose loss can be negative (the NLLs), naming the first and `why`."""
        bad = next((t for t in self.terms if not t.nonnegative), None)
        if bad is not None:
            raise ConfigError(
                f"{type(self).__name__} {why}, which needs losses ≥ 0, but term {bad.name} "
                f"({bad.loss}) can be negative: use a loss such as mse for task {bad.task}, "
                "or another strategy"
            )

    def run_warnings(self, epochs: int) -> list[str]:
        """What a run of `epochs` epochs is warned of before it trains, a line each (settings
        that leave a part of the strategy unused in so short a run); by default nothing."""
        return []

    # -- hooks, in the order of a step ---------------------------------------------------

    def setup(self, model: MultiTaskNet) -> None:
        """Before training. A gradient-based strategy refuses a model without shared layers."""
        if self.level is not None and not has_shared_part(model):
            raise ConfigError(
                f"{type(self).__name__} combines the task gradients of shared layers, but the "
                f"model {type(model).__name__} has no shared parameters: choose a model with a "
                "shared encoder, or a loss-based strategy"
            )

    def observe(self, step: Step) -> None:
        """See the step before its backward pass; by default, nothing to do."""

    def contributions(self, losses: Tensor) -> Tensor:
        """Each term's share of the total loss, in term order (loss-based strategies)."""
        return self.weights() * losses

    def aggregate(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        """Gradient-based strategies: the combined gradient of the K × D `jacobian` of
        `contributions` (its rows in term order) and the weight each row got; `at` are the
        tensors the Jacobian was taken at (the features or shared parameters), in order."""
        raise NotImplementedError(f"{type(self).__name__} is loss-based: it aggregates nothing")

    def observe_extra(self, jacobians: Sequence[Tensor]) -> None:
        """The K × D Jacobian of each extra batch's contributions (in `extra_batches` order)
        at the shared parameters, before `aggregate`; by default, nothing to do."""

    def reuses_weights(self) -> bool:
        """Gradient-based strategies, once a step: whether this step combines the task
        gradients with the last `weights()` instead of computing new ones; by default never."""
        return False

    def after_step(self, step: Step, recompute: Callable[[Step], Tensor]) -> None:
        """After the optimizer step; `recompute(step)` gives the batch's losses now."""

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """After epoch `epoch` (counted from 0) with the mean of its term losses."""

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The strategy's own optimizers (their parameters are not the model optimizer's)."""
        return []

    def model_optimizer_parameters(self) -> list[nn.Parameter]:
        """The strategy's parameters that the model's optimizer trains (σ, c): those that no
        optimizer of `optimizers()` owns."""
        owned = {id(p) for opt in self.optimizers() for g in opt.param_groups for p in g["params"]}
        return [p for p in self.parameters() if id(p) not in owned]

    def weights(self) -> Tensor:
        """The multiplier each term's loss gets now, as a detached vector in term order."""
        raise NotImplementedError

    def report(self) -> dict[str, Tensor]:
        """Quantities to log, each a detached vector in term order or a 0-d tensor; "weight"
        always."""
        return {"weight": self.weights()}


class GradientWeighting(Weighting):
    """Base class of the strategies that combine the task gradients of the shared part.

    The engine differentiates `contributions` (the raw losses unless a strategy scales them
    first) with respect to the shared parameters (`level = "parameters"`) or the shared
    representation (`"representation"`), and hands the K × D Jacobian to `aggregate`. A
    strategy whose direction is a weighted sum of the rows defines `gramian_weights(M, losses)`
    of the Gramian M = J·Jᵀ, computed in float64 on the host; the direction is then Σ_k w_k·g_k.
    One that needs the rows themselves (elementwise masks, moving averages) overrides `combine`.
    The task heads get their own, unweighted gradients. The last weights are kept in the
    buffer `weight` (logged as "weight", uniform 1/K before the first step), the norm of the
    last direction in `direction_norm` (0 at a point where the tasks' gradients cancel). A
    Jacobian that is not finite gives a NaN direction and leaves both as they were. A strategy
    that solves a problem (`solves = True`) counts the solves that stopped short of their
    optimality test in `unsolved` (logged as "solver_unconverged") with `record`.

    `every` = n > 1 (the setting `weighting.every`, as PSMGD): the weights are computed on
    every n-th step (the first included) and reused on the steps between, where the engine
    takes no Jacobian, only the gradient of Σ_k w_k·contributions_k (the heads still get their
    own, unweighted gradients); the steps since the weights were computed are the buffer
    `weight_age` (logged as "weight_age"), so a resumed run recomputes when the run left alone
    would; a recomputation whose weights are not finite (a skipped step) is taken again on the
    next step. Only for a direction Σ_k w_k·g_k (`weighted_rows`).
    """

    level: Level | None = "parameters"
    solves: ClassVar[bool] = False
    # the direction is Σ_k weight_k·row_k of this step's Jacobian (not so: masks, averages)
    weighted_rows: ClassVar[bool] = True

    def __init__(self, terms: Sequence[LossTerm], every: int = 1) -> None:
        super().__init__(terms)
        GradientWeighting.check_settings({"every": every})
        self.every = every
        self.register_buffer("weight", torch.full((len(terms),), 1.0 / len(terms)))
        self.register_buffer("direction_norm", torch.zeros(()))
        self.register_buffer("unsolved", torch.zeros((), dtype=torch.long))
        if every > 1:  # a run that computes the weights every step keeps the state it had
            self.register_buffer("weight_age", torch.zeros((), dtype=torch.long))

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        super().check_settings(settings)
        every = settings.get("every", 1)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(
                f"weighting.every={every!r} is not allowed: give a whole number ≥ 1, the steps "
                "between recomputations of the weights (1: every step)"
            )

    def setup(self, model: MultiTaskNet) -> None:
        super().setup(model)
        if self.every > 1 and (self.level is None or not self.weighted_rows):
            raise ConfigError(
                f"weighting.every={self.every} is not allowed for {type(self).__name__} "
                + (
                    "as set up, which weighs the losses, not their gradients: use every=1"
                    if self.level is None
                    else "whose direction is not a weighted sum of the task gradients, so "
                    "there are no weights to reuse: use every=1"
                )
            )

    def reuses_weights(self) -> bool:
        """Whether this step reuses the last weights (`every`); counts the step."""
        if self.every == 1:
            return False
        reuse = int(self.weight_age) % self.every != 0
        self.weight_age += 1
        return reuse

    def contributions(self, losses: Tensor) -> Tensor:
        return losses

    def aggregate(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        direction, weights = self.combine(jacobian, losses.detach(), at)
        if bool(torch.isfinite(weights).all()):
            self.weight.copy_(weights)
            self.direction_norm.copy_(direction.norm())
        elif self.every > 1:  # no weights to reuse were computed: the next step computes them
            self.weight_age.zero_()
        return direction, weights

    def combine(
        self, jacobian: Tensor, losses: Tensor, at: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        """The direction and the weight of each row: by default Σ_k w_k·g_k with the weights
        `gramian_weights` gives; NaN for a Gramian that is not finite."""
        gramian = float64_gramian(jacobian).cpu()
        if not bool(torch.isfinite(gramian).all()):
            weights = torch.full((len(self.terms),), torch.nan)
        else:
            weights = self.gramian_weights(gramian, losses.double().cpu())
        weights = weights.to(jacobian)
        return weights @ jacobian, weights

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The weight of each task gradient, from their float64 Gramian and losses (on the host)."""
        raise NotImplementedError

    def record(self, converged: bool) -> None:
        """Count a solve that stopped before its optimality test passed."""
        if not converged:
            self.unsolved += 1

    def weights(self) -> Tensor:
        return self.weight.clone()

    def report(self) -> dict[str, Tensor]:
        report = {"weight": self.weights(), "direction_norm": self.direction_norm.clone()}
        if self.solves:
            report["solver_unconverged"] = self.unsolved.clone()
        if self.every > 1:
            report["weight_age"] = (self.weight_age - 1) % self.every
        return report


class Seeded:
    """For a strategy that draws random numbers (put first among its bases): a generator of its
    own, seeded by `seed_draws(seed)` and saved with the run, so a resumed run draws what the
    run left alone would have drawn."""

    generator: torch.Generator

    def seed_draws(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def order(self, k: int) -> list[int]:
        """A random order of range(k)."""
        return torch.randperm(k, generator=self.generator).tolist()

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def float64_gramian(jacobian: Tensor) -> Tensor:
    """J·Jᵀ in float64; on the CPU a block of columns at a time, whose float64 copy stays in
    the cache (1.7× faster at 10⁶ columns than converting J whole)."""
    if jacobian.device.type != "cpu":
        rows = jacobian.double()
        return rows @ rows.T
    gramian = jacobian.new_zeros(len(jacobian), len(jacobian), dtype=torch.float64)
    for block in jacobian.split(GRAMIAN_BLOCK, dim=1):
        rows = block.double()
        gramian.addmm_(rows, rows.T)
    return gramian


def float64_cross_gramian(left: Tensor, right: Tensor) -> Tensor:
    """A·Bᵀ in float64 of two K × D Jacobians (of two batches), a block of columns at a time
    on the CPU, as `float64_gramian`."""
    if left.device.type != "cpu":
        return left.double() @ right.double().T
    cross = left.new_zeros(len(left), len(right), dtype=torch.float64)
    blocks = zip(left.split(GRAMIAN_BLOCK, 1), right.split(GRAMIAN_BLOCK, 1), strict=True)
    for a, b in blocks:
        cross.addmm_(a.double(), b.double().T)
    return cross


def resolved_rows(gramian: Tensor, floor: float) -> Tensor:
    """Which gradients are not zero to a strategy: norm above `floor` of the largest (the
    float64 ε for one that uses directions only, whose inner products stay accurate for any
    nonzero gradient; PRECISION for one that uses lengths of combinations)."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    return norms > floor * float(norms.max()) if float(norms.max()) > 0 else norms > 0
