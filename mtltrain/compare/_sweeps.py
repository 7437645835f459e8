"""The comparison's Hydra multiruns, run by `mtltrain -m` in this process, each into a folder of
its own: a folder that holds jobs already is continued (resume_sweep=true: finished jobs kept,
stopped ones resumed from their checkpoints, missing ones run), after its failed jobs were
moved aside (they then run again from the start, and their errors are kept)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from hydra.core.global_hydra import GlobalHydra

from mtltrain import cli
from mtltrain.loop import _runtime as runtime
from mtltrain.outputs import _run_folder as rundir

MULTI, SINGLE, PROBE, ASIDE = "multi_task", "single_task", ".probe", ".failed_before_resume"
FAILED_JOBS = 1  # mtltrain -m's exit status when some of its jobs did not finish


def sweep(overrides: Sequence[str], folder: Path, config_dir: Path | None) -> int:
    """`mtltrain -m <overrides>` into `folder` (continued where it holds jobs); its exit
    status."""
    if rundir.jobs_in(folder):
        set_failed_aside(folder)
    again = ["resume_sweep=true"] if rundir.jobs_in(folder) else []
    flags = ["--config-dir", str(config_dir)] if config_dir else []
    where = f"hydra.sweep.dir={rundir.hydra_quoted(folder)}"
    return mtltrain([*flags, "-m", *overrides, where, *again])


def mtltrain(argv: Sequence[str]) -> int:
    """`mtltrain <argv>` in this process: its exit status."""
    print("+", shlex.join(["mtltrain", *argv]), flush=True)
    kept = sys.argv
    sys.argv = ["mtltrain", *argv]
    try:
        cli.main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = kept
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
    return 0


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Runs with `n` intra-op threads (this process's and, through the environment, a
    launcher's worker processes'); None: torch's default."""
    if not n:
        yield
        return
    kept, env = torch.get_num_threads(), dict(os.environ)
    os.environ.update(OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(kept)
        os.environ.clear()
        os.environ.update(env)


def set_failed_aside(sweep_dir: Path) -> None:
    """Move the sweep's failed job folders into `<out>/.failed_before_resume/`, which no report
    reads, so that resume_sweep runs those jobs again from the start and their errors are
    kept."""
    for job in rundir.jobs_in(sweep_dir):
        if rundir.status(job) == "failed":
            target = aside(sweep_dir.parent) / sweep_dir.name / job.relative_to(sweep_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            job.rename(target)


def aside(out: Path) -> Path:
    return out / ASIDE


def run_again(out: Path) -> list[str]:
    """The jobs that failed and ran again (their first folders set aside), named as the report
    names runs: their path below `out`."""
    return [str(job.relative_to(aside(out))) for job in rundir.jobs_in(aside(out))]


def machine(n_threads: int | None) -> str:
    """CPU model, cores, threads per run, GPU, torch and Python versions, in one line."""
    m = runtime.machine(runtime.select_device("auto"))
    per_run = f"{n_threads} thread{'s' * (n_threads != 1)}" if n_threads else "torch's threads"
    gpu = m["gpu"] or "no GPU"
    return (
        f"{m['cpu']}, {m['cores']} CPU cores ({per_run} per run), {gpu}, "
        f"torch {m['torch']}, Python {m['python']}"
    )


# options that say where files lie on the machine that ran, not what was computed
WHERE = ("--out", "--runs", "--mnist-root")


def command_line(program: Sequence[str], argv: Sequence[str]) -> str:
    """`program argv` for a shell, without the options that name this machine's folders
    (WHERE, and overrides of dataset.root), which a published command must not show."""
    words, kept, i = list(argv), [], 0
    while i < len(words):
        word, value = words[i], words[i + 1] if i + 1 < len(words) else ""
        if word in WHERE or (word == "--override" and value.startswith("dataset.root=")):
            i += 2
        elif word.split("=", 1)[0] in WHERE or word.startswith("--override=dataset.root="):
            i += 1
        else:
            kept.append(word)
            i += 1
    return shlex.join([*program, *kept])
