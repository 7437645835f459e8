"""A shared encoder and one head per task: inputs → ({task: output}, shared representation)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtltrain.errors import ConfigError
from mtltrain.losses import MeanLogVar
from mtltrain.models.base import Outputs
from mtltrain.tasks import TaskSpec

HeadFactory = Callable[..., nn.Module]
BOUNDED = (nn.Tanh, nn.Sigmoid, nn.Softmax)


class VarianceHead(nn.Module):
    """Wraps a head that emits twice the values: the first half is μ, the second log σ²."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, z: Tensor) -> MeanLogVar:
        return MeanLogVar.split(self.head(z))


def task_head(task: TaskSpec, factory: HeadFactory) -> nn.Module:
    """`task`'s head from `factory`: `out_features` values, or twice that wrapped in
    `VarianceHead` for a heteroscedastic task (refused in one line for a bounded head)."""
    if not task.heteroscedastic:
        return factory(out_features=task.out_features)
    head = factory(out_features=2 * task.out_features)
    last = list(head.modules())[-1]
    if isinstance(last, BOUNDED):
        raise ConfigError(
            f"task {task.name}: losses {list(task.losses)} need a head that predicts a "
            f"log-variance, but its head {type(head).__name__} ends in {type(last).__name__}, "
            "which bounds its output: use a loss without variance (e.g. mse) or another head"
        )
    return VarianceHead(head)


def task_heads(
    tasks: Sequence[TaskSpec], head: HeadFactory, heads: Mapping[str, HeadFactory] | None
) -> nn.ModuleDict:
    """Each task's head (`task_head`), from `heads[task]` where given, else from `head`."""
    heads = heads or {}
    return nn.ModuleDict({t.name: task_head(t, heads.get(t.name) or head) for t in tasks})


class MultiTaskModel(nn.Module):
    """`encoder` (None: no shared layers) feeds every task's head.

    Heads are built from `heads[task]` when given, else from `head`; each factory is called
    with `out_features` from the task's spec (twice that for a heteroscedastic task, whose
    head then emits `MeanLogVar`). It has `HeadInputs`: with `split_features` on (the engine
    of a gradient-based strategy sets it) each head reads a view of the features of its own.
    """

    split_features = False

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        head: HeadFactory,
        encoder: nn.Module | None = None,
        heads: Mapping[str, HeadFactory] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.heads = task_heads(tasks, head, heads)
        self.head_inputs: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> tuple[Outputs, Tensor]:
        z = self.encoder(x)
        if not (self.split_features and self.training and torch.is_grad_enabled()) or (
            torch.compiler.is_compiling()  # a compiled graph's views are not autograd's
        ):
            return {name: head(z) for name, head in self.heads.items()}, z
        self.head_inputs = {name: z.view_as(z) for name in self.heads}
        return {name: head(self.head_inputs[name]) for name, head in self.heads.items()}, z

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters, in forward order (empty without shared layers)."""
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())
