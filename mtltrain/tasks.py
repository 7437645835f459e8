"""What a task is: its kind, what its head emits, and its list of losses; which way its
metrics improve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

# binary: one logit per sample, targets 0/1; multilabel: one logit per label, [N, L] 0/1 targets;
# dense prediction per pixel: semantic (class logits, label −1 ignored), depth (0: no depth),
# normals (a unit vector per pixel, the zero vector: none)
TaskKind = Literal[
    "classification", "segmentation", "regression", "binary", "multilabel",
    "semantic", "depth", "normals",
]  # fmt: skip
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
# a task's loss as `dataset.losses` gives it: a name in `mtltrain.losses.LOSSES`, or a callable
# (output, target) -> scalar that the config builds (`_target_`)
LossChoice = str | Callable[..., Any]
# a task's metric as `dataset.metrics` gives it: a built-in name of its kind, or a torchmetrics
# `Metric` (or `mtltrain.metrics.CustomMetric`) that the config builds
MetricChoice = str | Any
# Which way each metric improves, for comparisons such as Δm%: +1 higher is better, −1 lower is
# better. Coverages have a target value (0.683, 0.954), not a direction, and are left out.
DIRECTION = {
    "accuracy": 1, "iou": 1, "dice": 1, "auroc": 1, "f1": 1,
    "rmse": -1, "mse": -1, "mae": -1, "nll": -1, "calibration_error": -1, "sigma_rel_error": -1,
    "miou": 1, "pixel_accuracy": 1, "abs_error": -1, "rel_error": -1,
    "mean_angle": -1, "median_angle": -1, "within_11_25": 1, "within_22_5": 1, "within_30": 1,
}  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """One task: what its head predicts and how it is trained and scored.

    `out_features` is the number of values the head emits per sample for its point prediction
    (classes for classification, classes × pixels for segmentation, 1 for binary, labels for
    multilabel; for the dense kinds semantic, depth and normals: channels per pixel, i.e.
    classes, 1 and 3). `losses` are the task's loss terms: names in `mtltrain.losses.LOSSES` or
    callables. `heteroscedastic`: the head also predicts a per-sample log-variance (set when
    one of its losses needs it). `metrics`: what `dataset.metrics` chose (empty: the kind's
    built-ins, `mtltrain.metrics.task_metrics`). `target_std`: a regression task whose targets
    the data set stores standardised, (y − mean)/std, gives that std: its metrics (mae, rmse,
    mse) are reported in the targets' original units.
    """

    name: str
    kind: TaskKind
    out_features: int
    losses: tuple[LossChoice, ...]
    heteroscedastic: bool = False
    metrics: tuple[MetricChoice, ...] = ()
    target_std: float | None = None
