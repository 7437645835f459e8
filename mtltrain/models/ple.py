"""PLE (Tang et al., RecSys 2020): extraction levels stacked on the backbone's stages, each with
shared and per-task experts; the inner levels' shared gate mixes every expert for the next."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtltrain.constraints import Width
from mtltrain.errors import ConfigError, first_line
from mtltrain.models.base import Outputs, Staged, independent_copies
from mtltrain.models.cgc import ExtractionLevel, expert_groups
from mtltrain.models.experts import input_shape_of
from mtltrain.models.multitask import HeadFactory, task_heads
from mtltrain.tasks import TaskSpec


class PLE(nn.Module):
    """One extraction level (`ExtractionLevel`) per stage of the backbone: level j's experts
    are stage j of the experts' copies; h_s⁰ = h_k⁰ = x, level j reads h_s^(j−1) (its shared
    experts and shared gate) and h_k^(j−1) (task k's experts and gate); y_k = head_k(h_k^L).

    Every level but the last has the shared gate (the paper's: it mixes all the level's
    experts into the next shared input); each gate reads its input flattened. The experts are
    copies of the backbone (`encoder`), which must be `Staged` (a backbone without stages is
    refused in one line: CGC is PLE with one level): the backbone as built, the others
    re-initialised independently. `input_shape`: one input's shape (for the gates' widths),
    needed where the backbone does not start with a Linear that tells it.

    Shared: what every task's loss depends on: the shared experts of every level, the shared
    gates, the task experts of every level but the last and the task gates of every level but
    the last two (the next shared gate mixes what they make into everyone's input).
    Task-specific for task k: its head, its experts and gate of the last level, and its gate
    of the level before, which feeds only its own last level. Features, every tensor these
    task parts read of the shared ones: the last level's shared experts' outputs and, with
    two levels or more, what task k's gate of level L − 1 reads: that level's shared and
    task experts' outputs and (three levels or more) its input h_k^(L−2), as views, so that
    the gradient at them is the part that goes through those gates (the shared gate reads
    the tensors themselves); carried back, the gradients at the features give the shared
    parameters' gradients exactly.
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
        if not isinstance(encoder, Staged):
            raise ConfigError(
                f"architecture ple is not allowed with the encoder {type(encoder).__name__}: "
                "it has no stages() to build the levels from (mtltrain.models.base.Staged); "
                "choose a staged backbone or architecture=cgc (one level)"
            )
        widths = stage_input_widths(encoder, input_shape_of(encoder, input_shape, "PLE"))
        copies = independent_copies(encoder, shared_experts + len(tasks) * task_experts)
        shared, own = expert_groups(tasks, [c.stages() for c in copies], shared_experts,
                                    task_experts)  # fmt: skip
        last = len(widths) - 1
        self.levels = nn.ModuleList(
            ExtractionLevel(
                [stages[j] for stages in shared],
                {task: [stages[j] for stages in experts] for task, experts in own.items()},
                width,
                shared_gate=j < last,
            )
            for j, width in enumerate(widths)
        )
        self.heads = task_heads(tasks, head, heads)

    def forward(self, x: Tensor) -> tuple[Outputs, tuple[Tensor, ...]]:
        shared, tasks = x, {task: x for task in self.heads}
        read: tuple[Tensor, ...] = ()  # what the task gates of level L − 1 read
        for j, level in enumerate(self.levels):
            s, t = level.experts(shared, tasks)
            shared = level.shared_mixture(s, t, shared)
            if j == len(self.levels) - 2:  # these gates are task-specific: they read views
                s, t = _views(s), {task: _views(outputs) for task, outputs in t.items()}
                tasks = {task: h.view_as(h) for task, h in tasks.items()} if j > 0 else tasks
                inputs = tuple(tasks.values()) if j > 0 else ()  # not x: it has no gradient
                read = (*s, *(output for outputs in t.values() for output in outputs), *inputs)
            tasks = level.task_mixtures(s, t, tasks)
        outputs = {task: head(tasks[task]) for task, head in self.heads.items()}
        return outputs, (*s, *read)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter no task owns alone, level by level."""
        own = {id(p) for task in self.heads for p in self.task_parameters(task)}
        return [p for p in self.parameters() if id(p) not in own]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        last = self.levels[-1]
        before = [*self.levels[-2].gates[task].parameters()] if len(self.levels) >= 2 else []
        return [
            *before,
            *last.own[task].parameters(),
            *last.gates[task].parameters(),
            *self.heads[task].parameters(),
        ]


def stage_input_widths(backbone: nn.Module, shape: Sequence[int]) -> list[int]:
    """The number of values of one example's input to each of the backbone's stages: a dry
    run of a zero input of `shape` (eval mode, no gradient); a backbone whose stages leave out
    some of its parameters is refused in one line."""
    stages = backbone.stages()
    staged = {id(p) for stage in stages for p in stage.parameters()}
    if not stages or any(id(p) not in staged for p in backbone.parameters()):
        raise ConfigError(
            f"architecture ple is not allowed with the encoder {type(backbone).__name__}: "
            "its stages() do not hold all its parameters, so the levels built from them "
            "would leave some out"
        )
    was_training, widths = backbone.training, []
    backbone.eval()
    h = torch.zeros(1, *shape)
    try:
        with torch.no_grad():
            for stage in stages:
                widths.append(h[0].numel())
                h = stage(h)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise ConfigError(
            f"architecture.input_shape={list(shape)} is not allowed: the encoder "
            f"{type(backbone).__name__} does not take an input of that shape "
            f"({type(e).__name__}: {first_line(e)}); give one input's shape"
        ) from None
    finally:
        backbone.train(was_training)
    return widths


def _views(tensors: Iterable[Tensor]) -> tuple[Tensor, ...]:
    """A view of each tensor: the gradient at a view is what went through its readers alone."""
    return tuple(t.view_as(t) for t in tensors)
