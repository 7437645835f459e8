"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, CVPR 2016).

One column per task: a copy of the `Staged` backbone each (the given encoder for the first
task, independently re-initialised copies for the others). After every stage j a cross-stitch
unit mixes the K columns' outputs channel by channel:

    x̃_i[c] = Σ_k α_j[c, i, k] · x_k[c]     (α_j: per channel a K×K matrix, learned)

initialised as in the paper's "0.9 / 0.1" convention: α[c, i, i] = 0.9 and the rest of each row
0.1 split evenly, 0.1/(K − 1) (with one task, α = 1). Task k's head reads column k's last mixed
output. Every task's loss depends on every column and every unit (through the units), so all of
them are shared parameters; a task's own are its head's. Features (for representation-level
strategies): the tuple of the K columns' last mixed outputs, the tensors the heads read.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtltrain.models.base import Outputs, stage_channels, stages_of
from mtltrain.models.multitask import HeadFactory, task_head
from mtltrain.tasks import TaskSpec

SELF_WEIGHT = 0.9  # α[c, i, i] at the start; the other 0.1 of a row is split evenly


def reinitialised(module: nn.Module) -> nn.Module:
    """A copy of `module` with every layer that can re-draw its parameters re-drawn."""
    fresh = copy.deepcopy(module)
    for layer in fresh.modules():
        if callable(getattr(layer, "reset_parameters", None)):
            layer.reset_parameters()
    return fresh


class CrossStitchUnit(nn.Module):
    """x̃_i = Σ_k α[:, i, k]·x_k per channel, for K inputs of C channels (α: [C, K, K])."""

    def __init__(self, channels: int, columns: int) -> None:
        super().__init__()
        other = (1 - SELF_WEIGHT) / (columns - 1) if columns > 1 else 0.0
        alpha = torch.full((columns, columns), other)
        alpha.fill_diagonal_(SELF_WEIGHT if columns > 1 else 1.0)
        self.alpha = nn.Parameter(alpha.expand(channels, -1, -1).clone())

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        stacked = torch.stack(list(xs))  # [K, N, C, …]
        mixed = torch.einsum("cik,knc...->inc...", self.alpha, stacked)
        return list(mixed.unbind(0))


class CrossStitch(nn.Module):
    """One backbone column per task, a cross-stitch unit after every stage, each task's head on
    its column (Misra et al. 2016). Heads are built as `MultiTaskModel` builds them."""

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        encoder: nn.Module,
        head: HeadFactory,
        heads: Mapping[str, HeadFactory] | None = None,
    ) -> None:
        super().__init__()
        heads = heads or {}
        stages = stages_of(encoder, "cross_stitch")
        self.names = [t.name for t in tasks]
        self.columns = nn.ModuleList(
            [encoder, *(reinitialised(encoder) for _ in range(len(self.names) - 1))]
        )
        self.column_stages = [stages_of(column, "cross_stitch") for column in self.columns]
        self.units = nn.ModuleList(
            CrossStitchUnit(channels, len(self.names)) for channels in stage_channels(stages)
        )
        self.heads = nn.ModuleDict({t.name: task_head(t, heads.get(t.name, head)) for t in tasks})

    def forward(self, x: Tensor) -> tuple[Outputs, tuple[Tensor, ...]]:
        xs = [x] * len(self.columns)
        for j, unit in enumerate(self.units):
            xs = unit([stages[j](h) for stages, h in zip(self.column_stages, xs, strict=True)])
        outputs = zip(self.names, xs, strict=True)
        return {name: self.heads[name](h) for name, h in outputs}, tuple(xs)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every column's and every unit's parameters: each task's loss reaches all of them."""
        return [*self.columns.parameters(), *self.units.parameters()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """`task`'s head."""
        return list(self.heads[task].parameters())

    def last_shared_layer(self) -> nn.Parameter:
        """The last unit's α: the last shared parameter before the heads, where every task's
        gradient arrives (GradNorm's default layer)."""
        return self.units[-1].alpha
