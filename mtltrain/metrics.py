"""Task metrics, accumulated on the device over batches and read once per evaluation.

Each task reports the metrics `dataset.metrics.<task>` lists, else the built-ins of its kind
(its scorer's, then its `TORCHMETRICS_BUILTINS`); the first is the task's main metric. The
kind's scorer keeps running sums as one tensor and turns sums into metrics with tensor
operations, so the training loop never waits on the device to score a batch. Torchmetrics
metrics (the binary and multi-label kinds' auroc and f1, and any a config names) accumulate on
the device too and are computed with the rest; they score evaluations (validation, test, the
final train split), not the running train metrics between evaluations, and under torchrun
torchmetrics adds up their states over ranks itself (through torch.distributed's default group).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtltrain.distributed import ONE_PROCESS, Ranks
from mtltrain.errors import ConfigError
from mtltrain.losses import MeanLogVar, point, valid_pixels
from mtltrain.tasks import DIRECTION, MetricChoice, TaskKind, TaskSpec

if TYPE_CHECKING:
    from torchmetrics import Metric

    from mtltrain.data.base import Split


def calibration_levels(like: Tensor) -> Tensor:
    """The central-interval levels p = 0.05, 0.10, …, 0.95 the calibration error looks at."""
    return torch.arange(1, 20, device=like.device, dtype=like.dtype) / 20


def standardized_error(output: MeanLogVar, target: Tensor) -> Tensor:
    """z = |y − μ|/σ per value, flattened."""
    sq = (target - output.mean.float()).square()
    return (sq * torch.exp(-output.log_var.float())).sqrt().flatten()


def inside_counts(z: Tensor) -> Tensor:
    """How many z fall inside each central interval: z ≤ Φ⁻¹((1 + p)/2), p at each level."""
    z_levels = torch.special.ndtri((1 + calibration_levels(z)) / 2)
    return (z[:, None] <= z_levels[None, :]).sum(0).float()


class Scorer:
    """Turns (output, target) batches into running sums on the device, and sums into metrics.

    `batch_sums` returns a vector of sums over the batch; the number of target values
    (`target.numel()`), which the host knows, is counted apart, so scoring a batch never
    copies to or from the device.
    """

    names: tuple[str, ...] = ()

    def batch_sums(
        self, output: Tensor | MeanLogVar, target: Tensor, noise_std: Tensor | None
    ) -> Tensor:
        raise NotImplementedError

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def score(
        self, output: Tensor | MeanLogVar, target: Tensor, ranks: Ranks = ONE_PROCESS
    ) -> dict[str, Tensor]:
        """Metrics of one batch (under torchrun: of the global batch whose shard this rank
        holds), as tensors on the device."""
        sums = self.batch_sums(output, target, None)
        if ranks.size == 1:
            return self.finish(sums, target.numel())
        (total,), (count,) = added_over_ranks(ranks, [sums], [target.numel()])
        return self.finish(total, count)


class ClassificationScorer(Scorer):
    """accuracy = correct / samples."""

    names = ("accuracy",)

    def batch_sums(self, output: Tensor, target: Tensor, noise_std: Tensor | None) -> Tensor:
        return (output.argmax(dim=1) == target).sum().reshape(1)

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        return {"accuracy": sums[0] / count}


class BinaryScorer(Scorer):
    """accuracy = correct / (samples × labels), a logit > 0 predicting 1 (binary and
    multi-label tasks: for multi-label, the mean of the labels' accuracies)."""

    names = ("accuracy",)

    def batch_sums(self, output: Tensor, target: Tensor, noise_std: Tensor | None) -> Tensor:
        return ((output.reshape(target.shape) > 0) == (target > 0.5)).sum().reshape(1)

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        return {"accuracy": sums[0] / count}


class SegmentationScorer(Scorer):
    """Foreground (class 1) over all pixels of the split: iou = |P∩T|/|P∪T|,
    dice = 2|P∩T|/(|P| + |T|), accuracy = correct pixels / pixels."""

    names = ("iou", "dice", "accuracy")

    def batch_sums(self, output: Tensor, target: Tensor, noise_std: Tensor | None) -> Tensor:
        pred = output.argmax(dim=1)
        p, t = pred == 1, target == 1
        return torch.stack([(p & t).sum(), p.sum(), t.sum(), (pred == target).sum()])

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        inter, pred, true, correct = sums.unbind()
        return {
            "iou": inter / (pred + true - inter).clamp_min(1),
            "dice": 2 * inter / (pred + true).clamp_min(1),
            "accuracy": correct / count,
        }


class RegressionScorer(Scorer):
    """rmse = sqrt(mse), mse = mean squared error over all predicted values."""

    names = ("rmse", "mse")

    def batch_sums(
        self, output: Tensor | MeanLogVar, target: Tensor, noise_std: Tensor | None
    ) -> Tensor:
        return (point(output).float() - target).square().sum().reshape(1)  # F.mse_loss's value

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        mse = sums[0] / count
        return {"rmse": mse.sqrt(), "mse": mse}


class StandardisedRegressionScorer(Scorer):
    """For targets stored standardised, (y − mean)/std, the errors in the original units:
    mae = std·mean |ŷ − y|, mse = std²·mean (ŷ − y)², rmse = sqrt(mse)."""

    names = ("mae", "rmse", "mse")

    def __init__(self, std: float) -> None:
        self.std = std

    def batch_sums(
        self, output: Tensor | MeanLogVar, target: Tensor, noise_std: Tensor | None
    ) -> Tensor:
        error = point(output).float() - target
        return torch.stack([error.abs().sum(), error.square().sum()])

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        mse = sums[1] / count * self.std**2
        return {"mae": sums[0] / count * self.std, "rmse": mse.sqrt(), "mse": mse}


class HeteroscedasticScorer(Scorer):
    """For a head predicting μ and σ: nll = mean ½(log 2πσ² + (y − μ)²/σ²); rmse;
    coverage_1sigma / coverage_2sigma = fraction with |y − μ| ≤ 1σ / 2σ (0.683 / 0.954 when
    calibrated); calibration_error = mean over p = 0.05, 0.10, …, 0.95 of |p − fraction inside
    the central interval μ ± Φ⁻¹((1 + p)/2)·σ|; sigma_rel_error = mean |σ̂(x) − σ(x)|/σ(x),
    where the data set knows the true σ(x). Targets stored standardised by `std`: nll and rmse
    in the original units (nll + log std, std·rmse); the others do not change with the unit."""

    def __init__(self, knows_sigma: bool, std: float = 1.0) -> None:
        base = ("nll", "rmse", "coverage_1sigma", "coverage_2sigma", "calibration_error")
        self.names = (*base, "sigma_rel_error") if knows_sigma else base
        self.knows_sigma, self.std = knows_sigma, std

    def batch_sums(self, output: MeanLogVar, target: Tensor, noise_std: Tensor | None) -> Tensor:
        mean, log_var = output.mean.float(), output.log_var.float()
        sq = (target - mean).square()
        z = standardized_error(output, target)
        nll = 0.5 * (log_var + sq * torch.exp(-log_var) + math.log(2 * math.pi))
        inside = inside_counts(z)
        sigma_err = (
            ((0.5 * log_var).exp() - noise_std).abs().div(noise_std).sum()
            if self.knows_sigma and noise_std is not None
            else z.new_zeros(())
        )
        head = torch.stack([nll.sum(), sq.sum(), (z <= 1).sum(), (z <= 2).sum(), sigma_err])
        return torch.cat([head.float(), inside])

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        nll, sq, within1, within2, sigma_err = (sums[:5] / count).unbind()
        coverage = sums[5:] / count
        out = {
            "nll": nll + math.log(self.std),
            "rmse": sq.sqrt() * self.std,
            "coverage_1sigma": within1,
            "coverage_2sigma": within2,
            "calibration_error": (coverage - calibration_levels(sums)).abs().mean(),
        }
        if self.knows_sigma:
            out["sigma_rel_error"] = sigma_err
        return out


class SemanticScorer(Scorer):
    """Semantic segmentation over the split's labelled pixels (label ≠ −1), from the confusion
    matrix M (rows: true class, columns: predicted): miou = mean over the classes present
    (true or predicted somewhere, M_c· + M_·c > 0) of M_cc/(M_c· + M_·c − M_cc);
    pixel_accuracy = Σ_c M_cc / Σ M."""

    names = ("miou", "pixel_accuracy")

    def __init__(self, classes: int) -> None:
        self.classes = classes

    def batch_sums(self, output: Tensor, target: Tensor, noise_std: Tensor | None) -> Tensor:
        n = self.classes
        valid = (target >= 0) & (target < n)
        cell = torch.where(valid, target * n + output.argmax(dim=1), n * n)  # n·n: unlabelled
        counts = torch.zeros(n * n + 1, device=target.device, dtype=torch.float64)
        counts.index_add_(0, cell.flatten(), torch.ones_like(cell.flatten(), dtype=counts.dtype))
        return counts[:-1]

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        matrix = sums.reshape(self.classes, self.classes)
        hits = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - hits
        present = union > 0
        iou = torch.where(present, hits / union.clamp_min(1), 0)
        return {
            "miou": iou.sum() / present.sum().clamp_min(1),
            "pixel_accuracy": hits.sum() / matrix.sum().clamp_min(1),
        }


class DepthScorer(Scorer):
    """Over the split's valid pixels (depth d ≠ 0): abs_error = mean |d − d̂|, rel_error =
    mean |d − d̂|/d."""

    names = ("abs_error", "rel_error")

    def batch_sums(self, output: Tensor, target: Tensor, noise_std: Tensor | None) -> Tensor:
        valid = valid_pixels(target)
        error = (point(output).float() - target).abs() * valid
        relative = error / torch.where(valid, target, 1).abs()
        return torch.stack([error.sum(), relative.sum(), valid.sum()]).double()

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        error, relative, valid = sums.unbind()
        return {"abs_error": error / valid.clamp_min(1), "rel_error": relative / valid.clamp_min(1)}


ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees: within_11_25, within_22_5, within_30


def angle_errors(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per pixel of [N, 3, H, W] normal maps: the angle between ŷ and y in degrees,
    acos(cos(ŷ, y)), and whether the pixel is valid (normal ≠ 0), each [N, 1, H, W]."""
    cos = torch.nn.functional.cosine_similarity(point(output).float(), target.float(), dim=1)
    return torch.rad2deg(cos.clamp(-1, 1).acos()).unsqueeze(1), valid_pixels(target)


class NormalScorer(Scorer):
    """Over the split's valid pixels (normal ≠ 0), e the angle between ŷ and y in degrees:
    mean_angle = mean e; within_11_25, within_22_5, within_30 = share of pixels with e < 11.25°,
    22.5°, 30°. (The median, which sums cannot give, is `MedianAngle`.)"""

    names = ("mean_angle", "within_11_25", "within_22_5", "within_30")

    def batch_sums(self, output: Tensor, target: Tensor, noise_std: Tensor | None) -> Tensor:
        angle, valid = angle_errors(output, target)
        within = [((angle < t) & valid).sum() for t in ANGLE_THRESHOLDS]
        return torch.stack([(angle * valid).sum(), *within, valid.sum()]).double()

    def finish(self, sums: Tensor, count: int) -> dict[str, Tensor]:
        *values, valid = sums.unbind()
        shares = [v / valid.clamp_min(1) for v in values]
        return dict(zip(self.names, shares, strict=True))


def scorer_for(task: TaskSpec, knows_sigma: bool = False) -> Scorer:
    """The scorer of `task`'s kind; heteroscedastic regression gets the calibration metrics,
    regression on standardised targets its errors in the original units."""
    if task.kind == "regression" and task.heteroscedastic:
        return HeteroscedasticScorer(knows_sigma, task.target_std or 1.0)
    if task.kind == "regression" and task.target_std is not None:
        return StandardisedRegressionScorer(task.target_std)
    if task.kind == "regression":
        return RegressionScorer()
    return {
        "classification": ClassificationScorer,
        "segmentation": SegmentationScorer,
        "binary": BinaryScorer,
        "multilabel": BinaryScorer,
        "semantic": functools.partial(SemanticScorer, task.out_features),
        "depth": DepthScorer,
        "normals": NormalScorer,
    }[task.kind]()


def _binary_auroc(task: TaskSpec) -> Metric:
    from torchmetrics.classification import BinaryAUROC

    return BinaryAUROC(validate_args=False)


def _binary_f1(task: TaskSpec) -> Metric:
    from torchmetrics.classification import BinaryF1Score

    return BinaryF1Score(validate_args=False)


def _multilabel_f1(task: TaskSpec) -> Metric:
    from torchmetrics.classification import MultilabelF1Score

    return MultilabelF1Score(task.out_features, average="macro", validate_args=False)


def median_angle() -> Metric:
    """The exact median over the split's valid pixels of the angle between predicted and true
    normals, in degrees (the mean of the two middle values for an even count, as NumPy's
    median): a torchmetrics metric that keeps every valid pixel's angle on the device."""
    return _median_angle_class()()


@functools.cache
def _median_angle_class() -> type[Metric]:
    """`MedianAngle`, made on first use (torchmetrics is slow to import)."""
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat

    class MedianAngle(Metric):
        """See `median_angle`; under torchrun the ranks' angles are gathered."""

        higher_is_better = False
        full_state_update = False

        def __init__(self) -> None:
            super().__init__()
            self.add_state("angles", default=[], dist_reduce_fx="cat")

        def update(self, output: Tensor, target: Tensor) -> None:
            angle, valid = angle_errors(output, target)
            self.angles.append(angle[valid])

        def compute(self) -> Tensor:
            angles = dim_zero_cat(self.angles) if self.angles else torch.zeros(0)
            n = angles.numel()
            if n == 0:
                return torch.tensor(float("nan"))
            low = angles.kthvalue((n + 1) // 2).values
            high = angles.kthvalue(n // 2 + 1).values
            return (low + high) / 2

    return MedianAngle


def _median_angle(task: TaskSpec) -> Metric:
    return median_angle()


# the built-in metrics that torchmetrics computes, per kind: exact AUROC, F1 at probability 0.5
# (multi-label: the mean of the labels' F1, "macro"); the exact median angle of normals
TORCHMETRICS_BUILTINS: dict[str, dict[str, Callable[[TaskSpec], Metric]]] = {
    "binary": {"auroc": _binary_auroc, "f1": _binary_f1},
    "multilabel": {"f1": _multilabel_f1},
    "normals": {"median_angle": _median_angle},
}


class CustomMetric:
    """A torchmetrics metric with what the config says of it: its `name` in logs and results
    (default: its class name in snake case, BinaryAUROC → binary_auroc) and whether
    `higher_is_better` (default: the metric's own `higher_is_better`)."""

    def __init__(
        self, metric: Metric, higher_is_better: bool | None = None, name: str | None = None
    ) -> None:
        self.metric = metric
        self.higher_is_better = (
            getattr(metric, "higher_is_better", None) if higher_is_better is None
            else higher_is_better
        )  # fmt: skip
        self.name = name or snake_case(type(metric).__name__)


def snake_case(name: str) -> str:
    """CamelCase → camel_case, acronyms kept whole (BinaryAUROC → binary_auroc)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


@dataclass(frozen=True)
class TaskMetric:
    """One metric a task reports: its name, which way it improves (+1 higher is better, −1
    lower, None: no direction) and, for a torchmetrics metric, what makes an empty one for each
    evaluation (None: the kind's scorer computes it)."""

    name: str
    direction: int | None
    make: Callable[[], Metric] | None = None


def task_metrics(task: TaskSpec, knows_sigma: bool = False) -> tuple[TaskMetric, ...]:
    """The metrics `task` reports, in order: those `task.metrics` lists, else its kind's."""
    made = TORCHMETRICS_BUILTINS.get(task.kind, {})
    builtins = {
        **{n: TaskMetric(n, DIRECTION.get(n)) for n in scorer_for(task, knows_sigma).names},
        **{n: TaskMetric(n, DIRECTION[n], functools.partial(m, task)) for n, m in made.items()},
    }
    if not task.metrics:
        return tuple(builtins.values())
    return tuple(
        builtins[c] if isinstance(c, str) else _custom(c)
        for c in task.metrics
        if not isinstance(c, str) or c in builtins  # sigma_rel_error: where σ(x) is known
    )


def _custom(choice: MetricChoice) -> TaskMetric:
    custom = choice if isinstance(choice, CustomMetric) else CustomMetric(choice)
    direction = None if custom.higher_is_better is None else 1 if custom.higher_is_better else -1
    return TaskMetric(custom.name, direction, custom.metric.clone)


def check_metrics(task: str, kind: TaskKind, heteroscedastic: bool, chosen: Sequence) -> None:
    """Raise a ConfigError unless `chosen` (`dataset.metrics.<task>`) lists distinct metrics:
    built-in names of the task's kind, or torchmetrics metrics whose direction is known."""
    spec = TaskSpec(task, kind, 1, (), heteroscedastic)
    allowed = [m.name for m in task_metrics(spec, knows_sigma=True)]
    where = f"dataset.metrics.{task}"
    for i, choice in enumerate(chosen):
        inner = choice.metric if isinstance(choice, CustomMetric) else choice
        known = choice in allowed if isinstance(choice, str) else _is_torchmetrics(inner)
        if not known:
            raise ConfigError(
                f"{where}[{i}]={choice!r} is not allowed: a {kind} task takes metrics among "
                f"{allowed}, or torchmetrics metrics given by _target_"
            )
        if not isinstance(choice, str) and _custom(choice).direction is None:
            raise ConfigError(
                f"{where}[{i}]={type(inner).__name__} is not allowed: its higher_is_better is "
                "None; wrap it as {_target_: mtltrain.metrics.CustomMetric, metric: {...}, "
                "higher_is_better: true|false}"
            )
    names = [c if isinstance(c, str) else _custom(c).name for c in chosen]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"{where}={names} is not allowed: the metrics' names must be distinct (set a "
            "custom one's with mtltrain.metrics.CustomMetric's name)"
        )


def _is_torchmetrics(value: object) -> bool:
    """Whether `value` is a torchmetrics metric (torchmetrics, slow to import, is imported only
    where a config names one)."""
    from torchmetrics import Metric

    return isinstance(value, Metric)


def metric_inputs(kind: str, output: Tensor | MeanLogVar, target: Tensor) -> tuple[Tensor, Tensor]:
    """What a torchmetrics metric gets: probabilities (sigmoid of the logits for binary and
    multi-label, with the 0/1 targets target > 0.5, as `BinaryScorer` reads them; softmax over
    classes, dimension 1, for classification, segmentation and semantic), the point prediction
    for regression, depth and normals."""
    if kind in ("binary", "multilabel"):
        return output.reshape(target.shape).float().sigmoid(), (target > 0.5).long()
    if kind in ("classification", "segmentation", "semantic"):
        return output.float().softmax(1), target
    return point(output).float(), target


class TaskMetrics:
    """The metrics of every task; `compute()` syncs once and returns {"<task>/<metric>": value}.

    `running`: the running train metrics between evaluations, kept as sums (in checkpoints,
    added over ranks): the scorers' metrics only, no torchmetrics metric."""

    def __init__(
        self, tasks: Sequence[TaskSpec], knows_sigma: Collection[str] = (), running: bool = False
    ) -> None:
        self.tasks = {t.name: t for t in tasks}
        self.scorers = {t.name: scorer_for(t, t.name in knows_sigma) for t in tasks}
        self.chosen = {t.name: task_metrics(t, t.name in knows_sigma) for t in tasks}
        self.extra: dict[str, dict[str, Any]] = {
            name: {} if running else _fresh(chosen) for name, chosen in self.chosen.items()
        }
        self.sums: dict[str, Tensor] = {}
        self.counts = dict.fromkeys(self.scorers, 0)

    def update(self, outputs: Mapping[str, Tensor | MeanLogVar], batch: Split) -> None:
        """Add a batch; `outputs` must be detached from the graph."""
        targets, noise_std = batch.targets, batch.noise_std
        for name, scorer in self.scorers.items():
            target = targets[name]
            sums = scorer.batch_sums(outputs[name], target, noise_std.get(name))
            running = self.sums.get(name)
            if running is None:
                self.sums[name] = sums
            else:
                running += sums
            self.counts[name] += target.numel()
            extra = self.extra[name]
            if extra:
                inputs = metric_inputs(self.tasks[name].kind, outputs[name], target)
                for metric in extra.values():
                    metric.to(target.device).update(*inputs)

    def compute(self, ranks: Ranks = ONE_PROCESS) -> dict[str, float]:
        """The metrics of every batch added (under torchrun: on every rank)."""
        if not self.complete():
            return {}
        sums, counts = self.summed(ranks)
        metrics = {}
        for name, scorer in self.scorers.items():
            scored = scorer.finish(sums[name], counts[name])
            extra = self.extra[name]
            for m in self.chosen[name]:
                if m.make is None and m.name in scored:
                    metrics[f"{name}/{m.name}"] = scored[m.name]
                elif m.name in extra:
                    metrics[f"{name}/{m.name}"] = _scalar(extra[m.name].compute(), name, m)
        values = torch.stack([v.double() for v in metrics.values()]).tolist()  # the one sync
        return dict(zip(metrics, values, strict=True))

    def complete(self) -> bool:
        """Whether every task has sums: some batch was added."""
        return len(self.sums) == len(self.scorers)

    def summed(self, ranks: Ranks) -> tuple[dict[str, Tensor], dict[str, int]]:
        """The sums (in float64) and counts, added up over ranks in one message."""
        names = list(self.scorers)
        sums, counts = added_over_ranks(
            ranks, [self.sums[n] for n in names], [self.counts[n] for n in names]
        )
        return dict(zip(names, sums, strict=True)), dict(zip(names, counts, strict=True))


def _fresh(chosen: Sequence[TaskMetric]) -> dict[str, Metric]:
    """An empty one of each torchmetrics metric among `chosen`, by name."""
    copies = {m.name: m.make() for m in chosen if m.make is not None}
    for metric in copies.values():
        metric.reset()
    return copies


def _scalar(value: Tensor, task: str, metric: TaskMetric) -> Tensor:
    value = torch.as_tensor(value)
    if value.numel() != 1:
        raise ConfigError(
            f"dataset.metrics.{task}: {metric.name} gives {list(value.shape)} values, not one "
            "number: configure it to reduce to one (e.g. average: macro)"
        )
    return value.reshape(())


def added_over_ranks(
    ranks: Ranks, sums: Sequence[Tensor], counts: Sequence[int]
) -> tuple[list[Tensor], list[int]]:
    """Each vector of sums (in float64) and each count, added up over ranks in one message."""
    sums = [s.double() for s in sums]
    if ranks.size == 1:
        return sums, list(counts)
    flat = ranks.sum(torch.cat([*sums, sums[0].new_tensor(counts)]))
    *total, added = flat.split([*(s.numel() for s in sums), len(counts)])
    return total, [int(c) for c in added.tolist()]


def metric_names(tasks: Sequence[TaskSpec], knows_sigma: Collection[str] = ()) -> list[str]:
    """Every "<task>/<metric>" an evaluation of `tasks` reports."""
    return [f"{t.name}/{m.name}" for t in tasks for m in task_metrics(t, t.name in knows_sigma)]


def metric_directions(
    tasks: Sequence[TaskSpec], knows_sigma: Collection[str] = ()
) -> dict[str, int]:
    """{"<task>/<metric>": +1 (higher is better) or −1} of every metric with a direction."""
    return {
        f"{t.name}/{m.name}": m.direction
        for t in tasks
        for m in task_metrics(t, t.name in knows_sigma)
        if m.direction is not None
    }


def main_metric(task: TaskSpec) -> str:
    """The metric that stands for `task`: the first it reports."""
    return f"{task.name}/{task_metrics(task)[0].name}"
