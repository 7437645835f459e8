"""Task metrics, accumulated on the device over batches and read once per evaluation.

Each task kind has a scorer; the first metric a scorer reports is the task's main metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtltrain.data.base import Split, TaskSpec


class Scorer:
    """Accumulates sums over batches without host-device synchronisation."""

    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.sums: Tensor | None = None

    def batch_sums(self, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, output: Tensor, target: Tensor) -> None:
        sums = self.batch_sums(output.detach(), target)
        self.sums = sums if self.sums is None else self.sums + sums

    def finish(self, sums: list[float]) -> dict[str, float]:
        raise NotImplementedError


class ClassificationScorer(Scorer):
    """accuracy = correct / samples."""

    names = ("accuracy",)

    def batch_sums(self, output: Tensor, target: Tensor) -> Tensor:
        correct = (output.argmax(dim=1) == target).sum()
        return torch.stack([correct.to(output.dtype), output.new_tensor(target.shape[0])])

    def finish(self, sums: list[float]) -> dict[str, float]:
        correct, n = sums
        return {"accuracy": correct / n}


class RegressionScorer(Scorer):
    """rmse = sqrt(mse), mse = mean squared error over all predicted values."""

    names = ("rmse", "mse")

    def batch_sums(self, output: Tensor, target: Tensor) -> Tensor:
        sq = (output.float() - target).square().sum()
        return torch.stack([sq, sq.new_tensor(target.numel())])

    def finish(self, sums: list[float]) -> dict[str, float]:
        sq, n = sums
        return {"rmse": (sq / n) ** 0.5, "mse": sq / n}


SCORERS: dict[str, type[Scorer]] = {
    "classification": ClassificationScorer,
    "regression": RegressionScorer,
}


class TaskMetrics:
    """One scorer per task; `compute()` syncs once and returns {"<task>/<metric>": value}."""

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        self.scorers = {t.name: SCORERS[t.kind]() for t in tasks}

    def update(self, outputs: Mapping[str, Tensor], batch: Split) -> None:
        for name, scorer in self.scorers.items():
            scorer.update(outputs[name], batch.targets[name])

    def compute(self) -> dict[str, float]:
        parts = [s.sums for s in self.scorers.values()]
        if any(p is None for p in parts):
            return {}
        flat = torch.cat([p.double() for p in parts]).tolist()  # the one sync
        out, start = {}, 0
        for name, part, scorer in zip(self.scorers, parts, self.scorers.values(), strict=True):
            end = start + part.numel()
            out.update({f"{name}/{k}": v for k, v in scorer.finish(flat[start:end]).items()})
            start = end
        return out


def main_metric(task: TaskSpec) -> str:
    """The metric that stands for `task` (accuracy or RMSE)."""
    return f"{task.name}/{SCORERS[task.kind].names[0]}"
