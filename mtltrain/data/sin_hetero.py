"""Heteroscedastic sin curve (BACKGROUND §5C) with label noise whose σ(x) is known exactly.

f(x) = sin(x/15 − 4) + 2 + sin(x/10 − 5), x ~ U[x_min, x_max);
y = f(x) + σ(x)·ε with σ(x) rising linearly from noise_min at x_min to noise_max at x_max.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtltrain.data.base import MultiTaskData, Split, TaskSpec
from mtltrain.errors import ConfigError


def curve(x: Tensor) -> Tensor:
    """The noise-free curve f(x) of §5C."""
    return torch.sin(x / 15 - 4) + 2 + torch.sin(x / 10 - 5)


def noise_std(x: Tensor, x_min: float, x_max: float, noise_min: float, noise_max: float) -> Tensor:
    """The true σ(x) of the label noise: linear in x from noise_min to noise_max."""
    return noise_min + (noise_max - noise_min) * (x - x_min) / (x_max - x_min)


def build(
    n_train: int = 20_000,
    n_test: int = 2_000,
    x_min: float = 50.0,
    x_max: float = 151.0,
    noise_min: float = 0.1,
    noise_max: float = 0.6,
    seed: int = 0,
) -> MultiTaskData:
    """One regression task `y`; inputs are standardised with the train split's mean and std."""
    if not x_min < x_max:
        raise ConfigError(f"dataset.x_min={x_min} must be below dataset.x_max={x_max}")
    if noise_min < 0 or noise_max < 0:
        raise ConfigError(f"dataset noise_min={noise_min}, noise_max={noise_max} must be >= 0")
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[Tensor, Tensor, Tensor]:
        x = x_min + (x_max - x_min) * torch.rand(n, 1, generator=g)
        sigma = noise_std(x, x_min, x_max, noise_min, noise_max)
        return x, curve(x) + sigma * torch.randn(n, 1, generator=g), sigma

    (x_tr, y_tr, s_tr), (x_te, y_te, s_te) = draw(n_train), draw(n_test)
    mean, std = x_tr.mean(), x_tr.std()

    def split(x: Tensor, y: Tensor, sigma: Tensor) -> Split:
        return Split((x - mean) / std, {"y": y}, {"y": sigma}, raw_inputs=x)

    task = TaskSpec("y", "regression", 1, ("mse",))
    return MultiTaskData((task,), split(x_tr, y_tr, s_tr), split(x_te, y_te, s_te))
