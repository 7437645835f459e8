"""Data sets: one module each; every one returns a `MultiTaskData` (task specs made with
`task_specs`, and per split tensors or a torch Dataset)."""

from mtltrain.data.base import DatasetSplit, MultiTaskData, Split, task_specs

__all__ = ["DatasetSplit", "MultiTaskData", "Split", "task_specs"]
