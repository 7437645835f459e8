"""TensorBoard of a run: losses, weights and what the strategy learns every `log_every` steps
and at the last step, train and test metrics at each evaluation; for a fresh run a
custom-scalars layout, the config as text, and an HParams entry whose columns are the run's
choices and overrides and whose metrics are the test metrics and the final learned quantities
(`final/<quantity>/<term>`)."""

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
        if self.last is not None and self.logged != self.last.number:
            self.log_step(trainer, self.last)
        self.tb.scalars(self.final_values(trainer), trainer.step)

    @staticmethod
    def final_values(trainer: Trainer) -> dict[str, Tensor]:
        """{final/<quantity>/<term> or final/<quantity>: value} of what the strategy learned."""
        values: dict[str, Tensor] = {}
        for quantity, value in trainer.strategy.report().items():
            if value.dim() == 0:
                values[f"final/{quantity}"] = value
            else:
                names = trainer.strategy.names
                values.update({f"final/{quantity}/{n}": value[i] for i, n in enumerate(names)})
        return values

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
        if self.skipped:
            values["nonfinite_steps"] = trainer.skipped_steps
        self.tb.scalars(values, step.number)
        self.logged = step.number

    def on_evaluation(
        self, trainer: Trainer, train: dict[str, float], test: dict[str, float]
    ) -> None:
        scalars = {f"train/{k}": v for k, v in train.items()}
        scalars.update({f"test/{k}": v for k, v in test.items()})
        self.tb.scalars(scalars, trainer.step)
