"""Pictures of the model on the test split (`mtltrain.outputs._pictures`): into TensorBoard every
`figure_every` evaluations, and once at the end into TensorBoard and the run's figures/ (without
a TensorBoard logger: into figures/ alone)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mtltrain.loop._callbacks import Callback
from mtltrain.outputs._event_writer import TensorBoardLog

if TYPE_CHECKING:
    from mtltrain.loop._job import Job
    from mtltrain.loop._selection import Metrics


class FiguresCallback(Callback):
    """Draws into `tb` every `every` evaluations before the last (0: never then) and at the
    end, when the final pictures also go to `folder` as PNG files (`tb` None: only those)."""

    def __init__(self, tb: TensorBoardLog | None, every: int, folder: Path) -> None:
        self.tb, self.every, self.folder = tb, every, folder

    def on_evaluation(self, job: Job, metrics: Metrics) -> None:
        due = self.every and job.evaluations % self.every == 0
        if due and job.epoch < job.epochs and self.tb is not None:
            self.draw(job, folder=None)

    def on_fit_end(self, job: Job) -> None:
        self.draw(job, self.folder)

    def draw(self, job: Job, folder: Path | None) -> None:
        from mtltrain.outputs import (
            _pictures as figures,  # matplotlib loads with the first figure (0.6 s)
        )

        rendered = figures.render(job.model, job.data.test, job.data.tasks)
        if rendered and folder is not None:
            folder.mkdir(exist_ok=True)
        for name, fig in rendered.items():
            image = figures.to_rgb(fig)
            if self.tb is not None:
                self.tb.image(f"figures/{name}", image, job.step)
            if folder is not None:
                figures.save_png(image, folder / f"{name}.png")
