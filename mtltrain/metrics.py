"""Task metrics, accumulated on the device over batches and read once per evaluation.

Each task gets a scorer for its kind; the first metric a scorer reports is the task's main
metric. Scorers keep running sums as one tensor and turn sums into metrics with tensor
operations, so the training loop never waits on the device to score a batch.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from mtltrain.data.base import Split
from mtltrain.distributed import ONE_PROCESS, Ranks
from mtltrain.losses import MeanLogVar, point
from mtltrain.tasks import TaskSpec


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


class HeteroscedasticScorer(Scorer):
    """For a head predicting μ and σ: nll = mean ½(log 2πσ² + (y − μ)²/σ²); rmse;
    coverage_1sigma / coverage_2sigma = fraction with |y − μ| ≤ 1σ / 2σ (0.683 / 0.954 when
    calibrated); calibration_error = mean over p = 0.05, 0.10, …, 0.95 of |p − fraction inside
    the central interval μ ± Φ⁻¹((1 + p)/2)·σ|; sigma_rel_error = mean |σ̂(x) − σ(x)|/σ(x),
    where the data set knows the true σ(x)."""

    def __init__(self, knows_sigma: bool) -> None:
        base = ("nll", "rmse", "coverage_1sigma", "coverage_2sigma", "calibration_error")
        self.names = (*base, "sigma_rel_error") if knows_sigma else base
        self.knows_sigma = knows_sigma

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
            "nll": nll,
            "rmse": sq.sqrt(),
            "coverage_1sigma": within1,
            "coverage_2sigma": within2,
            "calibration_error": (coverage - calibration_levels(sums)).abs().mean(),
        }
        if self.knows_sigma:
            out["sigma_rel_error"] = sigma_err
        return out


def scorer_for(task: TaskSpec, knows_sigma: bool = False) -> Scorer:
    """The scorer of `task`'s kind; heteroscedastic regression gets the calibration metrics."""
    if task.kind == "regression":
        return HeteroscedasticScorer(knows_sigma) if task.heteroscedastic else RegressionScorer()
    return {"classification": ClassificationScorer, "segmentation": SegmentationScorer}[task.kind]()


class TaskMetrics:
    """One scorer per task; `compute()` syncs once and returns {"<task>/<metric>": value}."""

    def __init__(self, tasks: Sequence[TaskSpec], knows_sigma: Collection[str] = ()) -> None:
        self.scorers = {t.name: scorer_for(t, t.name in knows_sigma) for t in tasks}
        self.sums: dict[str, Tensor] = {}
        self.counts = dict.fromkeys(self.scorers, 0)

    def update(self, outputs: Mapping[str, Tensor | MeanLogVar], batch: Split) -> None:
        """Add a batch; `outputs` must be detached from the graph."""
        for name, scorer in self.scorers.items():
            target = batch.targets[name]
            sums = scorer.batch_sums(outputs[name], target, batch.noise_std.get(name))
            if name in self.sums:
                self.sums[name] += sums
            else:
                self.sums[name] = sums
            self.counts[name] += target.numel()

    def compute(self, ranks: Ranks = ONE_PROCESS) -> dict[str, float]:
        """The metrics of every batch added (under torchrun: on every rank)."""
        if not self.complete():
            return {}
        sums, counts = self.summed(ranks)
        metrics = {
            f"{name}/{k}": v
            for name, scorer in self.scorers.items()
            for k, v in scorer.finish(sums[name], counts[name]).items()
        }
        values = torch.stack(list(metrics.values())).tolist()  # the one sync with the host
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
    return [f"{t.name}/{m}" for t in tasks for m in scorer_for(t, t.name in knows_sigma).names]


def main_metric(task: TaskSpec) -> str:
    """The metric that stands for `task`: the first its scorer reports."""
    return f"{task.name}/{scorer_for(task).names[0]}"
