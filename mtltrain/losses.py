"""Task losses, and the named loss terms that a weighting strategy weighs.

A task has one or more losses; each (task, loss) pair is a loss term. A task with one loss
gives a term named after the task; a task with several gives `<task>_<loss>` terms, so "one
task, two terms" and "two tasks" reach the weighting strategy in the same form.

Heads of heteroscedastic tasks emit `MeanLogVar(mean, log_var)`, log_var = log σ²(x).

Every built-in loss but Dice is the mean of a loss per element; it takes `reduction="none"` for
those values, which `job_losses` averages per job for a stack of jobs (`mtltrain.loop._stacked`).

A loss may also be a callable the config builds (`_target_`, `_partial_: true`), called as
`fn(output, target)` -> scalar on the head's point prediction; its term is named after its
function (`loss_name`). It counts as ≥ 0, and as per element where it takes `reduction=`.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mtltrain.errors import ConfigError, DataError
from mtltrain.lean_torch import mse_loss
from mtltrain.tasks import TASK_KINDS, LossChoice, TaskKind, TaskSpec


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
    return mse_loss(point(output), target, reduction)


def cross_entropy(output: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """mean −log softmax(f)_y, over samples (and pixels)."""
    return F.cross_entropy(output, target, reduction=reduction)


def focal(
    output: Tensor, target: Tensor, focal_gamma: float, reduction: Reduction = "mean"
) -> Tensor:
    """Example-level focal loss, mean −(1 − p_y)^γ0·log p_y (Lin et al. 2017; used by DTP)."""
    log_p = F.log_softmax(output, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    return _reduce(-((1 - log_p.exp()) ** focal_gamma) * log_p, reduction)


def l1(output: Tensor | MeanLogVar, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """mean |y − ŷ|."""
    return F.l1_loss(point(output), target, reduction=reduction)


def huber(
    output: Tensor | MeanLogVar, target: Tensor, huber_delta: float, reduction: Reduction = "mean"
) -> Tensor:
    """mean of ½(y − ŷ)² where |y − ŷ| ≤ δ, else δ·(|y − ŷ| − ½δ) (δ: `loss.huber_delta`)."""
    return F.huber_loss(point(output), target, reduction=reduction, delta=huber_delta)


def cosine(output: Tensor | MeanLogVar, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """mean over samples of 1 − cos(ŷ, y), the cosine along the feature dimension (1)."""
    return _reduce(1 - F.cosine_similarity(point(output), target, dim=1), reduction)


def bce(output: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """mean −[y·log σ(f) + (1 − y)·log(1 − σ(f))] over samples (and labels), f the logits
    (shaped as the 0/1 targets)."""
    logits = output.reshape(target.shape)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction=reduction)


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


SHAPED_KINDS = ("regression", "depth", "normals")  # targets shaped as the point prediction
IGNORE_LABEL = -1  # a semantic label that no loss or metric reads (NYUv2's unlabelled pixels)


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Σ values·valid / Σ valid (0 where no value is valid, with zero gradient)."""
    return (values * valid).sum() / valid.sum().clamp_min(1)


def masked_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """mean −log softmax(f)_y over the pixels whose label y ≠ −1 (`IGNORE_LABEL`)."""
    valid = target != IGNORE_LABEL
    values = F.cross_entropy(output, target.clamp_min(0), reduction="none")
    return _masked_mean(values, valid)


def valid_pixels(target: Tensor) -> Tensor:
    """[N, 1, H, W]: the pixels of an [N, C, H, W] depth or normal map that hold a value (not
    all C channels 0)."""
    return (target != 0).any(dim=1, keepdim=True)


def masked_l1(output: Tensor, target: Tensor) -> Tensor:
    """mean |y − ŷ| over the valid pixels (`valid_pixels`: depth ≠ 0)."""
    return _masked_mean((point(output) - target).abs(), valid_pixels(target))


def masked_cosine(output: Tensor, target: Tensor) -> Tensor:
    """mean 1 − cos(ŷ, y) over the valid pixels (`valid_pixels`: normal ≠ 0), the cosine
    along the channels."""
    cos = F.cosine_similarity(point(output), target, dim=1).unsqueeze(1)
    return _masked_mean(1 - cos, valid_pixels(target))


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
    "l1": Loss(l1, ("regression",)),
    "huber": Loss(huber, ("regression",), settings=("huber_delta",)),
    "cosine": Loss(cosine, ("regression",)),
    "bce": Loss(bce, ("binary", "multilabel")),
    "cross_entropy": Loss(cross_entropy, ("classification", "segmentation")),
    "focal": Loss(focal, ("classification", "segmentation"), settings=("focal_gamma",)),
    "dice": Loss(dice, ("segmentation",), settings=("dice_smooth",), per_element=False),
    "masked_cross_entropy": Loss(masked_cross_entropy, ("semantic",), per_element=False),
    "masked_l1": Loss(masked_l1, ("depth",), per_element=False),
    "masked_cosine": Loss(masked_cosine, ("normals",), per_element=False),
    "gaussian_nll": Loss(gaussian_nll, ("regression",), heteroscedastic=True),
    "laplace_nll": Loss(laplace_nll, ("regression",), heteroscedastic=True),
    "beta_nll": Loss(beta_nll, ("regression",), heteroscedastic=True, settings=("beta",)),
}


@dataclass(frozen=True)
class CustomLoss:
    """A loss of one's own, `fn(output, target) -> loss`, with what mtltrain cannot read off
    it: `nonnegative=False` for a loss that can be negative (a log-likelihood), which the
    strategies that take logs or ratios of losses then refuse in one line. A callable given
    without this wrapper is taken to be ≥ 0."""

    fn: Callable[..., Tensor]
    nonnegative: bool = True

    def __call__(self, output: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(output, target, **kwargs)


def loss_name(loss: LossChoice) -> str:
    """A loss's name in term names and logs: the built-in's name, or the callable's function
    name (of its function for a partial, of its class for a callable object)."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, CustomLoss):
        return loss_name(loss.fn)
    fn = loss.func if isinstance(loss, functools.partial) else loss
    return getattr(fn, "__name__", type(fn).__name__)


def takes_reduction(fn: Callable[..., Tensor]) -> bool:
    """Whether a custom loss takes `reduction=` (then `reduction="none"` gives its values per
    element, as torch's losses do) and, where the config binds it, binds "mean" (a sum bound
    there is not a mean of its per-element values)."""
    if isinstance(fn, CustomLoss):
        return takes_reduction(fn.fn)
    bound = fn.keywords.get("reduction", "mean") if isinstance(fn, functools.partial) else "mean"
    if bound != "mean":
        return False
    try:
        return "reduction" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def check_losses(task: str, kind: TaskKind, losses: Sequence[LossChoice]) -> None:
    """Raise a ConfigError unless `losses` is a non-empty list of distinct losses that fit
    `kind`: built-in names, or callables (`_target_` nodes)."""
    if kind not in TASK_KINDS:
        raise ConfigError(
            f"dataset: task {task}'s kind {kind!r} is not allowed: choose one of {list(TASK_KINDS)}"
        )
    fitting = [name for name, loss in LOSSES.items() if kind in loss.kinds]
    bad = [n for n in losses if not callable(n) and n not in fitting]
    names = [loss_name(n) for n in losses]
    if bad or not losses or len(set(names)) != len(names):
        raise ConfigError(
            f"dataset.losses.{task}={names} is not allowed: a {kind} task takes "
            f"distinct losses among {fitting}, or callables (output, target) -> loss given by "
            "_target_ (with _partial_: true)"
        )


@dataclass(frozen=True)
class LossTerm:
    """One loss of one task, with its settings bound; `kind` is the task's, `loss` the loss's
    name (`loss_name`); `per_element`: `fn` takes reduction="none" (see `Loss`)."""

    name: str
    task: str
    loss: str
    kind: TaskKind
    heteroscedastic: bool
    fn: Callable[..., Tensor]  # (output, target), and reduction= where `per_element`
    per_element: bool = True
    signed: bool = False  # a custom loss that can be negative (`CustomLoss(nonnegative=False)`)

    @property
    def nonnegative(self) -> bool:
        """Whether the loss is ≥ 0 (strategies that take its log or ratios need that): every
        built-in loss but the heteroscedastic NLLs; a custom callable unless it says so."""
        return not (self.heteroscedastic or self.signed)


def loss_terms(tasks: Sequence[TaskSpec], settings: object) -> tuple[LossTerm, ...]:
    """The loss terms of `tasks`, in task order, with each built-in loss's `loss.*` settings
    bound (`settings`: a `schema.LossConfig`); a term is named after its task, or
    `<task>_<loss name>` where the task has several losses."""

    def term(task: TaskSpec, choice: LossChoice) -> LossTerm:
        name = loss_name(choice)
        full = task.name if len(task.losses) == 1 else f"{task.name}_{name}"
        if callable(choice):
            fn = functools.partial(_custom, choice)
            signed = isinstance(choice, CustomLoss) and not choice.nonnegative
            return LossTerm(
                full, task.name, name, task.kind, False, fn, takes_reduction(choice), signed
            )
        loss = LOSSES[choice]
        bound = functools.partial(loss.fn, **{k: getattr(settings, k) for k in loss.settings})
        return LossTerm(
            full, task.name, name, task.kind, loss.heteroscedastic, bound, loss.per_element
        )

    return tuple(term(t, choice) for t in tasks for choice in t.losses)


def _custom(
    fn: Callable[..., Tensor], output: Tensor | MeanLogVar, target: Tensor, **kw: Any
) -> Tensor:
    """A custom loss on the head's point prediction."""
    return fn(point(output), target, **kw)


def compute_losses(
    terms: Sequence[LossTerm],
    outputs: Mapping[str, Tensor | MeanLogVar],
    targets: Mapping[str, Tensor],
) -> Tensor:
    """Each term's loss on a batch, as one vector in term order."""
    return torch.stack([t.fn(*_checked(t, outputs, targets)) for t in terms])


def _checked(
    term: LossTerm, outputs: Mapping[str, Tensor | MeanLogVar], targets: Mapping[str, Tensor]
) -> tuple[Tensor | MeanLogVar, Tensor]:
    """The term's output and target; a DataError where a regression target is not shaped as
    its point prediction (torch would broadcast [N] against [N, 1] to [N, N], silently)."""
    output, target = outputs[term.task], targets[term.task]
    if term.kind in SHAPED_KINDS and point(output).shape != target.shape:
        raise DataError(
            f"dataset: task {term.task}'s targets are {list(target.shape)} per batch, which is "
            f"not allowed: its head predicts {list(point(output).shape)}; give each sample's "
            "target the shape of its prediction"
        )
    return output, target


def all_per_element(terms: Sequence[LossTerm]) -> bool:
    """Whether every term is the mean of a loss per element (`job_losses` can take them)."""
    return all(t.per_element for t in terms)


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
        output, target = _checked(term, outputs, targets)
        flat = (
            MeanLogVar(*map(jobs_as_samples, output))
            if isinstance(output, MeanLogVar)
            else jobs_as_samples(output)
        )
        values = term.fn(flat, jobs_as_samples(target), reduction="none")
        return values.reshape(len(point(output)), -1).mean(1)

    return torch.stack([per_job(t) for t in terms], 1)
