"""A run's learning-rate schedule (`trainer.lr_scheduler`): a torch scheduler on the run's
optimizer, stepped once at each epoch's end; ReduceLROnPlateau instead at each evaluation, with
the run's objective on validation (its mode the metric's direction). Its state and settings go
into the job's checkpoint, and a resume keeps them."""

from __future__ import annotations

import functools
from typing import Any

import torch
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from mtltrain.errors import CheckpointError, ConfigError
from mtltrain.loop._selection import Metrics, Selection


class Schedule:
    """`scheduler` on the run's optimizer, built from `settings` (the config node, as a dict),
    stepped by `end_epoch`; a plateau scheduler reads `selection`'s objective."""

    def __init__(
        self, scheduler: LRScheduler, settings: dict[str, Any], selection: Selection
    ) -> None:
        self.scheduler, self.settings, self.selection = scheduler, settings, selection
        self.plateau = isinstance(scheduler, ReduceLROnPlateau)

    @property
    def lr(self) -> float:
        """The learning rate of the optimizer's first group (the model's parameters)."""
        return float(self.scheduler.optimizer.param_groups[0]["lr"])

    def end_epoch(self, metrics: Metrics | None) -> None:
        """After an epoch, with its evaluation's `metrics` (None where none was due): one
        step; a plateau scheduler steps at evaluations only, on the objective's value."""
        if not self.plateau:
            self.scheduler.step()
        elif metrics is not None:
            selection = self.selection
            self.scheduler.step(metrics[selection.split][selection.metric])

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "state": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["state"])


def build_schedule(
    node: dict[str, Any] | None, optimizer: torch.optim.Optimizer, selection: Selection
) -> Schedule | None:
    """The schedule `trainer.lr_scheduler` (`node`, checked by the config's checks) asks for on
    `optimizer`, or None; ReduceLROnPlateau needs a validation objective with a direction."""
    if node is None:
        return None
    factory: functools.partial = instantiate(node, _partial_=True, _convert_="all")
    target = factory.func
    if isinstance(target, type) and issubclass(target, ReduceLROnPlateau):
        if selection.split != "validation" or selection.direction is None:
            raise ConfigError(
                f"trainer.lr_scheduler={target.__name__} is not allowed without a validation "
                f"objective: it is stepped on the objective, here {selection.objective!r}, "
                "never on test; set trainer.validation (e.g. 0.1) to hold out a validation split"
            )
        mode = "max" if selection.direction > 0 else "min"
        given = factory.keywords.get("mode", mode)
        if given != mode:
            raise ConfigError(
                f"trainer.lr_scheduler.mode={given} is not allowed: objective="
                f"{selection.objective} improves as it {'rises' if mode == 'max' else 'falls'} "
                f"(mode {mode}); leave mode out"
            )
        factory = functools.partial(factory, mode=mode)
    return Schedule(factory(optimizer), node, selection)


def resume_schedule(schedule: Schedule | None, saved: dict[str, Any] | None) -> None:
    """A checkpoint's schedule state (`saved`: None where it had none) into `schedule`; a resume
    that would change the schedule is refused: its state holds its settings."""
    here = None if schedule is None else schedule.settings
    there = None if saved is None else saved["settings"]
    if here != there:
        raise CheckpointError(
            f"trainer.lr_scheduler={_shown(here)} is not allowed on resume: the checkpoint "
            f"trained with trainer.lr_scheduler={_shown(there)}, and a run keeps its schedule"
        )
    if schedule is not None and saved is not None:
        schedule.load_state_dict(saved)


def _shown(settings: dict[str, Any] | None) -> str:
    if settings is None:
        return "null"
    inner = ", ".join(f"{k}: {v}" for k, v in settings.items() if k != "_partial_")
    return "{" + inner + "}"
