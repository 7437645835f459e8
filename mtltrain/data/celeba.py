"""CelebA (Liu et al. 2015) as one binary task per face attribute: 40 tasks, as FAMO (Liu et
al. 2023) and the papers after it train it; `tasks` picks a subset.

The files are in torchvision's layout (`torchvision.datasets.CelebA`) under `root`/celeba:
img_align_celeba/ (the aligned 178×218 JPEGs), list_attr_celeba.txt (the image count, the
attribute names, then per image its file and ±1 per attribute) and list_eval_partition.txt (per
image its file and 0 train, 1 valid, 2 test). The tasks are named by the attribute file's
header; a task's target is 1 where the attribute is present (+1), else 0. Train, validation and
test are the official partition's (162,770 / 19,867 / 19,962 images), so `trainer.validation`
stays 0: the validation split is the partition's. Each image is resized to `size`×`size`
(torchvision's Resize: bilinear, antialiased) and scaled to [0, 1] with no mean subtracted, as
FAMO's code does; `dataset.transform` adds more (a Normalize). The images are loaded batch by
batch (`DatasetSplit`), never all at once. `download` passes torchvision's download from
Google Drive through (it needs the gdown package and often meets Drive's quota).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mtltrain.constraints import Seed, Width, checked
from mtltrain.data.base import DatasetSplit, MultiTaskData, check_tasks, task_specs
from mtltrain.errors import ConfigError, DataError
from mtltrain.tasks import LossChoice, MetricChoice

FOLDER = "celeba"  # torchvision's base folder under the root
IMAGES = "img_align_celeba"
ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
PARTS = {"train": 0, "validation": 1, "test": 2}  # list_eval_partition.txt's numbers
SOURCE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
LOSS = "bce"  # every attribute's loss unless dataset.losses names another
# every attribute's metrics unless dataset.metrics names others: accuracy (the main one, as
# Sener & Koltun report CelebA) and F1 (FAMO's)
METRICS = ("accuracy", "f1")


def how_to_get(folder: Path) -> str:
    """Where to get CelebA's files and where to put them."""
    return (
        f"get img_align_celeba.zip, {ATTRIBUTES} and {PARTITION} from {SOURCE} (its Google "
        f"Drive: Img/, Anno/, Eval/), put them in {folder} and unzip img_align_celeba.zip there "
        f"(making {folder / IMAGES}/), then point dataset.root at {folder.parent}"
    )


def find_folder(root: Path, download: bool) -> Path:
    """`root`/celeba holding the images and the two lists, downloaded there through torchvision
    when missing and `download`; otherwise a DataError saying where to get them."""
    folder = root / FOLDER
    needed = [folder / IMAGES, folder / ATTRIBUTES, folder / PARTITION]
    missing = [p for p in needed if not p.exists()]
    if missing and not download:
        raise DataError(
            f"CelebA not found: {missing[0]} does not exist and dataset.download=false; "
            f"{how_to_get(folder)}"
        )
    if missing:
        _download(root, folder)
    return folder


def _download(root: Path, folder: Path) -> None:
    from torchvision.datasets import CelebA

    try:
        CelebA(str(root), split="all", target_type=[], download=True)
    except Exception as e:  # gdown missing, Drive's quota, no network: RuntimeError and kin
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(e).__name__
        raise DataError(
            f"CelebA is not in {folder} and downloading it failed ({reason}); {how_to_get(folder)}"
        ) from None


def _text(path: Path, folder: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise DataError(f"{path} cannot be read ({reason}); {how_to_get(folder)}") from None


def read_attributes(path: Path, folder: Path) -> tuple[list[str], list[str], Tensor]:
    """The attribute names (the header, line 2), the image files and their 0/1 attributes
    (N × names, uint8) of list_attr_celeba.txt; a row that is not a file and ±1 per name is a
    DataError naming its line."""
    _, header, body = [*_text(path, folder).split("\n", 2), "", ""][:3]
    names = header.split()
    if not names:
        raise DataError(f"{path} has no attribute names on its line 2; {how_to_get(folder)}")
    width = len(names) + 1
    tokens = body.split()  # one list for all rows: 8 million values parsed in seconds
    if len(tokens) % width == 0:
        table = np.array(tokens, dtype=object).reshape(-1, width)
        present = table[:, 1:] == "1"
        if (present | (table[:, 1:] == "-1")).all():
            return names, table[:, 0].tolist(), torch.from_numpy(present.astype(np.uint8))
    bad = next(  # reached only where some line is not `width` fields with ±1 after the first
        number
        for number, line in enumerate(body.splitlines(), start=3)
        if (fields := line.split()) and (len(fields) != width or set(fields[1:]) - {"1", "-1"})
    )
    raise DataError(
        f"{path} line {bad} is not an image file and {len(names)} values of 1 or -1 (one per "
        f"attribute of line 2); {how_to_get(folder)}"
    )


def read_partition(path: Path, folder: Path) -> dict[str, int]:
    """{image file: 0 train, 1 valid, 2 test} of list_eval_partition.txt; another line is a
    DataError naming it."""
    parts: dict[str, int] = {}
    for number, line in enumerate(_text(path, folder).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(
                f"{path} line {number} is not an image file and 0, 1 or 2 (train, valid, test); "
                f"{how_to_get(folder)}"
            )
        parts[fields[0]] = int(fields[1])
    return parts


class CelebAAttributes(Dataset):
    """The images `files` in `images` with their attributes: item i is (the RGB PIL image,
    {name: its attribute as a 0./1. float tensor})."""

    def __init__(self, images: Path, files: Sequence[str], labels: Tensor, names: Sequence[str]):
        self.images, self.files, self.names = images, list(files), tuple(names)
        self.labels = labels.float()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, dict[str, Tensor]]:
        path = self.images / self.files[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as e:  # missing, unreadable or not an image (PIL's error is an OSError)
            reason = e.strerror or type(e).__name__
            raise DataError(
                f"CelebA image {path} cannot be read ({reason}); {how_to_get(self.images.parent)}"
            ) from None
        row = self.labels[index]
        return rgb, {name: row[k] for k, name in enumerate(self.names)}


def square_tensors(size: int) -> Any:
    """Each PIL image resized to size×size and made a 3 × size × size tensor in [0, 1]."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])


def check_settings(settings: Mapping[str, Any]) -> None:
    if settings["validation"] != 0:
        raise ConfigError(
            f"trainer.validation={settings['validation']} is not allowed with dataset=celeba: "
            "its validation split is the official partition's (list_eval_partition.txt); "
            "leave trainer.validation=0"
        )


@checked("dataset", check_settings)
def build(
    root: str = "data",
    download: bool = False,
    tasks: Sequence[str] | None = None,
    size: Width = 64,
    losses: Mapping[str, Sequence[LossChoice]] | None = None,
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
    validation: float = 0,
    validation_seed: Seed = 0,
) -> MultiTaskData:
    """CelebA from `root`/celeba: one binary task per attribute of `tasks` (None: all of the
    attribute file's), each with the losses and metrics `losses` and `metrics` give it (else
    bce, and accuracy and F1), on the official train / valid / test partition, images resized
    to `size`×`size`. `validation` and `validation_seed` are the trainer's (mtltrain passes them
    to a data set that takes them): the partition has its own validation split, so another
    (`validation` > 0) is refused and the seed, which would draw it, is unused."""
    folder = find_folder(Path(root).expanduser(), download)
    names, files, labels = read_attributes(folder / ATTRIBUTES, folder)
    selected = list(names if tasks is None else tasks)
    available = {name: ("binary", 1) for name in names}
    check_tasks(selected, available)
    chosen = {**{name: [LOSS] for name in selected}, **(losses or {})}
    scored = {**{name: METRICS for name in selected}, **(metrics or {})}
    specs = task_specs(selected, available, chosen, scored)
    columns = [names.index(name) for name in selected]
    parts = read_partition(folder / PARTITION, folder)
    unlisted = next((f for f in files if f not in parts), None)
    if unlisted is not None:
        raise DataError(
            f"{folder / PARTITION} does not list {unlisted}, an image of {folder / ATTRIBUTES}; "
            f"{how_to_get(folder)}"
        )
    part = torch.tensor([parts[f] for f in files])

    def split(which: str) -> DatasetSplit:
        rows = torch.nonzero(part == PARTS[which]).flatten()
        chosen_files = [files[i] for i in rows.tolist()]
        items = CelebAAttributes(folder / IMAGES, chosen_files, labels[rows][:, columns], selected)
        return DatasetSplit(items, transform=square_tensors(size))

    return MultiTaskData(specs, split("train"), split("test"), split("validation"))
