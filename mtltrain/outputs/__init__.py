"""What runs leave behind, and the callbacks that write it: the run folder and its checks,
`results.json`, TensorBoard event files, checkpoints, figures and the progress bar.

What is exported here is public; the underscore modules are this package's own."""

from mtltrain.outputs._checkpoints import CheckpointCallback
from mtltrain.outputs._event_writer import TensorBoardLog
from mtltrain.outputs._figures import FiguresCallback
from mtltrain.outputs._progress import ProgressCallback
from mtltrain.outputs._results import RESULTS_FILE, read_results
from mtltrain.outputs._tensorboard import TensorBoardCallback

__all__ = [
    "RESULTS_FILE",
    "CheckpointCallback",
    "FiguresCallback",
    "ProgressCallback",
    "TensorBoardCallback",
    "TensorBoardLog",
    "read_results",
]
