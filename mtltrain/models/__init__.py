"""Models: a shared encoder and one head per task."""

from mtltrain.models.multitask import MultiTaskModel

__all__ = ["MultiTaskModel"]
