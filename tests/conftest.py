"""Shared test helpers: composing configs, running the CLI, and writing small MNIST IDX files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from mtltrain.config import compose_checked

MTLTRAIN = str(Path(sys.executable).with_name("mtltrain"))


def make_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `mtltrain <overrides>` would run with."""
    return compose_checked(overrides)


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `mtltrain` console script."""
    return subprocess.run(
        [MTLTRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as an IDX file: magic 0x0000080<ndim>, big-endian dims, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> Path:
    """Random 28×28 images with labels 0..9 in torchvision's layout under `root`."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"))
