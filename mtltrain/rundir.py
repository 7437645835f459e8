"""Run folders: which ones a run may write into, and how a stopped run is found to resume.

A run folder holds a finished run when its results.json says "completed", and an unfinished
one when it holds a checkpoint but no finished results. Neither is overwritten by a new run.
`mtltrain resume=<run folder or checkpoint>` continues an unfinished run in its own folder
with its own overrides (read from the checkpoint); overrides given beside resume= win.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from mtltrain import checkpoint
from mtltrain.errors import RunFolderError
from mtltrain.results import RESULTS_FILE, read_results


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


def _overrides(argv: Sequence[str]) -> tuple[list[str], bool, list[Override]]:
    """The command line as Hydra reads it: its flags, whether it is a multirun, and its
    overrides parsed (with the parser `hydra.main` itself uses; Hydra has no public one)."""
    args = get_args_parser().parse_args(list(argv))
    flags = [a for a in argv if a not in args.overrides]
    return flags, args.multirun, OverridesParser.create().parse_overrides(args.overrides)


def _key(override: Override) -> tuple[str, str | None]:
    return override.key_or_group, override.package


def prepare_arguments(argv: Sequence[str]) -> list[str]:
    """The command line Hydra should see: for resume=, the run's own overrides (read from its
    checkpoint), those given beside resume= winning, and the run's own folder."""
    if not any("resume=" in a for a in argv):
        return list(argv)
    flags, multirun, given = _overrides(argv)
    resume = next((o.value() for o in given if o.key_or_group == "resume"), None)
    if resume is None:
        return list(argv)
    if multirun:
        raise RunFolderError("resume= continues one run: drop -m/--multirun")
    path = checkpoint_of(Path(str(resume)))
    state = checkpoint.load(path)
    folder = checkpoint.run_dir_of(path)
    if status(folder) == "completed":
        raise RunFolderError(f"{folder} already holds a finished run: there is nothing to resume")
    *_, saved = _overrides(state["overrides"])
    merged = {_key(o): o.input_line for o in saved if o.key_or_group != "resume"}
    merged.update({_key(o): o.input_line for o in given})
    merged.pop(("hydra.run.dir", None), None)
    return [*flags, *merged.values(), f"hydra.run.dir={folder}"]
