"""What every logger of a run gets (`logger=` in the config: tensorboard, csv, mlflow, wandb, or
several), and the one callback that feeds them all.

A `Logger` takes, for a fresh run, its HParams columns and tags (`start`); every `log_every`
steps and at the last step the losses, weights and what the strategy learns, at each evaluation
the metrics of every split (`scalars`); at the end the reported evaluation's metrics and what the
strategy learned (`finish`); `close` always. Each logger is a `_target_` node of the config group
`logger`, built with the run's folder and the step a resumed run continues after
(`open_loggers`); a logger whose library is not installed is refused by its `check_settings`
before the run's folder is made.

The scalars, with their tags (`LoggersCallback`): loss/total, loss_raw/<term>,
loss_weighted/<term>, <quantity>/<term> (or <quantity>) for what the strategy reports (weight,
sigma, ...), nonfinite_steps with trainer.nonfinite=skip, lr (the model's learning rate) with
trainer.lr_scheduler, and <split>/<task>/<metric>. A reported
quantity that has not changed since it was last logged is left out (fixed weights would draw flat
lines) until the last step, which has every series. The final values: <split>/<task>/<metric> of
the reported evaluation (the last, or with trainer.select=best the selected one: what
results.json has) and weighting/<quantity>/<term> (or weighting/<quantity>), at the last step.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from mtltrain.config._compose import build
from mtltrain.errors import ConfigError
from mtltrain.loop._callbacks import Callback

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from mtltrain.loop._job import Job
    from mtltrain.loop._selection import Metrics
    from mtltrain.step import Step

LEARNED = "weighting"  # the final values of the learned quantities: weighting/<quantity>/…
SHARED = "weight"  # the quantity every strategy reports, each on its own scale


class Logger(Protocol):
    """Where a run's scalars, HParams, tags and final values go (see the module's note)."""

    def start(self, hparams: Mapping[str, str], tags: Sequence[str]) -> None:
        """A fresh run's HParams columns {name: value as given} and its tags."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """{tag: value} at `step`."""

    def finish(self, values: Mapping[str, float], step: int) -> None:
        """The run's final values {tag: value}, at its last step."""

    def close(self) -> None:
        """Flush and release the logger's files (called once, also after a failure)."""


def require(module: str, extra: str, key: str) -> None:
    """A ConfigError naming the extra to install where `module` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"{key} is not allowed: it needs the {module} package, which is not installed; "
            f'install it with: pip install "mtltrain[{extra}]"'
        )


def open_loggers(
    node: DictConfig | None,
    folder: Path,
    resume_step: int | None,
    exits: contextlib.ExitStack,
) -> list[Logger]:
    """The loggers `node` (cfg.logger: {name: _target_ node}, or None) names, in its order,
    each built with the run's `folder` and the step a resumed run continues after (None: a
    fresh run), and closed by `exits`."""
    loggers: list[Logger] = []
    for name in node or {}:
        logger = build(node[name], folder=folder, resume_step=resume_step)
        exits.callback(logger.close)
        loggers.append(logger)
    return loggers


def host(values: Mapping[str, Tensor | float]) -> dict[str, float]:
    """{tag: value} as Python floats; tensor values are moved to the host together, in one
    sync."""
    tags = [k for k, v in values.items() if isinstance(v, Tensor)]
    out = {k: float(v) for k, v in values.items() if not isinstance(v, Tensor)}
    if tags:
        moved = torch.stack([values[k].detach().float().reshape(()) for k in tags]).tolist()
        out.update(zip(tags, moved, strict=True))
    return {k: out[k] for k in values}


class LoggersCallback(Callback):
    """Logs a run into each of `loggers` (see the module's note); `skipped` adds the count of
    skipped steps (trainer.nonfinite=skip). A fresh run (`hparams` given: {column: value}) also
    starts each logger with its HParams and `tags`."""

    def __init__(
        self,
        loggers: Sequence[Logger],
        log_every: int,
        skipped: bool = False,
        hparams: Mapping[str, str] | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        self.loggers, self.every, self.skipped = list(loggers), log_every, skipped
        self.hparams, self.tags = hparams, list(tags)
        self.last: Step | None = None
        self.logged = 0
        self.previous: dict[str, Tensor] = {}
        self.left_out: set[str] = set()

    def emit(self, values: Mapping[str, Tensor | float], step: int) -> None:
        """{tag: value} at `step` into every logger, read from the device once."""
        if values:
            plain = host(values)
            for logger in self.loggers:
                logger.scalars(plain, step)

    def on_fit_start(self, job: Job) -> None:
        if self.hparams is not None:
            for logger in self.loggers:
                logger.start(self.hparams, self.tags)

    def on_step_end(self, job: Job, step: Step) -> None:
        self.last = step
        if step.number % self.every == 0:
            self.log_step(job, step)

    def on_fit_end(self, job: Job) -> None:
        if self.last is not None:
            if self.logged != self.last.number:
                self.log_step(job, self.last)
            self.log_unchanged(job, self.last.number)
        final = host(self.final_values(job))
        for logger in self.loggers:
            logger.finish(final, job.step)

    def final_values(self, job: Job) -> dict[str, Tensor | float]:
        """The reported evaluation's {<split>/<task>/<metric>: value} and what the strategy
        learned, {weighting/<quantity>/<term> or weighting/<quantity>: value}."""
        chosen = job.selection.chosen
        evaluated = chosen["metrics"] if chosen is not None else {}
        values: dict[str, Tensor | float] = {
            f"{split}/{k}": v for split, metrics in evaluated.items() for k, v in metrics.items()
        }
        for quantity, value in job.strategy.report().items():
            values.update(
                {f"{LEARNED}/{tag}": v for tag, v in self.tagged(job, quantity, value).items()}
            )
        return values

    def log_step(self, job: Job, step: Step) -> None:
        """The step's scalars; a reported quantity unchanged since it was last logged is left
        out (see the module's note)."""
        names, losses = job.strategy.names, step.losses.detach()
        values: dict[str, Tensor | float] = {"loss/total": step.total}
        for i, name in enumerate(names):
            values[f"loss_raw/{name}"] = losses[i]
            values[f"loss_weighted/{name}"] = step.parts[i]
        if job.schedule is not None:
            values["lr"] = job.schedule.lr
        self.left_out = set()
        for quantity, value in self.series(job).items():
            last = self.previous.get(quantity)
            if last is None or not torch.equal(last, value):
                self.previous[quantity] = value.clone()
                values.update(self.tagged(job, quantity, value))
            else:
                self.left_out.add(quantity)
        self.emit(values, step.number)
        self.logged = step.number

    def log_unchanged(self, job: Job, step: int) -> None:
        """The series the last log_step left out because they had not changed, at `step`."""
        values: dict[str, Tensor | float] = {}
        for quantity, value in self.series(job).items():
            if quantity in self.left_out:
                values.update(self.tagged(job, quantity, value))
        self.emit(values, step)

    def series(self, job: Job) -> dict[str, Tensor]:
        """What the strategy reports, and the count of skipped steps in skip mode."""
        report = dict(job.strategy.report())
        if self.skipped:
            report["nonfinite_steps"] = torch.tensor(job.skipped_steps)
        return report

    @staticmethod
    def tagged(job: Job, quantity: str, value: Tensor) -> dict[str, Tensor]:
        """{<quantity>/<term>: value} of a per-term quantity, {<quantity>: value} of another."""
        if value.dim() == 0:
            return {quantity: value}
        return {f"{quantity}/{n}": value[i] for i, n in enumerate(job.strategy.names)}

    def on_evaluation(self, job: Job, metrics: Metrics) -> None:
        scalars = {
            f"{split}/{k}": v for split, values in metrics.items() for k, v in values.items()
        }
        self.emit(scalars, job.step)
