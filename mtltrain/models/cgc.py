"""CGC (Tang et al., RecSys 2020): experts shared by every task beside each task's own experts,
one softmax gate per task mixing the shared ones and its own; the level PLE stacks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

from torch import Tensor, nn

from mtltrain.constraints import Width
from mtltrain.models.base import Outputs, independent_copies
from mtltrain.models.experts import SoftmaxGate, input_shape_of, mix
from mtltrain.models.multitask import HeadFactory, task_heads
from mtltrain.tasks import TaskSpec


class ExtractionLevel(nn.Module):
    """One extraction level (CGC's, each of PLE's): shared experts S_i read the shared input
    h_s, task k's experts T_k,i read task k's input h_k (`experts`); h_k' = Σ
    softmax(G_k·flatten(h_k))·[S; T_k] (`task_mixtures`), and, with a shared gate, h_s' = Σ
    softmax(G_s·flatten(h_s))·[S; T_1; …; T_K], every expert (`shared_mixture`).

    `width`: the number of values of one example's input to the level, which the gates read.
    """

    def __init__(
        self,
        shared: Sequence[nn.Module],
        own: Mapping[str, Sequence[nn.Module]],
        width: int,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.shared = nn.ModuleList(shared)
        self.own = nn.ModuleDict({task: nn.ModuleList(experts) for task, experts in own.items()})
        self.gates = nn.ModuleDict(
            {task: SoftmaxGate(width, len(shared) + len(experts)) for task, experts in own.items()}
        )
        every = len(shared) + sum(len(experts) for experts in own.values())
        self.shared_gate = SoftmaxGate(width, every) if shared_gate else None

    def experts(
        self, shared: Tensor, tasks: Mapping[str, Tensor]
    ) -> tuple[tuple[Tensor, ...], dict[str, tuple[Tensor, ...]]]:
        """The shared experts' outputs on `shared`, and each task's experts' on its input."""
        s = tuple(expert(shared) for expert in self.shared)
        return s, {task: tuple(e(tasks[task]) for e in self.own[task]) for task in self.own}

    def task_mixtures(
        self, s: Sequence[Tensor], t: Mapping[str, Sequence[Tensor]], tasks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """h_k' = Σ softmax(G_k·flatten(h_k))·[S; T_k] for each task k."""
        return {task: mix(self.gates[task](tasks[task]), (*s, *t[task])) for task in self.own}

    def shared_mixture(
        self, s: Sequence[Tensor], t: Mapping[str, Sequence[Tensor]], shared: Tensor
    ) -> Tensor | None:
        """h_s' = Σ softmax(G_s·flatten(h_s))·[S; T_1; …; T_K], None without a shared gate."""
        if self.shared_gate is None:
            return None
        every = (*s, *(output for outputs in t.values() for output in outputs))
        return mix(self.shared_gate(shared), every)


Expert = TypeVar("Expert")


def expert_groups(
    tasks: Sequence[TaskSpec], experts: Sequence[Expert], shared: int, own: int
) -> tuple[list[Expert], dict[str, list[Expert]]]:
    """`experts` split into the first `shared` and `own` for each task, in task order."""
    per_task = {t.name: list(experts[shared + i * own : shared + (i + 1) * own])
                for i, t in enumerate(tasks)}  # fmt: skip
    return list(experts[:shared]), per_task


class CGC(nn.Module):
    """y_k = head_k(Σ_i g_k(x)_i·[S_1(x) … S_m(x); T_k,1(x) … T_k,p(x)]_i), g_k(x) =
    softmax(W_k·flatten(x) + b_k): one extraction level (`ExtractionLevel`) on the backbone.

    The `shared_experts` S and each task's `task_experts` T_k are copies of the backbone
    (`encoder`): the backbone as built, the others re-initialised independently. The gates
    read the input flattened (`input_shape`: one input's shape, needed where the backbone
    does not start with a Linear that tells it).

    Shared: the shared experts. Task-specific: the task's experts, its gate and its head.
    Features: the tuple of the shared experts' outputs, all the task parts read of the shared
    ones (a task's own experts are its own).
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        encoder: nn.Module,
        head: HeadFactory,
        heads: Mapping[str, HeadFactory] | None = None,
        shared_experts: Width = 2,
        task_experts: Width = 1,
        input_shape: Sequence[Width] | None = None,
    ) -> None:
        super().__init__()
        width = math.prod(input_shape_of(encoder, input_shape, "CGC"))
        copies = independent_copies(encoder, shared_experts + len(tasks) * task_experts)
        shared, own = expert_groups(tasks, copies, shared_experts, task_experts)
        self.level = ExtractionLevel(shared, own, width, shared_gate=False)
        self.heads = task_heads(tasks, head, heads)

    def forward(self, x: Tensor) -> tuple[Outputs, tuple[Tensor, ...]]:
        tasks = {task: x for task in self.heads}
        s, t = self.level.experts(x, tasks)
        mixed = self.level.task_mixtures(s, t, tasks)
        return {task: head(mixed[task]) for task, head in self.heads.items()}, s

    def shared_parameters(self) -> list[nn.Parameter]:
        """The shared experts' parameters, expert by expert, each in its forward order."""
        return list(self.level.shared.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [
            *self.level.own[task].parameters(),
            *self.level.gates[task].parameters(),
            *self.heads[task].parameters(),
        ]
