"""A small network of one's own: a shared trunk and one linear head per task, following
mtltrain's model protocol (`model(x) -> (outputs, features)`, `shared_parameters()`,
`task_parameters(task)`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtltrain import TaskSpec


class HouseNet(nn.Module):
    """in_features → width → width (ReLU), shared; then a linear head per task."""

    def __init__(self, tasks: Sequence[TaskSpec], in_features: int, width: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.heads = nn.ModuleDict({t.name: nn.Linear(width, t.out_features) for t in tasks})

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}, features

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())
