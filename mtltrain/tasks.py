"""What a task is: its kind, what its head emits, and its list of losses; which way its
metrics improve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["classification", "segmentation", "regression"]
# Which way each metric improves, for comparisons such as Δm%: +1 higher is better, −1 lower is
# better. Coverages have a target value (0.683, 0.954), not a direction, and are left out.
DIRECTION = {
    "accuracy": 1, "iou": 1, "dice": 1,
    "rmse": -1, "mse": -1, "nll": -1, "calibration_error": -1, "sigma_rel_error": -1,
}  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """One task: what its head predicts and how it is trained and scored.

    `out_features` is the number of values the head emits per sample for its point prediction
    (classes for classification, classes × pixels for segmentation). `losses` names the task's
    loss terms in `mtltrain.losses.LOSSES`. `heteroscedastic`: the head also predicts a
    per-sample log-variance (set when one of its losses needs it).
    """

    name: str
    kind: TaskKind
    out_features: int
    losses: tuple[str, ...]
    heteroscedastic: bool = False
