"""Two-slope toy regression, docs/theory.md §5A: y_k = slope_k·x + intercept_k + noise_std_k·ε."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, TypedDict

import torch

from mtltrain.constraints import NON_EMPTY, Count, NonNegative, Seed, checked
from mtltrain.data.base import MultiTaskData, Split, task_specs
from mtltrain.tasks import LossChoice, MetricChoice


class SlopeTask(TypedDict):
    """One two-slope task: y = slope·x + intercept + noise_std·ε."""

    slope: float
    intercept: float
    noise_std: NonNegative


def _draw(tasks: Mapping[str, SlopeTask], n: int, g: torch.Generator) -> Split:
    x = torch.randn(n, 1, generator=g)
    split = Split(x, {})
    for name, p in tasks.items():
        eps = torch.randn(n, 1, generator=g)
        split.noise_free[name] = p["slope"] * x + p["intercept"]
        split.noise_std[name] = torch.full((n, 1), float(p["noise_std"]))
        split.targets[name] = split.noise_free[name] + p["noise_std"] * eps
    return split


@checked("dataset")
def build(
    tasks: Annotated[Mapping[str, SlopeTask], NON_EMPTY],
    losses: Mapping[str, Sequence[LossChoice]],
    n_train: Count = 300,
    n_test: Count = 1000,
    seed: Seed = 0,
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
) -> MultiTaskData:
    """x ~ N(0, 1); one regression task per entry of `tasks` ({slope, intercept, noise_std}).

    The test split is drawn the same way, after the train split, from the same seed.
    """
    specs = task_specs(list(tasks), {name: ("regression", 1) for name in tasks}, losses, metrics)
    g = torch.Generator().manual_seed(seed)
    train, test = _draw(tasks, n_train, g), _draw(tasks, n_test, g)
    return MultiTaskData(specs, train, test)
