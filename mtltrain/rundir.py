"""Run folders: which ones a run may write into, and how a stopped run is found to resume.

A run folder holds a finished run when its results.json says "completed", and an unfinished
one when it holds a checkpoint but no finished results. Neither is overwritten by a new run.
`mtltrain resume=<run folder or checkpoint>` continues an unfinished run in its own folder
with its own overrides (read from the checkpoint); overrides given beside resume= win.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from mtltrain.errors import RunFolderError
from mtltrain.results import RESULTS_FILE, read_results


def status(run_dir: Path) -> str | None:
    """The status in a run folder's results.json, if it has a readable one."""
    try:
        return read_results(run_dir).get("status")
    except (OSError, ValueError, AttributeError):
        return None


LOCK = ".mtltrain.lock"
CHECKPOINTS, LAST, BEST = "checkpoints", "last.pt", "best.pt"


def checkpoint_file(run_dir: Path) -> Path:
    """Where a run keeps its checkpoint."""
    return run_dir / CHECKPOINTS / LAST


def best_checkpoint_file(run_dir: Path) -> Path:
    """Where a run with trainer.select=best keeps the checkpoint of its selected evaluation."""
    return run_dir / CHECKPOINTS / BEST


def run_dir_of(path: Path) -> Path:
    """The run folder a checkpoint file belongs to: checkpoint_file's inverse."""
    return path.parent.parent


# This process's folder locks: {lock file: [its descriptor, how many holders]}. The CLI takes a
# single run's lock before Hydra writes into the folder, the run itself again: one lock.
_held: dict[Path, list[int]] = {}


@contextlib.contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (an OS lock on its .mtltrain.lock, released when the process
    ends, however it ends); one held by another process is a one-line RunFolderError."""
    path = (run_dir / LOCK).resolve()
    if path not in _held:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunFolderError(
                f"{run_dir} is in use by another mtltrain run (it holds {LOCK}): wait for it "
                "to end, or choose another folder"
            ) from None
        _held[path] = [fd, 0]
    _held[path][1] += 1
    try:
        yield
    finally:
        _held[path][1] -= 1
        if _held[path][1] == 0:
            os.close(_held.pop(path)[0])


def check_not_in_use(run_dir: Path) -> None:
    """Refuse a folder whose lock another process holds, without making a lock file."""
    path = run_dir / LOCK
    if not path.is_file() or path.resolve() in _held:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise RunFolderError(
            f"{run_dir} is in use by another mtltrain run (it holds {LOCK}): wait for it to "
            "end, or choose another folder"
        ) from None
    finally:
        os.close(fd)


def check_writable(folder: Path, setting: str) -> None:
    """Refuse a folder that cannot be made or written into: under a file, or read-only."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"{setting}={folder} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(
            f"{setting}={folder} cannot be written: {existing} is read-only for this user; "
            f"choose another {setting}"
        )


def unfinished(run_dir: Path) -> bool:
    """Whether the folder holds a run that stopped before its end (a checkpoint, no finished
    results)."""
    return status(run_dir) != "completed" and checkpoint_file(run_dir).exists()


def jobs_in(sweep_dir: Path) -> list[Path]:
    """The job folders under a sweep folder (those Hydra wrote a .hydra/ into), at any depth,
    in natural order (job 10 after job 9)."""
    if not sweep_dir.is_dir():
        return []
    jobs = [p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir() and p.parent != sweep_dir]
    return sorted(jobs, key=lambda p: natural_key(str(p.relative_to(sweep_dir))))


def natural_key(name: str) -> tuple[tuple[str, int], ...]:
    """Sort key that puts job 10 after job 9: digit runs compare as numbers."""
    return tuple(
        (part, 0) if i % 2 == 0 else ("", int(part))
        for i, part in enumerate(re.split(r"(\d+)", name))
    )


def check_fresh(run_dir: Path) -> None:
    """Refuse a folder that holds a finished or an unfinished run."""
    if status(run_dir) == "completed":
        raise RunFolderError(
            f"{run_dir} already holds a finished run ({RESULTS_FILE}): it is not overwritten; "
            "choose another folder with hydra.run.dir=..."
        )
    if unfinished(run_dir):
        raise RunFolderError(
            f"{run_dir} holds an unfinished run ({CHECKPOINTS}/{LAST}): "
            f"continue it with {resume_command(run_dir)}, or choose another hydra.run.dir"
        )


def checkpoint_of(target: Path) -> Path:
    """The checkpoint a resume= value names: the file itself, or the one in a run folder."""
    return target if target.is_file() else checkpoint_file(target)


def _overrides(argv: Sequence[str]) -> tuple[list[str], bool, list[Override]]:
    """The command line as Hydra reads it: its flags, whether it is a multirun, and its
    overrides parsed (with the parser `hydra.main` itself uses; Hydra has no public one)."""
    args = get_args_parser().parse_args(list(argv))
    flags = [a for a in argv if a not in args.overrides]
    return flags, args.multirun, parse_overrides(args.overrides)


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Overrides as Hydra reads them."""
    return OverridesParser.create().parse_overrides(list(overrides))


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
    from mtltrain import checkpoint  # torch: only for a resume

    path = checkpoint_of(Path(str(resume)))
    state = checkpoint.load(path)
    folder = run_dir_of(path)
    if checkpoint_file(folder) != path:
        raise RunFolderError(
            f"resume={resume}: a run continues in the folder of its checkpoint, <run folder>/"
            f"{CHECKPOINTS}/{LAST}, and this file is not one; copy it to {CHECKPOINTS}/{LAST} "
            "of a folder (a new one is fine) and resume that folder"
        )
    if status(folder) == "completed":
        raise RunFolderError(f"{folder} already holds a finished run: there is nothing to resume")
    *_, saved = _overrides(state["overrides"])
    merged = {_key(o): o.input_line for o in saved if o.key_or_group != "resume"}
    merged.update({_key(o): o.input_line for o in given})
    merged.pop(("hydra.run.dir", None), None)
    return [*flags, *merged.values(), f"hydra.run.dir={hydra_quoted(folder)}"]


def launched() -> bool:
    """Whether this process is one of several that torchrun (or a like launcher) started for
    one run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank under torchrun (0 alone): rank 0 alone writes the run folder."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def requeued() -> bool:
    """Whether SLURM started this job again (pre-empted or out of time, and requeued)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0


def follower_arguments(argv: Sequence[str], scratch: Path | None) -> list[str]:
    """Under torchrun: the command line of one of the processes of a single run. Rank 0 (no
    `scratch`) writes the run folder; the others keep their Hydra files and logs in `scratch`,
    a folder of their own that is removed after the run."""
    flags, multirun, given = _overrides(argv)
    if multirun:
        raise RunFolderError(
            "torchrun trains one run over its processes: drop -m/--multirun, and sweep with a "
            "Hydra launcher (hydra/launcher=joblib, submitit_local, submitit_slurm) instead"
        )
    if scratch is None:
        return list(argv)
    kept = [o.input_line for o in given if _key(o) != ("hydra.run.dir", None)]
    quiet = ["hydra.output_subdir=null", "hydra/job_logging=disabled", "trainer.progress=false"]
    return [*flags, *kept, f"hydra.run.dir={hydra_quoted(scratch)}", *quiet]


def hydra_quoted(path: Path) -> str:
    """A path as a Hydra override value, quoted when Hydra's grammar would misread it."""
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9._/+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir`, ready for a shell; under torchrun, on
    as many processes (over several machines: with the options it was started with)."""
    resume = shlex.quote("resume=" + hydra_quoted(run_dir))
    if not launched():
        return f"mtltrain {resume}"
    local, world = os.environ.get("LOCAL_WORLD_SIZE"), os.environ.get("WORLD_SIZE")
    if local == world:
        return f"torchrun --nproc_per_node={local} -m mtltrain {resume}"
    return f"torchrun <the options it was started with> -m mtltrain {resume}"
