"""MNIST as several tasks from one image (docs/theory.md §5B, §5D).

cls3: digit 2 → 0, digit 6 → 1, any other digit → 2; cls10: the digit; recon: the input image;
seg: foreground segmentation, pixel on (value > 127) or off. Inputs are scaled to [−1, 1].
The train split trains, the test split evaluates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtltrain.constraints import checked
from mtltrain.data.base import MultiTaskData, Split, check_tasks, task_specs
from mtltrain.errors import DataError
from mtltrain.tasks import LossChoice, MetricChoice

AVAILABLE = {  # task → (kind, values its head emits per sample)
    "cls3": ("classification", 3),
    "cls10": ("classification", 10),
    "recon": ("regression", 28 * 28),
    "seg": ("segmentation", 2 * 28 * 28),
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one MNIST uses
_FIX = "point dataset.root at the folder that holds MNIST/raw, or set dataset.download=true"


def read_file(path: Path) -> bytes:
    """The bytes of an MNIST file, or a DataError naming it and why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"MNIST file missing: {path}; {_FIX}") from None
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DataError(f"MNIST file {path} cannot be read ({reason}); {_FIX}") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an uncompressed IDX file of unsigned bytes, checking magic number and length."""
    raw = read_file(path)
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != _UBYTE or raw[3] != ndim:
        magic = raw[:4].hex() if len(raw) >= 4 else "none"
        raise DataError(
            f"{path} is not an IDX file of {ndim} dimension(s) (magic number {magic}, expected "
            f"0000080{ndim}); delete it and download again, or {_FIX}"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path} has {len(raw)} bytes, its header {shape} promises {expected} "
            f"(truncated or corrupt); delete it and download again, or {_FIX}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file of unsigned bytes: read_idx's inverse."""
    header = bytes([0, 0, _UBYTE, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_random(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random 28×28 images with labels 0..9 in MNIST's files under `root`: a stand-in data set
    of the right format for tests and benchmarks on machines without MNIST."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for which, n in (("train", n_train), ("test", n_test)):
        images_file, labels_file = FILES[which]
        write_idx(raw / images_file, rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / labels_file, np.arange(n) % 10)
    return root


def _download(root: Path) -> None:
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(str(root), train=train, download=True)
    except Exception as e:  # torchvision raises bare RuntimeError/URLError for network trouble
        lines = [line for line in str(e).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(e).__name__  # the innermost cause
        raise DataError(
            f"MNIST is not in {root / 'MNIST' / 'raw'} and downloading it failed ({reason}); "
            "point dataset.root at a folder that holds MNIST/raw, or retry with internet access"
        ) from None


def read_split(raw_dir: Path, which: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (N × 28 × 28) and labels (N, digits 0–9) of split `which` ("train" or
    "test"); files of another shape or with other labels are a DataError naming the file."""
    images_file, labels_file = FILES[which]
    images = read_idx(raw_dir / images_file, 3)
    labels = read_idx(raw_dir / labels_file, 1)
    if images.shape[1:] != (28, 28):
        raise DataError(
            f"{raw_dir / images_file} holds images of {images.shape[1]}×{images.shape[2]} "
            f"pixels; MNIST's are 28×28: {_FIX}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{raw_dir / images_file} holds {len(images)} images but {raw_dir / labels_file} "
            f"holds {len(labels)} labels; {_FIX}"
        )
    if len(labels) and labels.max() > 9:
        first = int(np.argmax(labels > 9))
        raise DataError(
            f"{raw_dir / labels_file} holds label {labels[first]} (sample {first}); MNIST's "
            f"labels are the digits 0 to 9: {_FIX}"
        )
    return images, labels


def find_raw(root: Path, download: bool) -> Path:
    """`root`/MNIST/raw holding MNIST's four files, downloaded there if missing and allowed."""
    raw_dir = root / "MNIST" / "raw"
    needed = [raw_dir / f for pair in FILES.values() for f in pair]
    if not all(p.exists() for p in needed):
        if not download:
            missing = next(p for p in needed if not p.exists())
            raise DataError(
                f"MNIST not found: {missing} does not exist and dataset.download=false; {_FIX}"
            )
        _download(root)
    return raw_dir


def _split(raw_dir: Path, which: str, tasks: Sequence[str]) -> Split:
    images, labels = read_split(raw_dir, which)
    x = torch.from_numpy(images.copy()).float().div_(127.5).sub_(1.0).unsqueeze(1)
    digit = torch.from_numpy(labels.astype(np.int64))
    make = {
        "cls3": lambda: cls3_labels(digit),
        "cls10": lambda: digit,
        "recon": lambda: x,
        "seg": lambda: (x[:, 0] > 0).long(),
    }
    return Split(x, {t: make[t]() for t in tasks})


def cls3_labels(digit: Tensor) -> Tensor:
    """Digit 2 → 0, digit 6 → 1, every other digit → 2."""
    return torch.where(digit == 2, 0, torch.where(digit == 6, 1, 2))


def check_settings(settings: Mapping[str, Any]) -> None:
    check_tasks(settings["tasks"], AVAILABLE)


@checked("dataset", check_settings)
def build(
    losses: Mapping[str, Sequence[LossChoice]],
    root: str = "data",
    download: bool = True,
    tasks: Sequence[str] = ("cls3", "cls10", "recon"),
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
) -> MultiTaskData:
    """Load MNIST from `root`/MNIST/raw (torchvision's layout), downloading it when allowed."""
    specs = task_specs(tasks, AVAILABLE, losses, metrics)
    raw_dir = find_raw(Path(root).expanduser(), download)
    return MultiTaskData(specs, _split(raw_dir, "train", tasks), _split(raw_dir, "test", tasks))
