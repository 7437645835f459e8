"""TensorBoard: one writer per run, scalars read from the device in one sync, a custom-scalars
layout with one chart per learned quantity, and hyper-parameters without a stray extra run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


class TensorBoardLog:
    """Writes a run's event files into `log_dir`, made at the first write (a run that fails
    before training leaves none); use as a context manager so it always closes."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:
            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()

    def scalars(self, values: Mapping[str, Tensor | float], step: int) -> None:
        """Log {tag: value}; tensor values are moved to the host together, in one sync."""
        tags = [k for k, v in values.items() if isinstance(v, Tensor)]
        if tags:
            host = torch.stack([values[k].float().reshape(()) for k in tags]).tolist()
            values = {**values, **dict(zip(tags, host, strict=True))}
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Log an H×W×3 uint8 image."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def text(self, tag: str, text: str) -> None:
        """Log Markdown text (the Text tab)."""
        self.writer.add_text(tag, text)

    def layout(self, charts: Mapping[str, Sequence[str]]) -> None:
        """Custom-scalars dashboard: one multi-line chart per {title: [tag regex, ...]}."""
        self.writer.add_custom_scalars(
            {"mtltrain": {title: ["Multiline", list(tags)] for title, tags in charts.items()}}
        )

    def hparams(self, params: Mapping[str, Any], metric_tags: Sequence[str]) -> None:
        """Register the run in the HParams dashboard; metrics are read from the scalar tags.

        SummaryWriter.add_hparams would write into a new sub-run; writing the three summaries
        into this run's own file keeps one run per job.
        """
        exp, ssi, sei = hparams(dict(params), {tag: float("nan") for tag in metric_tags})
        file_writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
