"""Task losses, and the named loss terms that a weighting strategy weighs.

A task has one or more losses; each (task, loss) pair is a loss term. A task with one loss
gives a term named after the task; a task with several gives `<task>_<loss>` terms, so "one
task, two terms" and "two tasks" reach the weighting strategy in the same form.

Heads of heteroscedastic tasks emit `MeanLogVar(mean, log_var)`, log_var = log σ²(x).

Every loss but Dice is the mean of a loss per element; it takes `reduction="none"` for those
values, which `job_losses` averages per job for a stack of jobs (`mtltrain.loop._stacked`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mtltrain.errors import ConfigError
from mtltrain.tasks import TaskKind, TaskSpec


class MeanLogVar(NamedTuple):
    """A heteroscedastic prediction: the mean and s = log σ² per sample and output."""

    mean: Tensor
    log_var: Tensor

    @classmethod
    def split(cls, output: Tensor, dim: int = 1) -> MeanLogVar:
        """A head's output of 2·k values per sample (along `dim`): the first k the mean, the
        rest s."""
        return cls(*output.chunk(2, dim=dim))


GAUSSIAN_VAR_FLOOR = 1e-6  # F.gaussian_nll_loss's eps


def point(output: Tensor | MeanLogVar) -> Tensor:
    """The point prediction of a head: its mean where it also predicts a variance."""
    return output.mean if isinstance(output, MeanLogVar) else output


def detach(output: Tensor | MeanLogVar) -> Tensor | MeanLogVar:
    """A head's output cut from the graph."""
    if isinstance(output, MeanLogVar):
        return MeanLogVar(output.mean.detach(), output.log_var.detach())
    return output.detach()


Heads = Mapping[str, Tensor | MeanLogVar]


def map_heads(fn: Callable[..., Tensor], *heads: Heads) -> dict[str, Tensor | MeanLogVar]:
    """{name: `fn` of that name's outputs in every one of `heads`}, a MeanLogVar's mean and
    log_var each apart (the heads' outputs, or targets, of a step or of a stack of jobs)."""

    def one(*outputs: Tensor | MeanLogVar) -> Tensor | MeanLogVar:
        if isinstance(outputs[0], MeanLogVar):
            return MeanLogVar(*map(fn, *outputs))
        return fn(*outputs)

    return {name: one(*(h[name] for h in heads)) for name in heads[0]}


def head_tensors(heads: Heads) -> list[Tensor]:
    """Every tensor of the heads' outputs."""
    return [t for out in heads.values() for t in (out if isinstance(out, MeanLogVar) else [out])]


Reduction = Literal["mean", "none"]


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r}: choose 'mean' or 'none'")
    return values.mean() if reduction == "mean" else values


def mse(output: Tensor | MeanLogVar, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """mean (y − ŷ)²."""
    return F.mse_loss(point(output), target, reduction=reduction)


def cross_entropy(output: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """mean −log softmax(f)_y, over samples (and pixels)."""
    return F.cross_entropy(output, target, reduction=reduction)


def focal(
    output: Tensor, target: Tensor, focal_gamma: float, reduction: Reduction = "mean"
) -> Tensor:
    """Example-level focal loss, mean −(1 − p_y)^γ0·log p_y (Lin et al. 2017; used by DTP)."""
    log_p = F.log_softmax(output, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    return _reduce(-((1 - log_p.exp()) ** focal_gamma) * log_p, reduction)


def dice(output: Tensor, target: Tensor, dice_smooth: float) -> Tensor:
    """Soft Dice loss of the foreground (class 1): 1 − (2·Σp·t + smooth)/(Σp + Σt + smooth)."""
    p = F.softmax(output, dim=1)[:, 1]
    t = (target == 1).to(p.dtype)
    return 1 - (2 * (p * t).sum() + dice_smooth) / (p.sum() + t.sum() + dice_smooth)


def gaussian_nll(output: MeanLogVar, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Full Gaussian NLL, mean ½·(log σ² + (y − μ)²/σ² + log 2π) (Kendall & Gal 2017)."""
    return _reduce(_gaussian_nll(output.mean, output.log_var.exp(), target), reduction)


def _gaussian_nll(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    """Per sample ½·(log σ² + (y − μ)²/σ² + log 2π), σ² at least 1e-6 in value with its
    gradient passed through, as F.gaussian_nll_loss does (without its data-dependent check of
    σ², which vmap cannot run)."""
    var = var + (var.clamp_min(GAUSSIAN_VAR_FLOOR) - var).detach()
    return 0.5 * (var.log() + (target - mean) ** 2 / var) + 0.5 * math.log(2 * math.pi)


def laplace_nll(output: MeanLogVar, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Laplace NLL, mean |y − μ|/b + log 2b, with scale b = σ/√2 (variance σ² = 2b²)."""
    log_b = 0.5 * output.log_var - 0.5 * math.log(2)
    values = (target - output.mean).abs() * torch.exp(-log_b) + log_b + math.log(2)
    return _reduce(values, reduction)


def beta_nll(
    output: MeanLogVar, target: Tensor, beta: float, reduction: Reduction = "mean"
) -> Tensor:
    """β-NLL (Seitzer et al., ICLR 2022): mean stop-grad(σ²)^β · Gaussian NLL per sample."""
    var = output.log_var.exp()
    return _reduce(var.detach() ** beta * _gaussian_nll(output.mean, var, target), reduction)


@dataclass(frozen=True)
class Loss:
    """A loss function, the task kinds it fits, and the `loss.*` settings it takes.

    `heteroscedastic`: it reads a predicted σ(x); such a loss is a negative log-likelihood
    and can be negative, every other loss here is ≥ 0. `per_element`: it is the mean of a
    loss per element, which `fn(…, reduction="none")` returns (for cross-entropy: while no
    target is ignored, which no data set here does).
    """

    fn: Callable[..., Tensor]
    kinds: tuple[TaskKind, ...]
    heteroscedastic: bool = False
    settings: tuple[str, ...] = ()
    per_element: bool = True


LOSSES: dict[str, Loss] = {
    "mse": Loss(mse, ("regression",)),
    "cross_entropy": Loss(cross_entropy, ("classification", "segmentation")),
    "focal": Loss(focal, ("classification", "segmentation"), settings=("focal_gamma",)),
    "dice": Loss(dice, ("segmentation",), settings=("dice_smooth",), per_element=False),
    "gaussian_nll": Loss(gaussian_nll, ("regression",), heteroscedastic=True),
    "laplace_nll": Loss(laplace_nll, ("regression",), heteroscedastic=True),
    "beta_nll": Loss(beta_nll, ("regression",), heteroscedastic=True, settings=("beta",)),
}


def check_losses(task: str, kind: TaskKind, losses: Sequence[str]) -> None:
    """Raise a ConfigError unless `losses` is a non-empty list of losses that fit `kind`."""
    fitting = [name for name, loss in LOSSES.items() if kind in loss.kinds]
    bad = [name for name in losses if name not in fitting]
    if bad or not losses or len(set(losses)) != len(losses):
        raise ConfigError(
            f"dataset.losses.{task}={list(losses)} is not allowed: a {kind} task takes "
            f"distinct losses among {fitting}"
        )


@dataclass(frozen=True)
class LossTerm:
    """One loss of one task, with its settings bound; `kind` is the task's."""

    name: str
    task: str
    loss: str
    kind: TaskKind
    heteroscedastic: bool
    fn: Callable[..., Tensor]  # (output, target), and reduction= where `per_element`

    @property
    def nonnegative(self) -> bool:
        """Whether the loss is ≥ 0 (strategies that take its log or ratios need that)."""
        return not LOSSES[self.loss].heteroscedastic


def loss_terms(tasks: Sequence[TaskSpec], settings: object) -> tuple[LossTerm, ...]:
    """The loss terms of `tasks`, in task order, with each loss's `loss.*` settings bound
    (`settings`: a `schema.LossConfig`)."""

    def bind(name: str) -> Callable[..., Tensor]:
        loss = LOSSES[name]
        return functools.partial(loss.fn, **{k: getattr(settings, k) for k in loss.settings})

    return tuple(
        LossTerm(
            t.name if len(t.losses) == 1 else f"{t.name}_{loss}",
            t.name,
            loss,
            t.kind,
            LOSSES[loss].heteroscedastic,
            bind(loss),
        )
        for t in tasks
        for loss in t.losses
    )


def compute_losses(
    terms: Sequence[LossTerm],
    outputs: Mapping[str, Tensor | MeanLogVar],
    targets: Mapping[str, Tensor],
) -> Tensor:
    """Each term's loss on a batch, as one vector in term order."""
    return torch.stack([t.fn(outputs[t.task], targets[t.task]) for t in terms])


def all_per_element(terms: Sequence[LossTerm]) -> bool:
    """Whether every term is the mean of a loss per element (`job_losses` can take them)."""
    return all(LOSSES[t.loss].per_element for t in terms)


def job_losses(
    terms: Sequence[LossTerm],
    outputs: Mapping[str, Tensor | MeanLogVar],
    targets: Mapping[str, Tensor],
) -> Tensor:
    """[jobs, terms]: `compute_losses` of each job, for outputs and targets stacked over jobs
    (dimension 0; terms that are `per_element`): each term's loss per element of every job at
    once, averaged per job."""

    def jobs_as_samples(t: Tensor) -> Tensor:
        return t.flatten(0, 1)

    def per_job(term: LossTerm) -> Tensor:
        output = outputs[term.task]
        flat = (
            MeanLogVar(*map(jobs_as_samples, output))
            if isinstance(output, MeanLogVar)
            else jobs_as_samples(output)
        )
        values = term.fn(flat, jobs_as_samples(targets[term.task]), reduction="none")
        return values.reshape(len(point(output)), -1).mean(1)

    return torch.stack([per_job(t) for t in terms], 1)
