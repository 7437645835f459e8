"""Checkpoints: all a run needs to go on exactly where it stopped.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, written with torch.save
and read with torch.load(weights_only=True), so reading one can never run code. Writes are
atomic: a temporary file in the same folder, flushed to disk, then renamed over the old one,
so a kill at any instant leaves the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtltrain.atomic import write_atomically
from mtltrain.errors import CheckpointError, first_line

FORMAT = "mtltrain-checkpoint/2"  # /2: the strategy's own optimizers and the epoch's losses
FOLDER = "checkpoints"
LAST = "last.pt"


def path_in(run_dir: Path) -> Path:
    """Where a run keeps its checkpoint."""
    return run_dir / FOLDER / LAST


def run_dir_of(path: Path) -> Path:
    """The run folder a checkpoint file belongs to: path_in's inverse."""
    return path.parent.parent


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically to `path`."""
    write_atomically(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint, or raise a one-line CheckpointError that names the file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and unpickling-policy errors all mean "not ours"
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt or foreign: "
            f"{first_line(e, 120)})"
        ) from None
    mark = state.get("format") if isinstance(state, dict) else None
    if isinstance(mark, str) and mark.startswith("mtltrain-checkpoint/") and mark != FORMAT:
        raise CheckpointError(
            f"{path} was written by another version of mtltrain ({mark}; this one reads "
            f"{FORMAT}): resume it with that version, or start the run again"
        )
    if mark != FORMAT:
        raise CheckpointError(f"{path} is not an mtltrain checkpoint (no {FORMAT!r} mark)")
    return state


def rng_states() -> dict[str, Any]:
    """Every global random generator's state, in checkpointable types."""
    key, pos, has_gauss, gauss = np.random.get_state()[1:]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
