"""`mtltrain`: Hydra composes the config, `run.run` trains; user errors are one line.

Hydra composes each run's config once. For a single run the callback `CheckBeforeRun` checks
the settings' names, types and ranges and the run folder before Hydra makes the folder, so such
a mistake leaves nothing behind; what needs the data (a task's losses, the strategy against the
model, the objective) is checked when the run builds it, and the folder then holds a
results.json that says failed. A sweep's jobs are checked when they start; a bad one is marked
failed in its folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtltrain import torchrun
from mtltrain.config._compose import (
    NAMED_TARGETS,
    check,
    config_dir,
    config_error,
    config_groups,
    trainer_choice,
)
from mtltrain.config._overrides import command_line, parse_overrides
from mtltrain.config._schema import check_boolean, register
from mtltrain.config._sweep import check_subdir, check_sweep, log_optuna_as_hydra
from mtltrain.errors import (
    UNWRITABLE,
    ConfigError,
    Interrupted,
    MtlError,
    OutputError,
    Pruned,
    RunFolderError,
    UnexpectedError,
    checked_error,
    first_line,
)
from mtltrain.interrupts import Stopped, raise_stopped, signal_of, stopped_by
from mtltrain.outputs import _run_folder as rundir
from mtltrain.processes import importable_from_here, launched, rank

register()
# conf/hydra/launcher/ presets take the names of the launcher plugins' schemas, which validate
# them: Hydra 1.3 does so and warns, in every job's process, that the matching is deprecated.
# Set at import, process-wide, on purpose: joblib's workers import this module, not main().
SCHEMA_MATCHING_WARNING = r"\n'hydra/launcher/\w+' is validated against"
warnings.filterwarnings("ignore", message=SCHEMA_MATCHING_WARNING)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _main(cfg: DictConfig) -> float:
    from mtltrain.run import run  # after Hydra has parsed the command line: `--help` stays fast

    hc = HydraConfig.get()
    try:  # a single run's config was checked before its folder was made (`CheckBeforeRun`)
        return run(cfg, *job_arguments(hc), checked=hc.mode == RunMode.RUN)
    except MtlError as e:
        return failed_job(e, hc)


def job_arguments(
    hc: DictConfig,
) -> tuple[Path, list[str], dict[str, str], str | None, list[str]]:
    """`run`'s arguments besides the config for the job Hydra configured: its folder, its
    overrides, its config choices, in a sweep its name, and the files Hydra made in its folder
    (its output subfolder, .hydra/ by default, and its log, <job name>.log)."""
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    choices["trainer"] = trainer_choice(hc)  # default where the data set has no trainer
    # resume_sweep is how the sweep was started, not a setting of its runs
    overrides = [
        o.input_line for o in parse_overrides(hc.overrides.task) if o.key_or_group != "resume_sweep"
    ]
    run_dir = Path(hc.runtime.output_dir)
    job = f"job {run_dir.name}" if hc.mode == RunMode.MULTIRUN else None
    hydra_files = [f"{hc.job.name}.log", *([hc.output_subdir] if hc.output_subdir else [])]
    return run_dir, overrides, choices, job, hydra_files


def failed_job(e: MtlError, hc: DictConfig) -> float:
    """A run's error, printed in one line (in a sweep, naming the job): in a sweep of the
    basic sweeper NaN (the job's folder says it failed, the sweep goes on); other sweepers
    (Optuna) get the error, to record a failed trial (a pruned one, `Pruned`, is said on
    stdout); a single run exits with the error's code.
    SIGINT or SIGTERM stops a sweep whose jobs run in this process (SystemExit: Hydra would
    catch an error and start the next job), with one line that says how to continue it;
    SIGUSR2 (SLURM's warning) goes on to whoever handled it before (submitit requeues)."""
    multirun = hc.mode == RunMode.MULTIRUN
    if isinstance(e, Pruned):  # an Optuna trial's outcome, told to its study: not an error
        print(f"job {Path(hc.runtime.output_dir).name}: {e}")
        raise e
    stop = isinstance(e, Interrupted) and e.signal_number in (signal.SIGINT, signal.SIGTERM)
    if multirun and stop and _in_process(hc.launcher):
        _fail(sweep_stopped(e, Path(hc.sweep.dir), Path(hc.runtime.output_dir)))
    _print_error(e, f"job {Path(hc.runtime.output_dir).name}: " if multirun else "")
    if isinstance(e, Interrupted) and e.signal_number == signal.SIGUSR2:
        _pass_on(signal.SIGUSR2)
    if multirun and str(hc.sweeper._target_).endswith("BasicSweeper"):
        return float("nan")
    if multirun:
        raise e
    raise SystemExit(e.exit_code) from None


def _in_process(launcher: DictConfig) -> bool:
    """Whether a sweep's launcher runs its jobs in this process, one after another or stacked
    (a signal then stops the sweep, not one job)."""
    return str(launcher._target_).endswith(("BasicLauncher", "VectorizedLauncher"))


def sweep_stopped(e: Interrupted, sweep_dir: Path, job: Path | None = None) -> Interrupted:
    """The one line of a sweep a signal stopped (in `job`, if one was running): where, and the
    command that continues it."""
    name = signal.Signals(e.signal_number).name
    where = f"job {job.name}" if job else str(sweep_dir)
    kept = ", which wrote its checkpoint" if job and rundir.unfinished(job) else ""
    command = rundir.resume_sweep_command(sys.argv[1:], sweep_dir)
    return Interrupted(
        f"{name} stopped the sweep in {where}{kept}; continue the sweep with: {command}",
        e.signal_number,
    )


def stopped(e: KeyboardInterrupt) -> Interrupted:
    """The one line of Ctrl-C or SIGTERM outside a run's own handling of it (a run setting up,
    Hydra between a sweep's jobs): a sweep in this process says how to continue it."""
    stop = Interrupted(stopped_by(e), signal_of(e))
    if isinstance(e, Stopped) and e.sweep_dir is not None:
        return sweep_stopped(stop, e.sweep_dir)
    return stop


def _pass_on(signum: int) -> None:
    """The signal, now the run has checkpointed, to whoever handled it before the run (submitit:
    it requeues the SLURM job, which then resumes from the checkpoint)."""
    if callable(signal.getsignal(signum)):
        signal.raise_signal(signum)


class CheckBeforeRun(Callback):
    """A single run: its settings and its run folder are checked, and the folder locked for
    the run's life, before Hydra writes into it. A sweep: its folder is checked before any job
    starts, and one that holds jobs already is refused unless resume_sweep=true."""

    def __init__(self) -> None:
        self.held = contextlib.ExitStack()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        with _exit_on_error():  # Hydra turns a callback's exception into a warning
            check(config, config.hydra.overrides.task)
            rundir.check_writable(run_dir, "hydra.run.dir")
            rundir.check_space(run_dir, "hydra.run.dir")
            rundir.check_not_in_use(run_dir)
            if not config.resume:
                rundir.check_fresh(run_dir)  # before a lock file would change the folder
            self.held.enter_context(rundir.lock(run_dir))
            if not config.resume:
                rundir.check_fresh(run_dir)  # again: it may have changed before the lock

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.held.close()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        with _exit_on_error():
            check_sweep(config.hydra, parse_overrides(config.hydra.overrides.task))
            check_boolean("resume_sweep", config.resume_sweep)
            if str(config.hydra.sweeper._target_).endswith("OptunaSweeper"):
                log_optuna_as_hydra()
            rundir.check_writable(sweep_dir, "hydra.sweep.dir")
            rundir.check_space(sweep_dir, "hydra.sweep.dir")
            check_subdir(OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"])
            jobs = rundir.jobs_in(sweep_dir)
            if jobs and not config.resume_sweep:
                raise RunFolderError(
                    f"{sweep_dir} already holds a sweep ({len(jobs)} job folders): it is not "
                    "written into; choose another hydra.sweep.dir, or continue it with "
                    "resume_sweep=true (finished jobs are kept, stopped ones resumed)"
                )
            if jobs:
                rundir.check_same_sweep(sweep_dir, config.hydra.overrides.task)
        if _in_process(config.hydra.launcher) and not launched():
            raise_stopped(sweep_dir)  # a signal between its jobs says how to continue it


FINISHED = ("completed", "pruned")  # statuses of a sweep's jobs that ended as they should


class SweepSummary(Callback):
    """After a sweep: exit non-zero, with one line, when some of its jobs did not finish
    (a trial an Optuna pruner stopped ended as it should)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        with _exit_on_error():
            jobs = rundir.jobs_in(sweep_dir)
            unfinished = [
                str(p.relative_to(sweep_dir)) for p in jobs if rundir.status(p) not in FINISHED
            ]
        if unfinished:
            print(
                f"mtltrain: {len(unfinished)} of {len(jobs)} jobs did not finish: "
                f"{', '.join(unfinished)} (mtltrain-report {sweep_dir} lists why)",
                file=sys.stderr,
            )
            raise SystemExit(1)


def main() -> None:
    # Hydra then lets errors through instead of printing them with a hint of its own
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if not launched():  # under torchrun, the ranks its agent stops end without a word
        raise_stopped()
    importable_from_here()
    with contextlib.ExitStack() as scratch:
        try:
            check_command_line(sys.argv[1:])
            sys.argv[1:] = rundir.prepare_arguments(sys.argv[1:])
            if launched():  # under torchrun: rank 0 writes, the others use a scratch folder
                own = rank() == 0
                folder = None if own else Path(scratch.enter_context(TemporaryDirectory()))
                sys.argv[1:] = rundir.follower_arguments(sys.argv[1:], folder)
            _main()
        except KeyboardInterrupt as e:  # outside a run's own handling of Ctrl-C or SIGTERM
            _fail(stopped(e))
        except Exception as e:
            _fail(checked_error(e) or _as_one_line(e))


def _as_one_line(e: Exception) -> MtlError:
    """An error outside mtltrain's own checks as the one line the command prints."""
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        return config_error(e, [a for a in sys.argv[1:] if "=" in a and a[0] != "-"])
    if isinstance(e, OSError):  # Hydra's own files (.hydra/, multirun.yaml) not written
        return file_error(e)
    return outside_error(e)  # raised by Hydra or a plugin (a launcher, a sweeper)


# config groups that take several options (logger=[tensorboard,csv]) or none (logger=[])
SEVERAL = NAMED_TARGETS
# settings that only a sweep (-m) reads
SWEEP_SETTINGS = ("hydra/launcher", "hydra/sweeper", "hydra.launcher.", "hydra.sweeper.",
                  "hydra.sweep.", "resume_sweep")  # fmt: skip


def check_command_line(argv: Sequence[str]) -> None:
    """Refuse what Hydra would take with a traceback or without a word: a flag it does not
    know, a config group set to something other than an option's name, and a sweep's
    settings (launcher, sweeper, resume_sweep) on a command without -m, which ignores them."""
    _, multirun, given = command_line(argv)
    groups = config_groups()
    for o in given:
        value = o.value()
        several = o.key_or_group in SEVERAL and (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        if o.key_or_group in groups and not (
            isinstance(value, str) or o.is_sweep_override() or several
        ):
            options = groups[o.key_or_group]
            also = " (or a list of them: [] for none)" if o.key_or_group in SEVERAL else ""
            raise ConfigError(
                f"{o.input_line} is not allowed: {o.key_or_group} takes the name of one of its "
                f"options{also}: {', '.join(options)} (leave it out for the default)"
            )
        sweep_only = o.key_or_group.startswith(SWEEP_SETTINGS) and o.value() is not False
        if not multirun and sweep_only:
            raise ConfigError(
                f"{o.input_line} sets how a sweep runs, and this command is a single run, "
                "which would ignore it: add -m to sweep"
            )


def outside_error(e: Exception) -> MtlError:
    """An error raised by Hydra or one of its plugins outside any run, as one line."""
    return UnexpectedError(f"{type(e).__name__}: {first_line(e)} (raised outside any run)")


def file_error(e: OSError) -> MtlError:
    """An OSError outside a run's own handling, as one line naming the file."""
    where = f" {e.filename}" if e.filename else ""
    if e.errno in UNWRITABLE:
        return OutputError(f"could not write{where} ({e.strerror})")
    return UnexpectedError(f"{type(e).__name__}:{where} {e.strerror or first_line(e)}")


def _fail(e: MtlError) -> None:
    _print_error(e)
    raise SystemExit(e.exit_code) from None


def _print_error(e: MtlError, job: str = "") -> None:
    """The error's one line on stderr (after `job`, a sweep's job's name); under torchrun, once
    for all its processes."""
    if launched():
        torchrun.report(e)
    else:
        print(f"mtltrain: error: {job}{e}", file=sys.stderr)


@contextlib.contextmanager
def _exit_on_error() -> Iterator[None]:
    """In a Hydra callback: any error is one line and the exit code (Hydra would only warn)."""
    try:
        yield
    except MtlError as e:
        _fail(e)
    except OmegaConfBaseException as e:  # a resolver of ours (mtltrain.direction) raised in it
        _fail(config_error(e))
    except Exception as e:
        _fail(UnexpectedError(f"{type(e).__name__}: {first_line(e)} (please report it)"))
