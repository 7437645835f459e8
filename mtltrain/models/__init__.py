"""Models: a shared encoder and one head per task, behind the `MultiTaskNet` protocol."""

from mtltrain.models.base import MultiTaskNet
from mtltrain.models.multitask import MultiTaskModel

__all__ = ["MultiTaskModel", "MultiTaskNet"]
