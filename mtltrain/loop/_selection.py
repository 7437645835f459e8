"""Which evaluation a run reports (`trainer.select`): the last one, or the one with the best
objective on the validation split, and the objective itself.

Metrics are grouped by split: {"validation": {...}, "test": {...}} (and "train", the running
means since the previous evaluation, which no selection reports).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mtltrain.data.base import MultiTaskData
from mtltrain.errors import CheckpointError, ConfigError
from mtltrain.metrics import main_metric, metric_names

Metrics = dict[str, dict[str, float]]


def resolve_objective(setting: str | None, data: MultiTaskData) -> str:
    """The metric a sweeper gets: `objective`, or the first task's main metric on the first
    evaluated split (validation where held out, else test)."""
    names = metric_names(data.tasks, data.test.noise_std)
    known = [f"{split}/{m}" for split in (*data.splits(), "train") for m in names]
    objective = setting or f"{next(iter(data.splits()))}/{main_metric(data.tasks[0])}"
    if objective not in known:
        raise ConfigError(
            f"objective={objective!r} is not a metric of this run: choose one of {known}"
        )
    return objective


class Selection:
    """The evaluation to report: with "best", the first whose objective (a validation
    metric with a direction) beats every earlier one, and the model and strategy states it
    evaluated (`keep`), which `restore` puts back at the end of training."""

    def __init__(self, select: str, objective: str, directions: Mapping[str, int]) -> None:
        """`directions`: {"<task>/<metric>": ±1} of the run's metrics (`metric_directions`)."""
        split, _, metric = objective.partition("/")
        self.direction = directions.get(metric)
        if select == "best" and (split != "validation" or self.direction is None):
            raise ConfigError(
                f"trainer.select=best selects by objective={objective!r}, which is not a "
                "validation metric with a direction: hold out a validation split "
                "(trainer.validation=0.1) and set objective=validation/<task>/<metric>"
            )
        self.select, self.objective, self.split, self.metric = select, objective, split, metric
        self.chosen: dict[str, Any] | None = None
        self.improved = False

    def update(self, epoch: int, step: int, metrics: Metrics) -> None:
        """See an evaluation after `epoch` epochs and `step` steps."""
        value = metrics.get(self.split, {}).get(self.metric, math.nan)
        if self.select == "best":
            best = None if self.chosen is None else self.chosen["value"]
            self.improved = math.isfinite(value) and (
                best is None or self.direction * (value - best) > 0
            )
        if self.select == "last" or self.improved:
            reported = {split: dict(m) for split, m in metrics.items() if split != "train"}
            self.chosen = {"epoch": epoch, "step": step, "value": value, "metrics": reported}

    def keep(self, *modules: nn.Module) -> None:
        """Remember the state of `modules` (the model and the strategy) as the chosen one's."""
        if self.chosen is not None:
            self.chosen["states"] = [
                {k: _copy(v) for k, v in m.state_dict().items()} for m in modules
            ]

    def restore(self, *modules: nn.Module) -> None:
        """With "best", put the kept states back into `modules` (as given to `keep`)."""
        if self.select == "best" and self.chosen is not None and "states" in self.chosen:
            for module, state in zip(modules, self.chosen["states"], strict=True):
                module.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "chosen": self.chosen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("objective", self.objective)  # checkpoints that predate it: trusted
        if self.select == "best" and saved != self.objective:
            raise CheckpointError(
                f"objective={self.objective!r} is not the objective this run selects its best "
                f"evaluation by ({saved!r}): resume with objective={saved}"
            )
        self.chosen = state["chosen"]


def _copy(value: Any) -> Any:
    """A state entry detached from training: a tensor on the host, or a deep copy (a
    strategy's extra state: generator states, histories)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    return copy.deepcopy(value)
