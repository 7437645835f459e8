"""Data sets: one module each; every one returns a `MultiTaskData` (task specs, and per split
tensors or a torch Dataset)."""

from mtltrain.data.base import DatasetSplit, MultiTaskData, Split

__all__ = ["DatasetSplit", "MultiTaskData", "Split"]
