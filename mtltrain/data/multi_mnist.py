"""MultiMNIST (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS
2018): two MNIST digits in one image, one task per digit.

Each image of a split is paired with a partner drawn uniformly from the same split (possibly
itself, as in the paper's code), with a generator seeded by `pair_seed`; the paper's code drew
the partners unseeded, so its data set differs from run to run and from ours. The image goes to
the top-left of a `canvas`² black canvas (rows and columns 0–27), its partner `shift` pixels
down and right (6–33), overlapping pixels take the maximum, and the canvas is resized to 28×28
with nearest-neighbour (PIL's rule, the paper's `imresize(..., interp='nearest')`). Tasks: `left`
(the image's digit) and `right` (the partner's), 10 classes each. Inputs are normalised with
MNIST's mean and standard deviation (0.1307, 0.3081), as the paper's code does. A validation
split (`trainer.validation`) is held out of MNIST's training images before pairing and paired
among itself, so none of its digits is seen in training. The pairs are
built once per setting and cached beside MNIST (`<root>/MultiMNIST/<key>.pt`, written
atomically, the key naming the settings and the MNIST files' digest), so a sweep builds them once.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional

from mtltrain.atomic import torch_bytes, write_atomically
from mtltrain.constraints import Seed, checked
from mtltrain.data.base import MultiTaskData, Split, check_tasks, held_out, task_specs
from mtltrain.data.mnist_mtl import FILES, find_raw, read_file, read_split
from mtltrain.errors import ConfigError, OutputError
from mtltrain.tasks import LossChoice, MetricChoice

AVAILABLE = {"left": ("classification", 10), "right": ("classification", 10)}
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel mean and standard deviation (of values in [0, 1])
DIGIT = 28  # MNIST's images are 28×28
PARTS = ("train", "validation", "test")  # paired in this order, each within itself


def overlay(first: Tensor, second: Tensor, canvas: int = 36, shift: int = 6) -> Tensor:
    """N × 28 × 28 uint8 images: `first` at the canvas's top-left, `second` shifted by `shift`
    rows and columns, the maximum where they overlap, resized to 28×28 (nearest-neighbour)."""
    n = first.shape[0]
    board = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    board[:, :DIGIT, :DIGIT] = first
    placed = board[:, shift : shift + DIGIT, shift : shift + DIGIT]
    torch.maximum(placed, second, out=placed)
    resized = functional.interpolate(
        board[:, None].float(), size=(DIGIT, DIGIT), mode="nearest-exact"
    )
    return resized[:, 0].to(torch.uint8)


def pairs(
    images: Tensor, labels: Tensor, generator: torch.Generator, canvas: int, shift: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The split's two-digit images and their left and right labels."""
    partner = torch.randint(max(1, len(images)), (len(images),), generator=generator)
    return overlay(images, images[partner], canvas, shift), labels, labels[partner]


def check_settings(settings: Mapping[str, Any]) -> None:
    """Distinct tasks among `left` and `right`, and a second digit that fits on the canvas."""
    check_tasks(settings["tasks"], AVAILABLE)
    canvas, shift = settings["canvas"], settings["shift"]
    if not 0 <= shift <= canvas - DIGIT:
        raise ConfigError(
            f"dataset.shift={shift} is not allowed with dataset.canvas={canvas}: the second digit "
            f"must fit on the canvas, 0 <= shift <= canvas - {DIGIT}"
        )


@checked("dataset", check_settings)
def build(
    losses: Mapping[str, Sequence[LossChoice]],
    root: str = "data",
    download: bool = True,
    tasks: Sequence[str] = ("left", "right"),
    canvas: int = 36,
    shift: int = 6,
    pair_seed: Seed = 0,
    cache: str | None = None,
    validation: float = 0,
    validation_seed: Seed = 0,
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
) -> MultiTaskData:
    """MultiMNIST from MNIST in `root`/MNIST/raw (torchvision's layout), downloading it when
    allowed; the pairs come from the cache (`cache`, default `root`/MultiMNIST) when it holds
    them. `validation` MNIST training images (a fraction or a count, drawn by
    `validation_seed`) are held out before pairing and paired among themselves, so no digit
    of a validation image is in a training image."""
    specs = task_specs(tasks, AVAILABLE, losses, metrics)
    raw_dir = find_raw(Path(root).expanduser(), download)
    folder = raw_dir.parent.parent / "MultiMNIST" if cache is None else Path(cache).expanduser()
    settings = Pairing(canvas, shift, pair_seed, validation, validation_seed)
    built = _cached(raw_dir, folder, settings)
    parts = {part: _split(built, part, tasks) for part in ("train", "test", "validation")}
    held = parts["validation"] if len(parts["validation"]) else None
    return MultiTaskData(specs, parts["train"], parts["test"], held)


def _split(built: Mapping[str, Tensor], which: str, tasks: Sequence[str]) -> Split:
    x = built[f"{which}_images"].float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    return Split(x, {t: built[f"{which}_{t}"] for t in tasks})


class Pairing(NamedTuple):
    """What the pairs depend on besides the MNIST files."""

    canvas: int
    shift: int
    pair_seed: int
    validation: float
    validation_seed: int


def _cached(raw_dir: Path, folder: Path, settings: Pairing) -> dict[str, Tensor]:
    """The pairs of every part, from the cache in `folder`, or built and then cached."""
    path = folder / f"{_key(raw_dir, settings)}.pt"
    try:
        built = torch.load(path, weights_only=True)
        if isinstance(built, dict) and set(built) == set(_names()):
            return built
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):  # absent or unreadable
        pass
    built = _build_pairs(raw_dir, settings)
    with contextlib.suppress(OutputError):  # a read-only data folder: rebuilt every time
        write_atomically(path, torch_bytes(built))
    return built


def _names() -> list[str]:
    return [f"{part}_{what}" for part in PARTS for what in ("images", "left", "right")]


def _build_pairs(raw_dir: Path, settings: Pairing) -> dict[str, Tensor]:
    """Train, validation and test pairs, each drawn within its own part, in that order from
    one generator seeded with `pair_seed`."""
    images, labels = (torch.from_numpy(a.copy()) for a in read_split(raw_dir, "train"))
    kept, held = held_out(len(images), settings.validation, settings.validation_seed)
    test_images, test_labels = (torch.from_numpy(a.copy()) for a in read_split(raw_dir, "test"))
    sources = {
        "train": (images[kept], labels[kept]),
        "validation": (images[held], labels[held]),
        "test": (test_images, test_labels),
    }
    generator = torch.Generator().manual_seed(settings.pair_seed)
    built: dict[str, Tensor] = {}
    for part in PARTS:
        part_images, part_labels = sources[part]
        image, left, right = pairs(
            part_images, part_labels.long(), generator, settings.canvas, settings.shift
        )
        built |= {f"{part}_images": image, f"{part}_left": left, f"{part}_right": right}
    return built


def _key(raw_dir: Path, settings: Pairing) -> str:
    """The cache's name for these settings and these MNIST files (their digest)."""
    digest = hashlib.sha256()
    for pair in FILES.values():
        for name in pair:
            digest.update(read_file(raw_dir / name))
    canvas, shift, pair_seed, validation, validation_seed = settings
    held = float(validation)  # a count 5000 and 5000.0 hold out the same
    return (
        f"v2-canvas{canvas}-shift{shift}-pairs{pair_seed}-validation{held}-{validation_seed}"
        f"-{digest.hexdigest()[:16]}"
    )
