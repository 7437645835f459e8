"""Shared test helpers: composing configs, running the CLI, and writing small MNIST IDX files."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import forked_cli
import pytest
import torch
from omegaconf import DictConfig

from mtltrain.config import compose_checked
from mtltrain.data import mnist_mtl
from mtltrain.loop._callbacks import Callback

MTLTRAIN = str(Path(sys.executable).with_name("mtltrain"))
REPORT = str(Path(sys.executable).with_name("mtltrain-report"))


class StopAt(Callback):
    """Sends the process SIGTERM after step `step`."""

    def __init__(self, step: int) -> None:
        self.at = step

    def on_step_end(self, job, step) -> None:
        if step.number == self.at:
            signal.raise_signal(signal.SIGTERM)


def through_disk(state: dict) -> dict:
    """`state` saved and loaded as a checkpoint is."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def make_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `mtltrain <overrides>` would run with."""
    return compose_checked(overrides)


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `mtltrain` console script (in a process forked from one that has imported it:
    forked_cli)."""
    return forked_cli.run([MTLTRAIN, *args], cwd, timeout)


def run_report(args: Sequence[object], cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed `mtltrain-report` console script."""
    return subprocess.run(
        [REPORT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def write_fake_mnist(root: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> Path:
    """Random 28×28 images with labels 0..9 in torchvision's layout under `root`."""
    return mnist_mtl.write_random(root, n_train, n_test, seed)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"))
