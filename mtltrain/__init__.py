"""mtltrain: train multi-task networks and learn how to weigh their losses.

The public surface: what this module and each package's `__init__` export. A run from Python
is `train(overrides, run_dir)`, the same run the `mtltrain` command makes; a strategy in one's
own training loop is `create_strategy`, `backward` and `after_step` (docs/library.md).
Each name is imported when first used, so that the command starts (and says what is wrong with
its arguments) without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtltrain.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from mtltrain.build import build_job
    from mtltrain.config import compose_checked
    from mtltrain.data import MultiTaskData, Split
    from mtltrain.loop import Callback, Job, Trainer
    from mtltrain.models import MultiTaskModel, MultiTaskNet
    from mtltrain.outputs import Results
    from mtltrain.own_loop import after_step, backward, create_strategy
    from mtltrain.run import train
    from mtltrain.step import Step, StepRunner
    from mtltrain.tasks import TaskSpec
    from mtltrain.weighting import Weighting

__version__ = "0.1.0"
__all__ = [
    "Callback",
    "Job",
    "MultiTaskData",
    "MultiTaskModel",
    "MultiTaskNet",
    "Results",
    "Split",
    "Step",
    "StepRunner",
    "TaskSpec",
    "Trainer",
    "Weighting",
    "after_step",
    "backward",
    "build_job",
    "compose_checked",
    "create_strategy",
    "train",
]
_HOME = {
    "Callback": "mtltrain.loop",
    "Job": "mtltrain.loop",
    "MultiTaskData": "mtltrain.data",
    "MultiTaskModel": "mtltrain.models",
    "MultiTaskNet": "mtltrain.models",
    "Results": "mtltrain.outputs",
    "Split": "mtltrain.data",
    "Step": "mtltrain.step",
    "StepRunner": "mtltrain.step",
    "TaskSpec": "mtltrain.tasks",
    "Trainer": "mtltrain.loop",
    "Weighting": "mtltrain.weighting",
    "after_step": "mtltrain.own_loop",
    "backward": "mtltrain.own_loop",
    "build_job": "mtltrain.build",
    "compose_checked": "mtltrain.config",
    "create_strategy": "mtltrain.own_loop",
    "train": "mtltrain.run",
}

__getattr__ = lazy_exports(__name__, _HOME)
