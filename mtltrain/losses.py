"""Task losses, and the named loss terms that a weighting strategy weighs.

A task has one or more losses; each (task, loss) pair is a loss term. A task with one loss
gives a term named after the task; a task with several gives `<task>_<loss>` terms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mtltrain.data.base import TaskKind, TaskSpec

LossFn = Callable[[Tensor, Tensor], Tensor]

LOSSES: dict[str, LossFn] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
}


@dataclass(frozen=True)
class LossTerm:
    """One loss of one task; `kind` is the task's (it sets likelihood factors)."""

    name: str
    task: str
    loss: str
    kind: TaskKind


def loss_terms(tasks: Sequence[TaskSpec]) -> tuple[LossTerm, ...]:
    """The loss terms of `tasks`, in task order."""
    return tuple(
        LossTerm(t.name if len(t.losses) == 1 else f"{t.name}_{loss}", t.name, loss, t.kind)
        for t in tasks
        for loss in t.losses
    )


def compute_losses(
    terms: Sequence[LossTerm], outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Each term's scalar loss on a batch."""
    return {t.name: LOSSES[t.loss](outputs[t.task], targets[t.task]) for t in terms}
