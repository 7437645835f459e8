"""Two-slope toy regression, docs/theory.md §5A: y_k = slope_k·x + intercept_k + noise_std_k·ε."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mtltrain.data.base import MultiTaskData, Split, check_sizes, task_specs
from mtltrain.errors import ConfigError


def _draw(tasks: Mapping[str, Mapping[str, float]], n: int, g: torch.Generator) -> Split:
    x = torch.randn(n, 1, generator=g)
    split = Split(x, {})
    for name, p in tasks.items():
        eps = torch.randn(n, 1, generator=g)
        split.noise_free[name] = p["slope"] * x + p["intercept"]
        split.noise_std[name] = torch.full((n, 1), float(p["noise_std"]))
        split.targets[name] = split.noise_free[name] + p["noise_std"] * eps
    return split


def build(
    tasks: Mapping[str, Mapping[str, float]],
    losses: Mapping[str, Sequence[str]],
    n_train: int = 300,
    n_test: int = 1000,
    seed: int = 0,
) -> MultiTaskData:
    """x ~ N(0, 1); one regression task per entry of `tasks` ({slope, intercept, noise_std}).

    The test split is drawn the same way, after the train split, from the same seed.
    """
    check_sizes(n_train=n_train, n_test=n_test)
    for name, p in tasks.items():
        missing = {"slope", "intercept", "noise_std"} - set(p)
        if missing:
            raise ConfigError(
                f"dataset.tasks.{name} lacks {sorted(missing)}: each two-slope task needs "
                "slope, intercept and noise_std"
            )
        if p["noise_std"] < 0:
            raise ConfigError(f"dataset.tasks.{name}.noise_std={p['noise_std']} must be >= 0")
    specs = task_specs(list(tasks), {name: ("regression", 1) for name in tasks}, losses)
    g = torch.Generator().manual_seed(seed)
    train, test = _draw(tasks, n_train, g), _draw(tasks, n_test, g)
    return MultiTaskData(specs, train, test)
