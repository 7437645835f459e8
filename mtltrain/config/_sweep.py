"""A sweep's own settings, checked before its first job: the launcher's and the sweeper's, and
the values each swept setting takes. Hydra and its plugins check them only once they run (a
traceback from joblib, Optuna or the sweeper, or a sweep of no jobs)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from omegaconf import DictConfig, ListConfig

from mtltrain.errors import ConfigError

DIRECTIONS = ("minimize", "maximize")
# per launcher or sweeper (the end of its _target_): its settings that must be whole numbers
# >= 1 when set, and the words for what they count
COUNTS = {
    "VectorizedLauncher": {"group_size": "jobs trained together in one process"},
    "LocalLauncher": {"cpus_per_task": "threads per job", "timeout_min": "minutes a job may run"},
    "SlurmLauncher": {
        "cpus_per_task": "threads per job",
        "timeout_min": "minutes a job may run",
        "nodes": "nodes per job",
        "tasks_per_node": "processes per node",
        "max_num_timeout": "requeues after the time limit",
    },
    "OptunaSweeper": {"n_trials": "trials", "n_jobs": "trials handed to the launcher at once"},
}


def check_sweep(hydra: DictConfig, overrides: Iterable[Override]) -> None:
    """The launcher's and sweeper's settings, and every swept value, as a one-line ConfigError."""
    for kind in ("launcher", "sweeper"):
        _check_counts(f"hydra.{kind}", hydra[kind])
    if str(hydra.launcher._target_).endswith("JoblibLauncher"):
        _check_joblib_jobs(hydra.launcher.n_jobs)
    optuna = str(hydra.sweeper._target_).endswith("OptunaSweeper")
    if optuna:
        _check_optuna(hydra.sweeper)
    for o in overrides:
        if o.is_sweep_override():
            check_swept(o, optuna)


def check_subdir(subdir: str) -> None:
    """hydra.sweep.subdir (unresolved) must tell the jobs apart, so it interpolates something
    (the job's number, a swept setting): with one folder for all, each job would be refused the
    folder the one before it wrote."""
    if "${" not in str(subdir):
        raise ConfigError(
            f"hydra.sweep.subdir={subdir} is not allowed: it names one folder for every job; "
            "keep ${hydra.job.num} (or ${hydra.job.override_dirname}) in it"
        )


def log_optuna_as_hydra() -> None:
    """Optuna's lines (the study, each trial's value) through Python's logging, where Hydra
    sends its own (stdout and the sweep's log), instead of Optuna's own stderr handler: stderr
    keeps the one-line errors. SQLAlchemy's (a study's storage) only from warnings up: at
    Hydra's INFO level it would log every SQL statement."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def _check_optuna(sweeper: DictConfig) -> None:
    """The Optuna sweeper's direction and failure rate."""
    rate = sweeper.get("max_failure_rate")
    if rate is not None and not 0 <= rate <= 1:
        raise ConfigError(
            f"hydra.sweeper.max_failure_rate={rate} is not allowed: it is a share of a "
            "batch of trials, in [0, 1]"
        )
    direction = sweeper.get("direction")
    directions = list(direction) if isinstance(direction, ListConfig) else [direction]
    if not all(d in DIRECTIONS for d in directions):
        raise ConfigError(
            f"hydra.sweeper.direction={direction} is not allowed: choose one of {DIRECTIONS} "
            "(mtltrain_optuna sets it from the objective's metric)"
        )


def _check_counts(where: str, node: DictConfig) -> None:
    target = str(node.get("_target_", ""))
    counts = next((c for end, c in COUNTS.items() if target.endswith(end)), {})
    for key, what in counts.items():
        value = node.get(key)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not (whole and value >= 1):
            raise ConfigError(
                f"{where}.{key}={value!r} is not allowed: it counts {what}, a whole number >= 1"
            )


def _check_joblib_jobs(n_jobs: object) -> None:
    """joblib's n_jobs: how many at once (>= 1), or all cores but |n_jobs| − 1 (< 0); not 0."""
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise ConfigError(
            f"hydra.launcher.n_jobs={n_jobs!r} is not allowed: give the jobs to run at once, a "
            "whole number >= 1, or -1 for one per core (-2: all cores but one)"
        )


def check_swept(o: Override, optuna: bool) -> None:
    """A swept setting must take at least one value: a range that is not empty, an interval
    whose low end is not above its high end (and above 0 on a log scale); intervals and tags
    are Optuna's (its only tag: log, on an interval)."""
    sweep = o.value()
    if not optuna and isinstance(sweep, IntervalSweep):
        raise ConfigError(
            f"{o.input_line} is not allowed: interval() is sampled by hydra/sweeper="
            "mtltrain_optuna; the default sweeper takes a list (a,b), range() or choice()"
        )
    tags = set(getattr(sweep, "tags", ())) - (
        {"log"} if optuna and isinstance(sweep, IntervalSweep) else set()
    )
    if tags:
        raise ConfigError(
            f"{o.input_line} is not allowed: the tag {sorted(tags)[0]!r} means nothing here; "
            "the one tag read is log, as in tag(log, interval(1e-4, 1e-1)) with "
            "hydra/sweeper=mtltrain_optuna"
        )
    if isinstance(sweep, RangeSweep) and sweep.step == 0:
        raise ConfigError(f"{o.input_line} is not allowed: range()'s step must not be 0")
    if isinstance(sweep, RangeSweep) and _range_length(sweep) < 1:
        raise ConfigError(
            f"{o.input_line} sweeps no value: range(start, stop, step) counts from start up to "
            "stop, stop left out; give start < stop for a step > 0"
        )
    if isinstance(sweep, IntervalSweep):
        if not sweep.start <= sweep.end:
            raise ConfigError(
                f"{o.input_line} is not allowed: interval(low, high) needs low <= high"
            )
        if "log" in sweep.tags and not sweep.start > 0:
            raise ConfigError(f"{o.input_line} is not allowed: a log-scale interval needs low > 0")


def _range_length(sweep: RangeSweep) -> int:
    """How many values range(start, stop, step) takes (start, stop and step may be floats)."""
    return math.ceil((sweep.stop - sweep.start) / sweep.step)
