"""Data sets: one module each; every one returns a `MultiTaskData` (tensors and task specs)."""

from mtltrain.data.base import MultiTaskData, Split

__all__ = ["MultiTaskData", "Split"]
