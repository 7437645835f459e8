"""TensorBoard: one writer per run, scalars read from the device in one sync, a custom-scalars
layout, and the run's HParams entry in a sub-run of its own.

HParams. TensorBoard's hparams plugin takes its columns either from an experiment summary
(`hparams_config`) or, where no run has one, from the session start infos of all runs it sees,
marking each column `differs` where its values differ between them; the HParams tab puts the
differing columns first, each group in order of name, and ticks the first five. A run knows
only itself, and the plugin takes the experiment summary of whichever run it reads first, so a
run here writes none: TensorBoard works out what differs across the runs under its --logdir.
The plugin then reads as metrics every scalar in the session's run and the runs below it, so
the session is a sub-run, tb/hparams/, that holds only the HParams metrics (one point each, at
the run's last step): a session in tb/ itself would make every logged series a metric. Values
are written as strings, shown as given (TensorBoard shows a number to 5 significant digits: the
seed 3 as 3.0000). No trial (group) name is set: TensorBoard averages the runs of one group
into one row, so each run is its own trial, named by its folder. A run's tags are one more
column, `tags` (comma-separated), and a text entry; a run without tags has neither.

Resuming: the writers purge the steps past the checkpoint the run continues from (TensorBoard
drops the points a stopped run logged after it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from mtltrain.outputs._run_folder import TB

HPARAMS_RUN = "hparams"  # the sub-run of tb/ with the run's HParams session and metrics


class TensorBoardLog:
    """A `mtltrain.outputs.Logger` that writes a run's event files into folder/tb (its HParams
    entry into tb/hparams), made at the first write (a run that fails before training leaves
    none); a run resumed after `resume_step` purges the steps past it. Use as a context
    manager, or `close` it."""

    def __init__(self, folder: Path, resume_step: int | None = None) -> None:
        self.log_dir = folder / TB
        self.purge_step = None if resume_step is None else resume_step + 1
        self._writers: dict[Path, SummaryWriter] = {}

    @property
    def writer(self) -> SummaryWriter:
        return self._writer(self.log_dir)

    def _writer(self, folder: Path) -> SummaryWriter:
        if folder not in self._writers:
            self._writers[folder] = SummaryWriter(str(folder), purge_step=self.purge_step)
        return self._writers[folder]

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    def start(self, hparams: Mapping[str, str], tags: Sequence[str]) -> None:
        """The HParams session (with a `tags` column) and the tags as text, where given."""
        if tags:
            self.text("tags", ", ".join(tags))
        self.session_start({**hparams, **({"tags": ",".join(tags)} if tags else {})})

    def finish(self, values: Mapping[str, Tensor | float], step: int) -> None:
        """The run's final values as its HParams metrics (`session_end`)."""
        self.session_end(values, step)

    def scalars(self, values: Mapping[str, Tensor | float], step: int) -> None:
        """Log {tag: value}; tensor values are moved to the host together, in one sync."""
        _add_scalars(self.writer, values, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Log an H×W×3 uint8 image."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def text(self, tag: str, text: str) -> None:
        """Log Markdown text (the Text tab)."""
        self.writer.add_text(tag, text)

    def layout(self, categories: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        """Custom-scalars dashboard: {category: {chart title: [tag regex, ...]}}, one
        multi-line chart each. TensorBoard merges the layouts of all runs, category by title,
        and a chart draws every tag its regexes match in every run shown."""
        self.writer.add_custom_scalars(
            {
                category: {title: ["Multiline", list(tags)] for title, tags in charts.items()}
                for category, charts in categories.items()
            }
        )

    def session_start(self, params: Mapping[str, str]) -> None:
        """The run's HParams session, in the sub-run: {column: value}."""
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in params.items():
            start.hparams[name].string_value = value
        data = plugin_data_pb2.HParamsPluginData(session_start_info=start)
        self._hparams_summary(metadata.SESSION_START_INFO_TAG, data, 0)

    def session_end(self, metrics: Mapping[str, Tensor | float], step: int) -> None:
        """The run's HParams metrics, one point each at `step`, and its session's end."""
        _add_scalars(self._writer(self.log_dir / HPARAMS_RUN), metrics, step)
        end = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
        )
        data = plugin_data_pb2.HParamsPluginData(session_end_info=end)
        self._hparams_summary(metadata.SESSION_END_INFO_TAG, data, step)

    def _hparams_summary(
        self, tag: str, data: plugin_data_pb2.HParamsPluginData, step: int
    ) -> None:
        summary = Summary()
        summary.value.add(
            tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR
        )
        self._writer(self.log_dir / HPARAMS_RUN).file_writer.add_summary(summary, step)


def _add_scalars(writer: SummaryWriter, values: Mapping[str, Tensor | float], step: int) -> None:
    """{tag: value} at `step`; tensor values are moved to the host together, in one sync."""
    tags = [k for k, v in values.items() if isinstance(v, Tensor)]
    if tags:
        host = torch.stack([values[k].float().reshape(()) for k in tags]).tolist()
        values = {**values, **dict(zip(tags, host, strict=True))}
    for tag, value in values.items():
        writer.add_scalar(tag, value, step)
