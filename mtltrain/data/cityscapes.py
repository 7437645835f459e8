"""Cityscapes as MTAN's code reads it (Liu et al. 2019): the preprocessed 128×256 release, 2975
training and 500 test (validation) images; tasks `semantic` (7 classes, `label_7`, −1:
unlabelled) and `depth` (0: no depth).

Not downloaded (Cityscapes' terms need a login; MTAN's authors host the preprocessed files): get
them through the links in MTAN's README (https://github.com/lorenmt/mtan) and unpack them so
that `dataset.root` holds `train/` and `val/`, each with `image/`, `label_7/` and `depth/`
folders of `<index>.npy` files (an image H×W×3, a label H×W, a depth H×W×1), read one at a
time. `augment` (training split only): NYUv2's random scale-crop and flip
(`mtltrain.data.nyuv2.scale_crop_flip`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mtltrain.constraints import Seed, checked
from mtltrain.data.base import MultiTaskData, check_tasks, task_specs
from mtltrain.data.nyuv2 import MTAN, held_out_unaugmented, split_folders
from mtltrain.tasks import LossChoice, MetricChoice

AVAILABLE = {"semantic": ("semantic", 7), "depth": ("depth", 1)}
FOLDERS = {"semantic": "label_7", "depth": "depth"}  # task → its folder


@checked("dataset", lambda settings: check_tasks(settings["tasks"], AVAILABLE))
def build(
    losses: Mapping[str, Sequence[LossChoice]],
    root: str = "data/cityscapes",
    tasks: Sequence[str] = ("semantic", "depth"),
    augment: bool = True,
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
    validation: float = 0,
    validation_seed: Seed = 0,
) -> MultiTaskData:
    """Cityscapes from `root` (see the module's docstring), the training split augmented where
    `augment`; `validation` training images (drawn by `validation_seed`) held out, not
    augmented."""
    specs = task_specs(tasks, AVAILABLE, losses, metrics)
    folders = split_folders(root, "Cityscapes", ["image", *(FOLDERS[t] for t in tasks)], MTAN)
    subs = {t: FOLDERS[t] for t in tasks}
    return held_out_unaugmented(specs, folders, subs, augment, validation, validation_seed)
