"""What the mixture-of-experts architectures share: experts (`base.independent_copies` of a
backbone), softmax gates that read the input flattened, and the gated mixture Σ w_i·expert_i."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtltrain.constraints import Width
from mtltrain.errors import ConfigError
from mtltrain.models.base import Outputs, independent_copies
from mtltrain.models.multitask import HeadFactory, task_heads
from mtltrain.tasks import TaskSpec


def input_shape_of(
    backbone: nn.Module, given: Sequence[int] | None, architecture: str
) -> tuple[int, ...]:
    """One input's shape: `given`, else (in_features,) where the backbone's first layer is a
    Linear (an MLP); otherwise the gates cannot know their width: a one-line ConfigError."""
    if given is not None:
        return tuple(int(s) for s in given)
    first = next(
        (m for m in backbone.modules() if next(m.parameters(recurse=False), None) is not None), None
    )
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise ConfigError(
        f"architecture.input_shape=null is not allowed with the backbone "
        f"{type(backbone).__name__}: the {architecture} gates read the input flattened, and "
        f"its first layer ({type(first).__name__}) does not give the input's size; give one "
        "input's shape, e.g. architecture.input_shape=[1,28,28]"
    )


def flat(x: Tensor, width: int) -> Tensor:
    """The input as a gate of `width` inputs reads it: one row of all its values per example
    (a ValueError, which the model check reports in one line, where it has another size)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"the gates read the input flattened: it must be a tensor, not {type(x)}")
    rows = x.flatten(1)
    if rows.shape[1] != width:
        raise ValueError(
            f"the gates read inputs of {width} values (architecture.input_shape), but this "
            f"one has {rows.shape[1]} ({list(x.shape[1:])})"
        )
    return rows


class SoftmaxGate(nn.Module):
    """w = softmax(W·flatten(x) + b): one weight per expert for each example, summing to 1."""

    def __init__(self, in_features: int, experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(flat(x, self.linear.in_features)), dim=-1)


def mix(weights: Tensor, outputs: Sequence[Tensor]) -> Tensor:
    """Σ_i weights[:, i]·outputs[i]: each example's experts' outputs mixed by its weights."""
    stacked = torch.stack(list(outputs), dim=1)  # [batch, experts, ...]
    return (weights.view(*weights.shape, *[1] * (stacked.dim() - 2)) * stacked).sum(dim=1)


class SharedExperts(nn.Module):
    """n experts shared by every task, each task's output its head on its own gate's mixture
    of them (MMoE, DSelect-k: they differ in the gate).

    Shared: the experts (every task's loss depends on each). Task-specific: the task's gate
    (reading the input flattened) and head. Features: the tuple of the experts' outputs, all
    the task parts read of the shared ones.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        encoder: nn.Module,
        head: HeadFactory,
        heads: Mapping[str, HeadFactory] | None,
        experts: Width,
        gate: Callable[[int], nn.Module],
        input_shape: Sequence[int] | None,
    ) -> None:
        super().__init__()
        width = math.prod(input_shape_of(encoder, input_shape, type(self).__name__))
        self.experts = nn.ModuleList(independent_copies(encoder, experts))
        self.gates = nn.ModuleDict({t.name: gate(width) for t in tasks})
        self.heads = task_heads(tasks, head, heads)

    def forward(self, x: Tensor) -> tuple[Outputs, tuple[Tensor, ...]]:
        outputs = tuple(expert(x) for expert in self.experts)
        return {
            name: head(mix(self.gates[name](x), outputs)) for name, head in self.heads.items()
        }, outputs

    def shared_parameters(self) -> list[nn.Parameter]:
        """The experts' parameters, expert by expert, each in its forward order."""
        return list(self.experts.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [*self.gates[task].parameters(), *self.heads[task].parameters()]
