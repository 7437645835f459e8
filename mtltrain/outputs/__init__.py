"""What runs leave behind, and the callbacks that write it: the run folder and its checks,
`results.json`, the loggers (TensorBoard event files, CSV, MLflow, W&B), checkpoints, figures and
the progress bar.

What is exported here is public; the underscore modules are this package's own. Each name is
imported when first used: the command checks its run folder before it imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtltrain.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from mtltrain.outputs._checkpoints import CheckpointCallback
    from mtltrain.outputs._csv_log import CsvLog
    from mtltrain.outputs._event_writer import TensorBoardLog
    from mtltrain.outputs._figures import FiguresCallback
    from mtltrain.outputs._logger import Logger, LoggersCallback
    from mtltrain.outputs._mlflow_log import MlflowLog
    from mtltrain.outputs._progress import ProgressCallback
    from mtltrain.outputs._results import RESULTS_FILE, Results, read_results
    from mtltrain.outputs._tensorboard import TensorBoardCallback
    from mtltrain.outputs._wandb_log import WandbLog

__all__ = [
    "RESULTS_FILE",
    "CheckpointCallback",
    "CsvLog",
    "FiguresCallback",
    "Logger",
    "LoggersCallback",
    "MlflowLog",
    "ProgressCallback",
    "Results",
    "TensorBoardCallback",
    "TensorBoardLog",
    "WandbLog",
    "read_results",
]
_HOME = {
    "RESULTS_FILE": "._results",
    "CheckpointCallback": "._checkpoints",
    "CsvLog": "._csv_log",
    "Logger": "._logger",
    "LoggersCallback": "._logger",
    "MlflowLog": "._mlflow_log",
    "WandbLog": "._wandb_log",
    "FiguresCallback": "._figures",
    "ProgressCallback": "._progress",
    "Results": "._results",
    "TensorBoardCallback": "._tensorboard",
    "TensorBoardLog": "._event_writer",
    "read_results": "._results",
}

__getattr__ = lazy_exports(__name__, _HOME)
