"""TensorBoard scalars of a run: losses, weights and what the strategy learns every
`log_every` steps (and at the last step), train and test metrics at each evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mtltrain.callbacks import Callback
from mtltrain.tblog import TensorBoardLog

if TYPE_CHECKING:
    from mtltrain.step import Step
    from mtltrain.train import Trainer


class TensorBoardCallback(Callback):
    """Logs into `tb`. A fresh run (`hparams` given) also writes the custom-scalars layout and
    its HParams entry: `hparams` {setting: value} with the metric tags `metric_tags`."""

    def __init__(
        self,
        tb: TensorBoardLog,
        log_every: int,
        hparams: Mapping[str, Any] | None = None,
        metric_tags: Sequence[str] = (),
    ) -> None:
        self.tb, self.every = tb, log_every
        self.hparams, self.metric_tags = hparams, metric_tags
        self.last: Step | None = None
        self.logged = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.hparams is None:
            return
        quantities = [q for q, v in trainer.strategy.report().items() if v.dim() == 1]
        self.tb.layout({q: [f"^{q}/"] for q in ("loss_raw", "loss_weighted", *quantities)})
        self.tb.hparams(self.hparams, self.metric_tags)

    def on_step_end(self, trainer: Trainer, step: Step) -> None:
        self.last = step
        if step.number % self.every == 0:
            self.log_step(trainer, step)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.last is not None and self.logged != self.last.number:
            self.log_step(trainer, self.last)

    def log_step(self, trainer: Trainer, step: Step) -> None:
        names, losses = trainer.strategy.names, step.losses.detach()
        values: dict[str, Tensor | float] = {"loss/total": step.total}
        for i, name in enumerate(names):
            values[f"loss_raw/{name}"] = losses[i]
            values[f"loss_weighted/{name}"] = step.parts[i]
        for quantity, value in trainer.strategy.report().items():
            if value.dim() == 0:
                values[quantity] = value
            else:
                values.update({f"{quantity}/{n}": value[i] for i, n in enumerate(names)})
        values["lr"] = trainer.optimizer.param_groups[0]["lr"]
        values["nonfinite_steps"] = trainer.skipped_steps
        self.tb.scalars(values, step.number)
        self.logged = step.number

    def on_evaluation(
        self, trainer: Trainer, train: dict[str, float], test: dict[str, float]
    ) -> None:
        scalars = {f"train/{k}": v for k, v in train.items()}
        scalars.update({f"test/{k}": v for k, v in test.items()})
        self.tb.scalars(scalars, trainer.step)
