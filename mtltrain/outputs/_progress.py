"""What a person watching sees: one progress bar over the run's steps with the loss and an
estimate of the time left (on a terminal only), and about ten log lines of test metrics."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from mtltrain.loop._callbacks import Callback

if TYPE_CHECKING:
    from mtltrain.loop._job import Job
    from mtltrain.loop._selection import Metrics
    from mtltrain.step import Step

log = logging.getLogger("mtltrain.loop._trainer")


class ProgressCallback(Callback):
    """A tqdm bar over all steps of the run (`show`: None shows it on a terminal only, False
    never), its loss refreshed every `log_every` steps; a log line every `lines_every`
    evaluations and at the last."""

    def __init__(self, show: bool | None, log_every: int, lines_every: int) -> None:
        self.show, self.every, self.lines_every = show, log_every, lines_every
        self.bar: tqdm | None = None

    def on_fit_start(self, job: Job) -> None:
        self.bar = tqdm(
            total=job.epochs * job.batches_per_epoch,
            initial=job.step,
            unit="step",
            desc="train",
            leave=False,
            dynamic_ncols=True,
            disable=None if self.show is None else not self.show,
        )

    def on_step_end(self, job: Job, step: Step) -> None:
        if self.bar is None:  # stepped outside fit (a benchmark): nothing to show
            return
        self.bar.update()
        if not self.bar.disable and step.number % self.every == 0:
            self.bar.set_postfix(loss=f"{step.total.item():.4g}", refresh=False)

    def on_evaluation(self, job: Job, metrics: Metrics) -> None:
        if job.evaluations % self.lines_every == 0 or job.epoch == job.epochs:
            shown = "  ".join(
                f"{split} " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                for split, values in metrics.items()
                if split != "train"
            )
            where = f"epoch {job.epoch}/{job.epochs}  step {job.step}"
            log.info("%s  train loss %.4g  %s", where, metrics["train"]["loss"], shown)

    def on_interrupt(self, job: Job) -> None:
        self.close()

    def on_fit_end(self, job: Job) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
