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
import shutil
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from hydra.core.override_parser.types import Glob, Override
from omegaconf import OmegaConf

from mtltrain.atomic import byte_size, existing_folder
from mtltrain.config._overrides import command_line, config_dir_flag, parse_overrides
from mtltrain.errors import ConfigError, RunFolderError
from mtltrain.outputs._results import RESULTS_FILE, read_results
from mtltrain.processes import launched


def status(run_dir: Path) -> str | None:
    """The status in a run folder's results.json, if it has a readable one."""
    try:
        return read_results(run_dir).get("status")
    except (OSError, ValueError, AttributeError):
        return None


LOCK = ".mtltrain.lock"
CHECKPOINTS, LAST, BEST = "checkpoints", "last.pt", "best.pt"
LOG_FILE, TB, FIGURES = "mtltrain.log", "tb", "figures"
CSV, MLRUNS, WANDB = "csv", "mlruns", "wandb"  # the other loggers' folders (logger=...)
# what a run, and Hydra for it, writes into a run folder: nothing else may be there
RUN_ENTRIES = frozenset(
    {".hydra", LOCK, CHECKPOINTS, LOG_FILE, TB, CSV, MLRUNS, WANDB, FIGURES, RESULTS_FILE}
)


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
    existing = existing_folder(folder)
    if not existing.is_dir():
        raise RunFolderError(f"{setting}={folder} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(
            f"{setting}={folder} cannot be written: {existing} is read-only for this user; "
            f"choose another {setting}"
        )


# the least free space a run starts with: its config, log, TensorBoard events, figures and the
# checkpoint of a model of this tool's size take a few MiB
MIN_FREE = 16 * 2**20


def check_space(folder: Path, setting: str) -> None:
    """Refuse a folder on a disk with less than MIN_FREE bytes free, saying how much is
    missing."""
    free = shutil.disk_usage(existing_folder(folder)).free
    if free < MIN_FREE:
        raise RunFolderError(
            f"{setting}={folder} is on a disk with {byte_size(free)} free: a run needs at least "
            f"{byte_size(MIN_FREE)} (config, log, TensorBoard events, checkpoints), "
            f"{byte_size(MIN_FREE - free)} more; free some space or choose another {setting}"
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


def check_same_sweep(sweep_dir: Path, overrides: Sequence[str]) -> None:
    """resume_sweep=true continues the sweep its folder holds (its multirun.yaml's overrides):
    the same settings, each with the values it had and possibly more (a sweep extended with
    seeds); other ones would mix two sweeps in one folder."""
    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return
    before = _swept_values(OmegaConf.load(saved).hydra.overrides.task)
    now = _swept_values(overrides)
    if set(before) != set(now) or any(not before[k] <= now[k] for k in before):
        raise RunFolderError(
            f"{sweep_dir} holds a sweep of other settings: resume_sweep=true continues it with "
            "the same settings, each with its values and possibly more; start this sweep in "
            f"another hydra.sweep.dir (that one: {_sweep_words(before)})"
        )


def _swept_values(overrides: Sequence[str]) -> dict[str, set[str]]:
    """Per overridden setting (resume_sweep aside), the values a sweep gives it."""
    values = {}
    for o in parse_overrides(overrides):
        if o.key_or_group != "resume_sweep":
            listed = o.is_discrete_sweep() and not isinstance(o.value(), Glob)  # read as written
            values[o.key_or_group] = (
                set(o.sweep_string_iterator()) if listed else {o.input_line.partition("=")[2]}
            )
    return values


def _sweep_words(values: dict[str, set[str]]) -> str:
    return " ".join(f"{k}={','.join(sorted(v))}" for k, v in values.items())


def natural_key(name: str) -> tuple[tuple[str, int], ...]:
    """Sort key that puts job 10 after job 9: digit runs compare as numbers."""
    return tuple(
        (part, 0) if i % 2 == 0 else ("", int(part))
        for i, part in enumerate(re.split(r"(\d+)", name))
    )


def foreign_entries(run_dir: Path, hydra_files: Collection[str]) -> list[str]:
    """What a folder holds that a new run may not write over: anything but the lock and the
    files Hydra made for this very run (`hydra_files`), unless the folder holds a failed run of
    mtltrain's, whose files the new run replaces (then names outside RUN_ENTRIES)."""
    if not run_dir.is_dir():
        return []
    names = sorted(p.name for p in run_dir.iterdir())
    if status(run_dir) in ("failed", "interrupted"):  # and no checkpoint: nothing to resume
        return [n for n in names if n not in {*RUN_ENTRIES, *hydra_files}]
    return [n for n in names if n not in {LOCK, *hydra_files}]


def check_fresh(run_dir: Path, hydra_files: Collection[str] = ()) -> None:
    """Refuse a folder that holds a finished or an unfinished run, or other files than a
    failed run's (`foreign_entries`): a new run would write over them. `hydra_files`: what
    Hydra made in it for this run already (its .hydra/ and log file)."""
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
    foreign = foreign_entries(run_dir, hydra_files)
    if ".hydra" in foreign and set(foreign) <= RUN_ENTRIES and status(run_dir) is None:
        raise RunFolderError(
            f"{run_dir} holds a run that stopped before its first checkpoint "
            f"({', '.join(foreign)}): there is nothing to resume; delete it, or choose another "
            "folder"
        )
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        shown = ", ".join(foreign[:3]) + more
        raise RunFolderError(
            f"{run_dir} holds files of its own ({shown}): it is left as it is; a new run "
            "needs a new or empty folder (or one of a failed run): choose another"
        )


def checkpoint_of(target: Path) -> Path:
    """The checkpoint a resume= value names: the file itself, or the one in a run folder."""
    return target if target.is_file() else checkpoint_file(target)


def _key(override: Override) -> tuple[str, str | None]:
    return override.key_or_group, override.package


def prepare_arguments(argv: Sequence[str]) -> list[str]:
    """The command line Hydra should see: for resume=, the run's own overrides (read from its
    checkpoint), those given beside resume= winning, and the run's own folder."""
    if not any("resume=" in a for a in argv):
        return list(argv)
    flags, multirun, given = command_line(argv)
    resume = _last(given, "resume")
    if resume is None:
        return list(argv)
    if multirun:
        raise RunFolderError("resume= continues one run: drop -m/--multirun")
    if not str(resume):
        raise RunFolderError("resume='' names no run: give resume=<run folder>")
    from mtltrain.outputs import _checkpoint_file as checkpoint  # torch: only for a resume

    path = checkpoint_of(Path(str(resume)))
    state = checkpoint.load(path)
    folder = run_dir_of(path)
    if checkpoint_file(folder) != path:
        raise RunFolderError(
            f"resume={resume}: a run continues in the folder of its checkpoint, <run folder>/"
            f"{CHECKPOINTS}/{LAST}, and this file is not one; copy it to {CHECKPOINTS}/{LAST} "
            "of a folder (a new one is fine) and resume that folder"
        )
    elsewhere = _last(given, "hydra.run.dir")
    if elsewhere is not None and Path(str(elsewhere)).resolve() != folder.resolve():
        raise RunFolderError(
            f"hydra.run.dir={elsewhere} is not allowed with resume=: a run continues in its own "
            f"folder, {folder}; to continue it elsewhere, copy {CHECKPOINTS}/{LAST} into that "
            "folder and resume it there"
        )
    check_own_run(folder, state["config"])
    if status(folder) == "completed":
        check_trains_longer(folder, state["config"]["trainer"]["epochs"], given)
    *_, saved = command_line(state["overrides"])
    merged = {_key(o): o.input_line for o in saved if o.key_or_group != "resume"}
    merged.update({_key(o): o.input_line for o in given})
    merged.pop(("hydra.run.dir", None), None)
    given_dir = config_dir_flag(flags)
    if given_dir is not None:  # for the check's compose: Hydra reads the flag itself
        search = [search_path_override([f"file://{Path(given_dir).resolve()}"])]
    elif _last(given, "hydra.searchpath") is None:
        search = [search_path_override(user_config_sources(folder))]
    else:
        search = []
    search = [s for s in search if s]
    check_settings_kept(state["config"], [*search, *merged.values()])
    kept = [] if given_dir is not None else search
    return [*flags, *kept, *merged.values(), f"hydra.run.dir={hydra_quoted(folder)}"]


def user_config_sources(folder: Path) -> list[str]:
    """The config folders and packages beyond mtltrain's own that the run in `folder` was
    composed from (`--config-dir`, `hydra.searchpath`), as its .hydra/hydra.yaml records them:
    a resumed run composes from them again (a relative folder from where that run started)."""
    try:
        runtime = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.runtime
        sources, started_in = runtime.config_sources, Path(runtime.cwd)
    except (OSError, AttributeError):
        return []
    return [
        f"file://{started_in / s.path}" if s.schema == "file" else f"pkg://{s.path}"
        for s in sources
        if s.schema in ("file", "pkg") and str(s.provider).startswith(USER_SOURCES)
    ]


USER_SOURCES = ("command-line", "hydra.searchpath")  # Hydra's names for --config-dir, searchpath


def search_path_override(sources: Sequence[str]) -> str:
    """`hydra.searchpath=[...]` for `sources` ('' for none), each quoted for Hydra's grammar."""
    if not sources:
        return ""
    quoted = ("'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'" for s in sources)
    return f"hydra.searchpath=[{','.join(quoted)}]"


def check_settings_kept(saved: dict, overrides: Sequence[str]) -> None:
    """Refuse a resume whose settings (the checkpoint's overrides and those given beside
    resume=, composed and checked) differ from its checkpoint's beyond trainer.*, before Hydra
    writes anything into the run's folder."""
    from mtltrain.config._compose import compose_checked
    from mtltrain.outputs._checkpoint_file import changed_settings, refuse_other_settings

    config = OmegaConf.to_container(compose_checked(overrides), resolve=True)
    refuse_other_settings(changed_settings(saved, config))


def _last(given: Sequence[Override], key: str, default: object = None) -> object:
    """The value of `key` in `given` (the last one where it is given twice, as Hydra takes)."""
    values = [o.value() for o in given if o.key_or_group == key]
    return values[-1] if values else default


def check_own_run(folder: Path, saved: dict) -> None:
    """Refuse a checkpoint whose settings are not those of the run its folder holds (its
    .hydra/config.yaml): one copied in from another run would train as that run, in a folder
    whose config says otherwise."""
    from mtltrain.outputs._checkpoint_file import changed_settings

    own = folder / ".hydra" / "config.yaml"
    if not own.is_file():  # a new folder a checkpoint was copied into: the checkpoint's run
        return
    changed = changed_settings(OmegaConf.to_container(OmegaConf.load(own), resolve=True), saved)
    if changed:
        raise RunFolderError(
            f"{folder / CHECKPOINTS / LAST} is a checkpoint of other settings than the run in "
            f"{folder} ({changed}): it is not resumed there; resume it from its own folder, "
            "or copy it into a new folder"
        )


def check_trains_longer(folder: Path, done: int, given: Sequence[Override]) -> None:
    """A finished run resumes only to train longer: trainer.epochs above the `done` it ran."""
    asked = _last(given, "trainer.epochs", done)
    if not isinstance(asked, int) or isinstance(asked, bool):
        raise ConfigError(f"trainer.epochs={asked!r} is not allowed: give a whole number")
    if asked <= done:
        raise RunFolderError(
            f"{folder} holds a run that finished its {done} epochs: there is nothing to resume; "
            f"give trainer.epochs=N with N > {done} beside resume= to train it longer"
        )


def follower_arguments(argv: Sequence[str], scratch: Path | None) -> list[str]:
    """Under torchrun: the command line of one of the processes of a single run. Rank 0 (no
    `scratch`) writes the run folder; the others keep their Hydra files and logs in `scratch`,
    a folder of their own that is removed after the run."""
    flags, multirun, given = command_line(argv)
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


def resume_sweep_command(argv: Sequence[str], sweep_dir: Path) -> str:
    """The command that continues the sweep `mtltrain <argv>` started in `sweep_dir`."""
    flags, _, given = command_line(argv)
    replaced = ("hydra.sweep.dir", "resume_sweep")
    kept = [o.input_line for o in given if o.key_or_group not in replaced]
    words = [*flags, *kept, f"hydra.sweep.dir={hydra_quoted(sweep_dir)}", "resume_sweep=true"]
    return shlex.join(["mtltrain", *words])


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
