"""TensorBoard of a run: losses, weights and what the strategy learns every `log_every` steps
and at the last step, the metrics of every split at each evaluation; for a fresh run a
custom-scalars layout, the config as text, and an HParams entry whose columns are the run's
choices and overrides and whose metrics are the validation and test metrics and the final
learned quantities (`final/<quantity>/<term>`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtltrain.callbacks import Callback
from mtltrain.tblog import TensorBoardLog

if TYPE_CHECKING:
    from mtltrain.selection import Metrics
    from mtltrain.step import Step
    from mtltrain.train import Trainer


class TensorBoardCallback(Callback):
    """Logs into `tb`; `skipped` adds the count of skipped steps (trainer.nonfinite=skip). A
    fresh run (`hparams` given: {setting: value}) also writes its layout, `config` as text and
    its HParams entry, with `metric_tags` and the final learned quantities as its metrics."""

    def __init__(
        self,
        tb: TensorBoardLog,
        log_every: int,
        skipped: bool = False,
        hparams: Mapping[str, Any] | None = None,
        config: str = "",
        metric_tags: Sequence[str] = (),
    ) -> None:
        self.tb, self.every, self.skipped = tb, log_every, skipped
        self.hparams, self.config, self.metric_tags = hparams, config, metric_tags
        self.last: Step | None = None
        self.logged = 0
        self.previous: dict[str, Tensor] = {}
        self.left_out: set[str] = set()

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.hparams is None:
            return
        report = trainer.strategy.report()
        per_term = [q for q, v in report.items() if v.dim() == 1]
        self.tb.layout({q: [f"^{q}/"] for q in ("loss_raw", "loss_weighted", *per_term)})
        self.tb.text("config", f"```yaml\n{self.config}```")
        finals = list(self.final_values(trainer))
        self.tb.hparams(self.hparams, [*self.metric_tags, *finals])

    def on_step_end(self, trainer: Trainer, step: Step) -> None:
        self.last = step
        if step.number % self.every == 0:
            self.log_step(trainer, step)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.last is not None:
            if self.logged != self.last.number:
                self.log_step(trainer, self.last)
            self.log_unchanged(trainer, self.last.number)
        self.tb.scalars(self.final_values(trainer), trainer.step)

    def final_values(self, trainer: Trainer) -> dict[str, Tensor]:
        """{final/<quantity>/<term> or final/<quantity>: value} of what the strategy learned."""
        values: dict[str, Tensor] = {}
        for quantity, value in trainer.strategy.report().items():
            values.update(
                {f"final/{tag}": v for tag, v in self.tags(trainer, quantity, value).items()}
            )
        return values

    def log_step(self, trainer: Trainer, step: Step) -> None:
        """The step's scalars. A quantity the strategy reports, or the skip count, that has not
        changed since it was last logged is left out (fixed weights would draw flat lines)
        until the last step, which has every series."""
        names, losses = trainer.strategy.names, step.losses.detach()
        values: dict[str, Tensor | float] = {"loss/total": step.total}
        for i, name in enumerate(names):
            values[f"loss_raw/{name}"] = losses[i]
            values[f"loss_weighted/{name}"] = step.parts[i]
        self.left_out = set()
        for quantity, value in self.series(trainer).items():
            last = self.previous.get(quantity)
            if last is None or not torch.equal(last, value):
                self.previous[quantity] = value.clone()
                values.update(self.tags(trainer, quantity, value))
            else:
                self.left_out.add(quantity)
        self.tb.scalars(values, step.number)
        self.logged = step.number

    def log_unchanged(self, trainer: Trainer, step: int) -> None:
        """The series the last log_step left out because they had not changed, at `step`."""
        values: dict[str, Tensor | float] = {}
        for quantity, value in self.series(trainer).items():
            if quantity in self.left_out:
                values.update(self.tags(trainer, quantity, value))
        self.tb.scalars(values, step)

    def series(self, trainer: Trainer) -> dict[str, Tensor]:
        """What the strategy reports, and the count of skipped steps in skip mode."""
        report = dict(trainer.strategy.report())
        if self.skipped:
            report["nonfinite_steps"] = torch.tensor(trainer.skipped_steps)
        return report

    @staticmethod
    def tags(trainer: Trainer, quantity: str, value: Tensor) -> dict[str, Tensor]:
        """{<quantity>/<term>: value} of a per-term quantity, {<quantity>: value} of another."""
        if value.dim() == 0:
            return {quantity: value}
        return {f"{quantity}/{n}": value[i] for i, n in enumerate(trainer.strategy.names)}

    def on_evaluation(self, trainer: Trainer, metrics: Metrics) -> None:
        scalars = {
            f"{split}/{k}": v for split, values in metrics.items() for k, v in values.items()
        }
        self.tb.scalars(scalars, trainer.step)
