"""Two-slope toy regression (BACKGROUND §5A): y_k = slope_k·x + intercept_k + noise_std_k·ε."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mtltrain.data.base import MultiTaskData, Split, TaskSpec
from mtltrain.errors import ConfigError


def _draw(tasks: Mapping[str, Mapping[str, float]], n: int, g: torch.Generator) -> Split:
    x = torch.randn(n, 1, generator=g)
    targets, noise_std = {}, {}
    for name, p in tasks.items():
        eps = torch.randn(n, 1, generator=g)
        targets[name] = p["slope"] * x + p["intercept"] + p["noise_std"] * eps
        noise_std[name] = torch.full((n, 1), float(p["noise_std"]))
    return Split(x, targets, noise_std)


def build(
    tasks: Mapping[str, Mapping[str, float]], n_train: int = 300, n_test: int = 1000, seed: int = 0
) -> MultiTaskData:
    """x ~ N(0, 1); one regression task per entry of `tasks` ({slope, intercept, noise_std}).

    The test split is drawn the same way, after the train split, from the same seed.
    """
    for name, p in tasks.items():
        missing = {"slope", "intercept", "noise_std"} - set(p)
        if missing:
            raise ConfigError(
                f"dataset.tasks.{name} lacks {sorted(missing)}: each two-slope task needs "
                "slope, intercept and noise_std"
            )
        if p["noise_std"] < 0:
            raise ConfigError(f"dataset.tasks.{name}.noise_std={p['noise_std']} must be >= 0")
    g = torch.Generator().manual_seed(seed)
    train, test = _draw(tasks, n_train, g), _draw(tasks, n_test, g)
    specs = tuple(TaskSpec(name, "regression", 1, ("mse",)) for name in tasks)
    return MultiTaskData(specs, train, test)
