"""The data set: houses.csv read into tensors, with a price (regression, in 100 k) and whether
the house sold within 30 days (binary) per row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from mtltrain.data import MultiTaskData, Split, task_specs

FEATURES = ["area_m2", "rooms", "age_years", "distance_km", "garden"]
TASKS = {"price": ("regression", 1), "sold_30d": ("binary", 1)}


def build(
    path: str,
    losses: Mapping[str, Sequence],
    metrics: Mapping[str, Sequence] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> MultiTaskData:
    """Rows of `path` split at random into train and test (`test_fraction`, drawn with
    `seed`); features standardised with the training rows' mean and standard deviation."""
    table = np.genfromtxt(Path(path), delimiter=",", names=True)
    inputs = torch.tensor(np.stack([table[c] for c in FEATURES], 1), dtype=torch.float32)
    targets = {
        "price": torch.tensor(table["price_k"] / 100, dtype=torch.float32).unsqueeze(1),
        "sold_30d": torch.tensor(table["sold_30d"], dtype=torch.float32).unsqueeze(1),
    }
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(inputs))
    test, train = order[:n_test], order[n_test:]
    mean, std = inputs[train].mean(0), inputs[train].std(0)
    inputs = (inputs - mean) / std

    def split(rows: torch.Tensor) -> Split:
        return Split(inputs[rows], {task: t[rows] for task, t in targets.items()})

    specs = task_specs(list(TASKS), TASKS, losses, metrics)
    return MultiTaskData(specs, split(train), split(test))
