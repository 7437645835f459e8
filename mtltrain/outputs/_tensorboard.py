"""TensorBoard of a run: losses, weights and what the strategy learns every `log_every` steps
and at the last step, the metrics of every split at each evaluation; for a fresh run a
custom-scalars layout, the config as text and an HParams session whose columns are the settings
that set the run apart (`mtltrain.build.run_hparams`); at the end the run's HParams metrics.

HParams metrics (in the sub-run tb/hparams, see `mtltrain.outputs._event_writer`): the reported
evaluation's validation and test metrics (the last one, or with trainer.select=best the selected
one: what results.json has) under their own tags, and what the strategy learned where training
ended as `weighting/<quantity>/<term>`. They are one point each at the last step. The learned ones
are named so that their one-point charts sort after the losses, metrics and weights in the Scalars
tab (weighting/ after loss…/, test/, train/, validation/, weight/: at the top they would come
before the curves to read) and after the test and validation metrics among the HParams metrics, of
which TensorBoard ticks the first five. (They are the last points of the learned series in tb/;
they are written again because a metric must be in the session's own run.)

Custom Scalars: a chart draws every tag its regexes match in every run shown, so each chart
holds one quantity that means the same in every run that logs it: per task metric, its train,
validation and test curves; per quantity a strategy learns (σ, log σ², c, κ̄, FAMO's z, ...),
its curves for every loss term. Weights are left out: every strategy has them, each on its own
scale (fixed weights 1, uncertainty weighting's 1/(2σ²), FAMO's sum to 1), so a sweep's chart
of them would put those on one axis; each term's weight is in the Scalars tab.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mtltrain.loop._callbacks import Callback
from mtltrain.outputs._event_writer import TensorBoardLog

if TYPE_CHECKING:
    from mtltrain.loop._job import Job
    from mtltrain.loop._selection import Metrics
    from mtltrain.step import Step

METRIC_CHARTS = "each metric: train, validation, test"
LEARNED_CHARTS = "what strategies learn, by quantity (weights: Scalars tab)"
LEARNED = "weighting"  # the HParams metrics of the learned quantities: weighting/<quantity>/…
SHARED = "weight"  # the quantity every strategy reports, each on its own scale


class TensorBoardCallback(Callback):
    """Logs into `tb`; `skipped` adds the count of skipped steps (trainer.nonfinite=skip). A
    fresh run (`hparams` given: {column: value}) also writes its layout (with a chart for each
    of `metrics`, "<task>/<metric>"), `config` as text and its HParams session."""

    def __init__(
        self,
        tb: TensorBoardLog,
        log_every: int,
        skipped: bool = False,
        hparams: Mapping[str, str] | None = None,
        config: str = "",
        metrics: Sequence[str] = (),
    ) -> None:
        self.tb, self.every, self.skipped = tb, log_every, skipped
        self.hparams, self.config, self.metrics = hparams, config, metrics
        self.last: Step | None = None
        self.logged = 0
        self.previous: dict[str, Tensor] = {}
        self.left_out: set[str] = set()

    def on_fit_start(self, job: Job) -> None:
        if self.hparams is None:
            return
        report = job.strategy.report()
        learned = [q for q, v in report.items() if v.dim() == 1 and q != SHARED]
        self.tb.layout(
            {
                METRIC_CHARTS: {
                    m: [f"^(train|validation|test)/{re.escape(m)}$"] for m in self.metrics
                },
                LEARNED_CHARTS: {q: [f"^{re.escape(q)}/"] for q in learned},
            }
        )
        self.tb.text("config", f"```yaml\n{self.config}```")
        self.tb.session_start(self.hparams)

    def on_step_end(self, job: Job, step: Step) -> None:
        self.last = step
        if step.number % self.every == 0:
            self.log_step(job, step)

    def on_fit_end(self, job: Job) -> None:
        if self.last is not None:
            if self.logged != self.last.number:
                self.log_step(job, self.last)
            self.log_unchanged(job, self.last.number)
        self.tb.session_end(self.hparams_metrics(job), job.step)

    def hparams_metrics(self, job: Job) -> dict[str, Tensor | float]:
        """The reported evaluation's {<split>/<task>/<metric>: value} and what the strategy
        learned, {weighting/<quantity>/<term> or weighting/<quantity>: value}."""
        chosen = job.selection.chosen
        evaluated = chosen["metrics"] if chosen is not None else {}
        values: dict[str, Tensor | float] = {
            f"{split}/{k}": v for split, metrics in evaluated.items() for k, v in metrics.items()
        }
        for quantity, value in job.strategy.report().items():
            values.update(
                {f"{LEARNED}/{tag}": v for tag, v in self.tags(job, quantity, value).items()}
            )
        return values

    def log_step(self, job: Job, step: Step) -> None:
        """The step's scalars. A quantity the strategy reports, or the skip count, that has not
        changed since it was last logged is left out (fixed weights would draw flat lines)
        until the last step, which has every series."""
        names, losses = job.strategy.names, step.losses.detach()
        values: dict[str, Tensor | float] = {"loss/total": step.total}
        for i, name in enumerate(names):
            values[f"loss_raw/{name}"] = losses[i]
            values[f"loss_weighted/{name}"] = step.parts[i]
        self.left_out = set()
        for quantity, value in self.series(job).items():
            last = self.previous.get(quantity)
            if last is None or not torch.equal(last, value):
                self.previous[quantity] = value.clone()
                values.update(self.tags(job, quantity, value))
            else:
                self.left_out.add(quantity)
        self.tb.scalars(values, step.number)
        self.logged = step.number

    def log_unchanged(self, job: Job, step: int) -> None:
        """The series the last log_step left out because they had not changed, at `step`."""
        values: dict[str, Tensor | float] = {}
        for quantity, value in self.series(job).items():
            if quantity in self.left_out:
                values.update(self.tags(job, quantity, value))
        self.tb.scalars(values, step)

    def series(self, job: Job) -> dict[str, Tensor]:
        """What the strategy reports, and the count of skipped steps in skip mode."""
        report = dict(job.strategy.report())
        if self.skipped:
            report["nonfinite_steps"] = torch.tensor(job.skipped_steps)
        return report

    @staticmethod
    def tags(job: Job, quantity: str, value: Tensor) -> dict[str, Tensor]:
        """{<quantity>/<term>: value} of a per-term quantity, {<quantity>: value} of another."""
        if value.dim() == 0:
            return {quantity: value}
        return {f"{quantity}/{n}": value[i] for i, n in enumerate(job.strategy.names)}

    def on_evaluation(self, job: Job, metrics: Metrics) -> None:
        scalars = {
            f"{split}/{k}": v for split, values in metrics.items() for k, v in values.items()
        }
        self.tb.scalars(scalars, job.step)
