"""Dynamic Task Prioritization (Guo, Haque, Huang, Yeung & Fei-Fei, ECCV 2018).

total = Σ_t FL(κ̄_t; γ_t)·L_t with the focal weight FL(κ̄; γ) = −(1 − κ̄)^γ·log κ̄: the worse a task
performs, the more it weighs. κ_t ∈ [0, 1] is the task's key performance indicator on each training
batch, measured before the step's update: accuracy (classification, and binary and multi-label tasks
over their labels), foreground IoU (segmentation), mIoU (semantic), exp(−RMSE/scale_t) (regression),
exp(−abs error/scale_t) (depth), 1 − mean angle/180° (normals). κ̄_t ← α·κ_t +
(1 − α)·κ̄_t starts at the first κ_t and is clamped to [ε, 1 − ε] before the weight is taken. The
weight is a function of a measurement, never of the graph: no gradient flows through it. Every loss
term of a task gets the task's weight. The paper's example-level focal loss is the loss `focal`
(dataset.losses.<task>=[focal], γ0 = loss.focal_gamma).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mtltrain.distributed import ONE_PROCESS, Ranks
from mtltrain.losses import LossTerm, MeanLogVar
from mtltrain.metrics import (
    BinaryScorer,
    ClassificationScorer,
    DepthScorer,
    NormalScorer,
    RegressionScorer,
    SegmentationScorer,
    SemanticScorer,
)
from mtltrain.step import Step
from mtltrain.weighting.base import Range, Values, Weighting, named_values


def kpi(
    kind: str, output: Tensor | MeanLogVar, target: Tensor, scale: float, ranks: Ranks = ONE_PROCESS
) -> Tensor:
    """κ of one batch (the global batch under torchrun), a 0-d tensor in [0, 1] on the
    output's device."""
    if kind == "classification":
        return ClassificationScorer().score(output, target, ranks)["accuracy"]
    if kind in ("binary", "multilabel"):
        return BinaryScorer().score(output, target, ranks)["accuracy"]
    if kind == "segmentation":
        return SegmentationScorer().score(output, target, ranks)["iou"]
    if kind == "semantic":
        return SemanticScorer(output.shape[1]).score(output, target, ranks)["miou"]
    if kind == "depth":
        return torch.exp(-DepthScorer().score(output, target, ranks)["abs_error"] / scale)
    if kind == "normals":
        return 1 - NormalScorer().score(output, target, ranks)["mean_angle"] / 180
    return torch.exp(-RegressionScorer().score(output, target, ranks)["rmse"] / scale)


class DynamicTaskPrioritization(Weighting):
    """Σ_t −(1 − κ̄_t)^γ_t·log κ̄_t · L_t, κ̄ a moving average of each task's KPI (Guo et al.).

    κ_t is each task's key performance indicator on the training batch, measured before the
    step's update: accuracy (classification; binary and multi-label: over their labels),
    foreground IoU (segmentation), mIoU (semantic), exp(−RMSE/`kpi_scale`) (regression),
    exp(−abs error/`kpi_scale`) (depth), 1 − mean angle/180° (normals). κ̄_t ← α·κ_t + (1 −
    α)·κ̄_t starts at the first κ_t and is clamped to [ε, 1 − ε] (`kpi_eps`, 1e-3). The weight
    is computed from measurements and carries no gradient. `gamma` and `kpi_scale` take a
    number, a list in task order or `{task: value}`; α = `alpha` (0.1). The paper's
    example-level focal loss is the loss `focal`: `weighting=dtp dataset.losses.cls3=[focal]`.

    Paper: Guo et al., ECCV 2018.
    Scale: sum.
    Logs: `kpi`.
    """

    observes_predictions = True
    RANGES: ClassVar[Mapping[str, Range]] = {
        "alpha": (lambda v: 0 < v <= 1, "it must be in (0, 1]"),
        "kpi_eps": (lambda v: 0 < v < 0.5, "it must be in (0, 0.5)"),
        "gamma": (lambda v: v >= 0, "γ must be >= 0"),
        "kpi_scale": (lambda v: v > 0, "it must be > 0"),
    }

    def __init__(
        self,
        terms: Sequence[LossTerm],
        alpha: float = 0.1,
        gamma: Values = 1.0,
        kpi_scale: Values = 1.0,
        kpi_eps: float = 1e-3,
    ) -> None:
        super().__init__(terms)
        self.check_settings(
            {"alpha": alpha, "gamma": gamma, "kpi_scale": kpi_scale, "kpi_eps": kpi_eps}
        )
        self.tasks = list(dict.fromkeys(t.task for t in terms))
        self.kinds = {t.task: t.kind for t in terms}
        self.alpha, self.kpi_eps = alpha, kpi_eps
        gammas = named_values(self.tasks, gamma, "weighting.gamma", default=1.0)
        scales = named_values(self.tasks, kpi_scale, "weighting.kpi_scale", default=1.0)
        self.scales = dict(zip(self.tasks, scales, strict=True))
        self.register_buffer("gamma", torch.tensor(gammas))
        self.register_buffer("kpi_avg", torch.full((len(self.tasks),), float("nan")))
        self.register_buffer("term_task", torch.tensor([self.tasks.index(t.task) for t in terms]))

    @torch.no_grad()
    def observe(self, step: Step) -> None:
        outputs, targets = step.outputs, step.batch.targets
        kappa = torch.stack(
            [
                kpi(self.kinds[t], outputs[t], targets[t], self.scales[t], step.ranks)
                for t in self.tasks
            ]
        ).to(self.kpi_avg.dtype)
        moved = self.alpha * kappa + (1 - self.alpha) * self.kpi_avg
        moved = torch.where(self.kpi_avg.isnan(), kappa, moved)
        self.kpi_avg.copy_(torch.where(kappa.isfinite(), moved, self.kpi_avg))  # NaN steps: kept

    def task_weights(self) -> Tensor:
        """FL(κ̄_t; γ_t) = −(1 − κ̄_t)^γ_t·log κ̄_t per task, with κ̄ clamped to [ε, 1 − ε]."""
        k = self.kpi_avg.clamp(self.kpi_eps, 1 - self.kpi_eps)
        return -((1 - k) ** self.gamma) * torch.log(k)

    def weights(self) -> Tensor:
        return self.task_weights()[self.term_task]

    def report(self) -> dict[str, Tensor]:
        return {"weight": self.weights(), "kpi": self.kpi_avg[self.term_task].clone()}
