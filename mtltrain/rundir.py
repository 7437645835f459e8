"""Run folders: which ones a run may write into, and how a stopped run is found to resume.

A run folder holds a finished run when its results.json says "completed", and an unfinished
one when it holds a checkpoint but no finished results. Neither is overwritten by a new run.
`mtltrain resume=<run folder or checkpoint>` continues an unfinished run in its own folder
with its own overrides (read from the checkpoint); overrides given beside resume= win.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mtltrain import checkpoint
from mtltrain.errors import RunFolderError
from mtltrain.results import RESULTS_FILE, read_results

MULTIRUN_FLAGS = ("-m", "--multirun")


def status(run_dir: Path) -> str | None:
    """The status in a run folder's results.json, if it has a readable one."""
    try:
        return read_results(run_dir).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def check_fresh(run_dir: Path) -> None:
    """Refuse a folder that holds a finished or an unfinished run."""
    if status(run_dir) == "completed":
        raise RunFolderError(
            f"{run_dir} already holds a finished run ({RESULTS_FILE}): it is not overwritten; "
            "choose another folder with hydra.run.dir=..."
        )
    if checkpoint.path_in(run_dir).exists():
        raise RunFolderError(
            f"{run_dir} holds an unfinished run ({checkpoint.FOLDER}/{checkpoint.LAST}): "
            f"continue it with mtltrain resume={run_dir}, or choose another hydra.run.dir"
        )


def checkpoint_of(target: Path) -> Path:
    """The checkpoint a resume= value names: the file itself, or the one in a run folder."""
    return target if target.is_file() else checkpoint.path_in(target)


def override_key(argument: str) -> str | None:
    """The key of a `key=value` override (None for flags such as -m or --cfg)."""
    if argument.startswith("-") or "=" not in argument:
        return None
    return argument.split("=", 1)[0].lstrip("+~")


def value_of(argv: Sequence[str], key: str) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if override_key(a) == key]
    return values[-1] if values else None


def prepare_arguments(argv: Sequence[str]) -> list[str]:
    """The command line Hydra should see: for resume=, the run's own overrides and folder;
    for an explicit hydra.run.dir, a check that the folder is free."""
    resume = value_of(argv, "resume")
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    if resume is None:
        run_dir = value_of(argv, "hydra.run.dir")
        if run_dir is not None and not multirun:
            check_fresh(Path(run_dir))
        return list(argv)
    if multirun:
        raise RunFolderError("resume= continues one run: drop -m/--multirun")
    path = checkpoint_of(Path(resume))
    state = checkpoint.load(path)
    folder = checkpoint.run_dir_of(path)
    if status(folder) == "completed":
        raise RunFolderError(f"{folder} already holds a finished run: there is nothing to resume")
    merged = {override_key(o): o for o in state["overrides"] if override_key(o) != "resume"}
    flags = [a for a in argv if override_key(a) is None]
    merged.update({override_key(a): a for a in argv if override_key(a) is not None})
    merged.pop("hydra.run.dir", None)
    return [*flags, *merged.values(), f"hydra.run.dir={folder}"]
