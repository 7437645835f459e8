"""NYUv2 as MTAN's code reads it (Liu et al. 2019): the preprocessed 288×384 release, 795
training and 654 test images; tasks `semantic` (13 classes, −1: unlabelled), `depth` (0: no
depth) and `normals` (unit surface normals, 0: none).

The files are not downloaded (they are hosted by MTAN's authors, not on a registry): get them
through the links in MTAN's README (https://github.com/lorenmt/mtan) and unpack them so that
`dataset.root` holds `train/` and `val/` (the test split), each with `image/`, `label/`,
`depth/` and `normal/` folders of `<index>.npy` files, index 0, 1, …: an image H×W×3, a label
H×W (float, class or −1), a depth H×W×1, a normal H×W×3. Images are read one at a time (the
data-loader path). `augment` (training split only): the random scale-crop and horizontal flip
of MTAN's and Nash-MTL's code (a crop of 1/s of each side, s drawn from 1.0, 1.2, 1.5, resized
back — bilinear for image and normals, nearest for labels and depth — depth divided by s; a
flip with probability ½ negates the normals' x component).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mtltrain.constraints import Seed, checked
from mtltrain.data.base import DatasetSplit, MultiTaskData, check_tasks, held_out, task_specs
from mtltrain.errors import DataError, first_line
from mtltrain.tasks import LossChoice, MetricChoice, TaskSpec

AVAILABLE = {"semantic": ("semantic", 13), "depth": ("depth", 1), "normals": ("normals", 3)}
FOLDERS = {"semantic": "label", "depth": "depth", "normals": "normal"}  # task → its folder
SPLITS = {"train": "train", "test": "val"}  # our split → the release's folder
SCALES = (1.0, 1.2, 1.5)  # the scale-crop's choices


class MtanFolders(Dataset):
    """One split folder of MTAN's preprocessed release: item i is (image [3, H, W] float32,
    {task: target}) from `<folder>/image/<i>.npy` and each task's `<folder>/<sub>/<i>.npy`
    (`folders`: task → sub-folder); semantic targets int64 [H, W], the others float32
    [C, H, W]; `augment`: `scale_crop_flip` on each item."""

    def __init__(self, folder: Path, folders: Mapping[str, str], augment: bool = False) -> None:
        self.folder, self.folders, self.augment = folder, dict(folders), augment
        self.size = len(list((folder / "image").glob("*.npy")))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = _channels_first(self._load("image", index))
        targets = {task: self._load(sub, index) for task, sub in self.folders.items()}
        targets = {
            task: value.long() if task == "semantic" else _channels_first(value)
            for task, value in targets.items()
        }
        if self.augment:
            image, targets = scale_crop_flip(image, targets)
        return image, targets

    def _load(self, sub: str, index: int) -> Tensor:
        path = self.folder / sub / f"{index}.npy"
        try:
            return torch.from_numpy(np.load(path)).float()
        except (OSError, ValueError) as e:  # missing, unreadable or not an array
            raise DataError(
                f"{path} cannot be read ({type(e).__name__}: {first_line(e)}): every index of "
                f"{self.folder / 'image'} needs a .npy file of MTAN's release in each folder"
            ) from None


def _channels_first(array: Tensor) -> Tensor:
    """H×W×C → C×H×W."""
    return array.permute(2, 0, 1).contiguous()


def scale_crop_flip(image: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """A random crop of 1/s of each side (s uniform among `SCALES`, the corner uniform) resized
    back to H×W, depth divided by s; then with probability ½ a horizontal flip, normals' x
    negated. Draws from torch's generator."""
    height, width = image.shape[-2:]
    scale = SCALES[int(torch.randint(len(SCALES), ()))]
    h, w = int(height / scale), int(width / scale)
    top, left = int(torch.randint(height - h + 1, ())), int(torch.randint(width - w + 1, ()))

    def resized(t: Tensor, mode: str) -> Tensor:
        crop = t[None, :, top : top + h, left : left + w]
        smooth = {"align_corners": True} if mode == "bilinear" else {}
        return F.interpolate(crop, size=(height, width), mode=mode, **smooth)[0]

    image = resized(image, "bilinear")
    out = {}
    for task, t in targets.items():
        if task == "semantic":
            out[task] = resized(t[None].float(), "nearest")[0].long()
        elif task == "depth":
            out[task] = resized(t, "nearest") / scale
        else:
            out[task] = resized(t, "bilinear")
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
        out = {task: t.flip(-1) for task, t in out.items()}
        if "normals" in out:
            out["normals"][0].neg_()
    return image, out


def split_folders(root: str, name: str, needed: Sequence[str], source: str) -> dict[str, Path]:
    """`root`/train and `root`/val, each holding the `needed` sub-folders with .npy files; a
    DataError in one line saying where to get the files and where to put them otherwise."""
    base = Path(root).expanduser()
    folders = {split: base / sub for split, sub in SPLITS.items()}
    for folder in folders.values():
        for sub in needed:
            if not any((folder / sub).glob("0.npy")):
                raise DataError(
                    f"dataset.root={root}: {name} not found ({folder / sub}/0.npy is missing); "
                    f"download MTAN's preprocessed {name} from the links in {source} and unpack "
                    f"it so that dataset.root holds train/ and val/, each with "
                    f"{'/, '.join(needed)}/ of <index>.npy files"
                )
    return folders


MTAN = "https://github.com/lorenmt/mtan's README"


def held_out_unaugmented(
    specs: tuple[TaskSpec, ...],
    folders: Mapping[str, Path],
    subs: Mapping[str, str],
    augment: bool,
    validation: float,
    seed: int,
) -> MultiTaskData:
    """Train (augmented where `augment`) and test splits of `folders`, and `validation`
    training images (a fraction or a count, drawn by `seed`) held out without augmentation."""
    train = MtanFolders(folders["train"], subs, augment)
    test = DatasetSplit(MtanFolders(folders["test"], subs))
    kept, held = held_out(len(train), validation, seed)
    if len(held) == 0:
        return MultiTaskData(specs, DatasetSplit(train), test)
    plain = DatasetSplit(MtanFolders(folders["train"], subs))
    return MultiTaskData(specs, DatasetSplit(train).take(kept), test, plain.take(held))


@checked("dataset", lambda settings: check_tasks(settings["tasks"], AVAILABLE))
def build(
    losses: Mapping[str, Sequence[LossChoice]],
    root: str = "data/nyuv2",
    tasks: Sequence[str] = ("semantic", "depth", "normals"),
    augment: bool = True,
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
    validation: float = 0,
    validation_seed: Seed = 0,
) -> MultiTaskData:
    """NYUv2 from `root` (see the module's docstring), the training split augmented where
    `augment`; `validation` training images (drawn by `validation_seed`) held out, not
    augmented."""
    specs = task_specs(tasks, AVAILABLE, losses, metrics)
    folders = split_folders(root, "NYUv2", ["image", *(FOLDERS[t] for t in tasks)], MTAN)
    subs = {t: FOLDERS[t] for t in tasks}
    return held_out_unaugmented(specs, folders, subs, augment, validation, validation_seed)
