"""Pictures of the model on the test split (`mtltrain.outputs._pictures`): into TensorBoard every
`figure_every` evaluations, and once at the end into TensorBoard and the run's figures/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mtltrain.loop._callbacks import Callback
from mtltrain.outputs._event_writer import TensorBoardLog

if TYPE_CHECKING:
    from mtltrain.loop._selection import Metrics
    from mtltrain.loop._trainer import Trainer


class FiguresCallback(Callback):
    """Draws every `every` evaluations before the last (0: never then) and at the end, when
    the final pictures also go to `folder` as PNG files."""

    def __init__(self, tb: TensorBoardLog, every: int, folder: Path) -> None:
        self.tb, self.every, self.folder = tb, every, folder

    def on_evaluation(self, trainer: Trainer, metrics: Metrics) -> None:
        due = self.every and trainer.evaluations % self.every == 0
        if due and trainer.epoch < trainer.epochs:
            self.draw(trainer, folder=None)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.draw(trainer, self.folder)

    def draw(self, trainer: Trainer, folder: Path | None) -> None:
        from mtltrain.outputs import (
            _pictures as figures,  # matplotlib loads with the first figure (0.6 s)
        )

        rendered = figures.render(trainer.model, trainer.data.test, trainer.data.tasks)
        if rendered and folder is not None:
            folder.mkdir(exist_ok=True)
        for name, fig in rendered.items():
            image = figures.to_rgb(fig)
            self.tb.image(f"figures/{name}", image, trainer.step)
            if folder is not None:
                figures.save_png(image, folder / f"{name}.png")
