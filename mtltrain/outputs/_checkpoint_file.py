"""Checkpoints: all a run needs to go on exactly where it stopped.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, written with torch.save
and read with torch.load(weights_only=True), so reading one can never run code. Writes are
atomic: a temporary file in the same folder, flushed to disk, then renamed over the old one,
so a kill at any instant leaves the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from mtltrain.atomic import torch_bytes, write_atomically
from mtltrain.errors import CheckpointError

ZIP_MAGIC = b"PK\x03\x04"
FORMAT = "mtltrain-checkpoint/2"  # /2: the strategy's own optimizers and the epoch's losses
# settings a resume may change (how it trains on, where the data lies, what it returns, where
# it logs); the others must be the checkpoint's
RESUMABLE = ("trainer.", "resume", "hydra.", "dataset.root", "dataset.download", "objective",
             "logger", "callbacks", "tags")  # fmt: skip
# ... but these (runs from before they existed had none: the defaults)
FIXED = ("trainer.validation", "trainer.validation_seed", "trainer.select")


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically to `path`."""
    compact = _own_storage(state)
    write_atomically(path, torch_bytes({"format": FORMAT, **compact}))


def _own_storage(value: Any) -> Any:
    """`value` with every tensor that is part of a larger one (a row of stacked runs'
    parameters) copied, as torch.save would write the whole storage; containers keep their
    type and attributes (a state_dict's `_metadata`)."""
    if isinstance(value, torch.Tensor):
        whole = value.untyped_storage().nbytes() > value.nbytes
        return value.clone() if whole else value
    if isinstance(value, dict):
        out = copy.copy(value)
        for k, v in value.items():
            out[k] = _own_storage(v)
        return out
    if isinstance(value, list):
        return [_own_storage(v) for v in value]
    return value


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint, or raise a one-line CheckpointError that names the file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC  # torch.save writes a zip archive
    size = f"{path.stat().st_size:,} bytes"
    if not is_zip:  # a pickle, text, another format: not read at all
        raise CheckpointError(f"{path} is not a readable checkpoint: not a torch file ({size})")
    try:
        with warnings.catch_warnings():  # torch warns about what it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and weights-only errors: not a checkpoint of ours
        if isinstance(e, pickle.UnpicklingError):
            what = "it holds objects mtltrain never writes (a checkpoint of another program?)"
        else:
            what = "truncated or corrupt"
        raise CheckpointError(f"{path} is not a readable checkpoint: {what} ({size})") from None
    mark = state.get("format") if isinstance(state, dict) else None
    if isinstance(mark, str) and mark.startswith("mtltrain-checkpoint/") and mark != FORMAT:
        raise CheckpointError(
            f"{path} was written by another version of mtltrain ({mark}; this one reads "
            f"{FORMAT}): resume it with that version, or start the run again"
        )
    if mark != FORMAT:
        raise CheckpointError(f"{path} is not an mtltrain checkpoint (no {FORMAT!r} mark)")
    return state


def changed_settings(saved: dict[str, Any], current: dict[str, Any], shown: int = 3) -> str:
    """The settings a resume may not change (RESUMABLE, but FIXED) whose values differ between
    two resolved configs, "key=there → here", the first `shown` of them."""
    before, after = _flat(saved), _flat(current)
    keys = [
        k
        for k in sorted(set(before) | set(after))
        if (k in before if k.startswith(FIXED) else not k.startswith(RESUMABLE))
        and before.get(k) != after.get(k)
    ]
    changes = [f"{k}={before.get(k, '(none)')} → {after.get(k, '(none)')}" for k in keys[:shown]]
    extra = f" (and {len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(changes) + extra


def refuse_other_settings(changed: str) -> None:
    """A resume whose settings differ from its checkpoint's (`changed_settings`) is refused."""
    if changed:
        raise CheckpointError(
            f"resume= continues a run with its own settings, and these differ from its "
            f"checkpoint's: {changed}; only trainer.* may change on resume: start a new run "
            "for other settings"
        )


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
