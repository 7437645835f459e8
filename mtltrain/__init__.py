"""mtltrain: train multi-task networks and learn how to weigh their losses.

The public surface: what this module and each package's `__init__` export. A run from Python
is `run(compose_checked(overrides), run_dir)`, the same call the `mtltrain` command makes."""

from mtltrain.build import build_trainer
from mtltrain.config import compose_checked
from mtltrain.data import MultiTaskData, Split
from mtltrain.loop import Callback, Trainer
from mtltrain.models import MultiTaskModel
from mtltrain.models.base import MultiTaskNet
from mtltrain.run import run
from mtltrain.step import Step
from mtltrain.tasks import TaskSpec
from mtltrain.weighting import Weighting

__version__ = "0.1.0"
__all__ = [
    "Callback",
    "MultiTaskData",
    "MultiTaskModel",
    "MultiTaskNet",
    "Split",
    "Step",
    "TaskSpec",
    "Trainer",
    "Weighting",
    "build_trainer",
    "compose_checked",
    "run",
]
