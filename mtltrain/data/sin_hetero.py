"""Heteroscedastic sin curve (docs/theory.md §5C) with label noise whose σ(x) is known exactly.

f(x) = sin(x/15 − 4) + 2 + sin(x/10 − 5), x ~ U[x_min, x_max);
y = f(x) + σ(x)·ε with σ(x) rising linearly from noise_min at x_min to noise_max at x_max.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtltrain.constraints import Count, NonNegative, Seed, checked
from mtltrain.data.base import MultiTaskData, Split, task_specs
from mtltrain.errors import ConfigError
from mtltrain.tasks import LossChoice, MetricChoice


def curve(x: Tensor) -> Tensor:
    """The noise-free curve f(x) of §5C."""
    return torch.sin(x / 15 - 4) + 2 + torch.sin(x / 10 - 5)


def noise_std(x: Tensor, x_min: float, x_max: float, noise_min: float, noise_max: float) -> Tensor:
    """The true σ(x) of the label noise: linear in x from noise_min to noise_max."""
    return noise_min + (noise_max - noise_min) * (x - x_min) / (x_max - x_min)


def check_settings(settings: Mapping[str, Any]) -> None:
    """x_min < x_max and noise_min <= noise_max: σ(x) rises from the one to the other."""
    x_min, x_max = settings["x_min"], settings["x_max"]
    if not x_min < x_max:
        raise ConfigError(
            f"dataset.x_min={x_min} is not allowed: it must be below dataset.x_max={x_max}"
        )
    low, high = settings["noise_min"], settings["noise_max"]
    if not low <= high:
        raise ConfigError(
            f"dataset.noise_min={low} is not allowed: it must be at most dataset.noise_max={high} "
            "(σ(x) rises from noise_min at x_min to noise_max at x_max)"
        )


@checked("dataset", check_settings)
def build(
    losses: Mapping[str, Sequence[LossChoice]],
    n_train: Count = 20_000,
    n_test: Count = 2_000,
    x_min: float = 50.0,
    x_max: float = 151.0,
    noise_min: NonNegative = 0.1,
    noise_max: NonNegative = 0.6,
    seed: Seed = 0,
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
) -> MultiTaskData:
    """One regression task `y`; inputs are standardised with the train split's mean and std."""
    specs = task_specs(["y"], {"y": ("regression", 1)}, losses, metrics)
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> Split:
        x = x_min + (x_max - x_min) * torch.rand(n, 1, generator=g)
        sigma = noise_std(x, x_min, x_max, noise_min, noise_max)
        y = curve(x) + sigma * torch.randn(n, 1, generator=g)
        return Split(x, {"y": y}, {"y": sigma}, {"y": curve(x)}, raw_inputs=x)

    train, test = draw(n_train), draw(n_test)
    mean, std = train.inputs.mean(), train.inputs.std()
    for split in (train, test):
        split.inputs = (split.raw_inputs - mean) / std
    return MultiTaskData(specs, train, test)
