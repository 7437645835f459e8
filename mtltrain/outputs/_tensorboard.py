"""What only TensorBoard shows of a run (`logger=tensorboard`): for a fresh run a custom-scalars
layout and the config as text. Its scalars, HParams session and HParams metrics come from
`mtltrain.outputs._logger.LoggersCallback`, as every logger's; its figures from
`mtltrain.outputs._figures`.

HParams metrics (in the sub-run tb/hparams, see `mtltrain.outputs._event_writer`): the final
values, named so that their one-point charts sort after the losses, metrics and weights in the
Scalars tab (weighting/ after loss…/, test/, train/, validation/, weight/: at the top they would
come before the curves to read) and after the test and validation metrics among the HParams
metrics, of which TensorBoard ticks the first five. (The learned ones are the last points of the
learned series in tb/; they are written again because a metric must be in the session's own run.)

Custom Scalars: a chart draws every tag its regexes match in every run shown, so each chart
holds one quantity that means the same in every run that logs it: per task metric, its train,
validation and test curves; per quantity a strategy learns (σ, log σ², c, κ̄, FAMO's z, ...),
its curves for every loss term. Weights are left out: every strategy has them, each on its own
scale (fixed weights 1, uncertainty weighting's 1/(2σ²), FAMO's sum to 1), so a sweep's chart
of them would put those on one axis; each term's weight is in the Scalars tab.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtltrain.loop._callbacks import Callback
from mtltrain.outputs._event_writer import TensorBoardLog
from mtltrain.outputs._logger import SHARED

if TYPE_CHECKING:
    from mtltrain.loop._job import Job

METRIC_CHARTS = "each metric: train, validation, test"
LEARNED_CHARTS = "what strategies learn, by quantity (weights: Scalars tab)"


class TensorBoardCallback(Callback):
    """Writes into `tb`, for a fresh run (`fresh`), its layout (with a chart for each of
    `metrics`, "<task>/<metric>") and `config` as text."""

    def __init__(
        self, tb: TensorBoardLog, fresh: bool, config: str = "", metrics: Sequence[str] = ()
    ) -> None:
        self.tb, self.fresh, self.config, self.metrics = tb, fresh, config, metrics

    def on_fit_start(self, job: Job) -> None:
        if not self.fresh:
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
