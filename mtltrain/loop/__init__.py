"""The training loop and what it is made of: the one `Trainer` over N ≥ 1 jobs, the per-job
record (`Job`), the two steps behind `mtltrain.step.StepRunner` (`PerJobStep` for one job,
`StackedStep` for N stacked ones), the engine (the backward pass), the optimizer steps, model
selection, device and threads, and the `Callback` hooks everything else plugs into.

What is exported here is public; the underscore modules are this package's own."""

from mtltrain.loop._callbacks import Callback
from mtltrain.loop._engine import engine_for, engine_over
from mtltrain.loop._job import Job, evaluate
from mtltrain.loop._job_step import PerJobStep
from mtltrain.loop._selection import Selection
from mtltrain.loop._stacked import StackedStep
from mtltrain.loop._trainer import Trainer, train_alone

__all__ = [
    "Callback",
    "Job",
    "PerJobStep",
    "Selection",
    "StackedStep",
    "Trainer",
    "engine_for",
    "engine_over",
    "evaluate",
    "train_alone",
]
