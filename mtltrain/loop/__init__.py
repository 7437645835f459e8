"""The training loop and what it is made of: the trainer, the per-job and stacked steps, the
engine (the backward pass), the optimizer steps, model selection, signals, the process group of
torchrun, and the `Callback` hooks everything else plugs into.

What is exported here is public; the underscore modules are this package's own."""

from mtltrain.loop._callbacks import Callback
from mtltrain.loop._engine import engine_for
from mtltrain.loop._selection import Selection
from mtltrain.loop._stacked import StackedTrainer
from mtltrain.loop._trainer import Trainer, evaluate

__all__ = ["Callback", "Selection", "StackedTrainer", "Trainer", "engine_for", "evaluate"]
