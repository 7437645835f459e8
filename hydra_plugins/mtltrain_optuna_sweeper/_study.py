"""The study of `hydra/sweeper=mtltrain_optuna`, asked and told in batches (see the package)."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import Trial, TrialState

from hydra_plugins.mtltrain_optuna_sweeper._search_space import (
    as_override,
    grid,
    search_space,
    trial_overrides,
)
from mtltrain.errors import ConfigError, MtlError, Pruned
from mtltrain.loop._pruning import IN_PROCESS_STORAGES, trial_env

if TYPE_CHECKING:
    from hydra_plugins.mtltrain_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)
RESULTS = "optimization_results.yaml"  # the best trial so far, in the sweep's folder


def run_study(sweeper: OptunaSweeper, overrides: Sequence[str]) -> None:
    """`sweeper.n_trials` more trials of its study over `overrides`' search space, then the
    study's best trial into the sweep folder's optimization_results.yaml."""
    space, fixed = search_space(overrides)
    sampler, n_trials = sweeper.sampler, sweeper.n_trials
    if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
        values = grid(space)
        sampler = sampler(values)
        n_trials = min(n_trials, math.prod(len(v) for v in values.values()))
    storage = sweeper.storage or optuna.storages.InMemoryStorage()
    study = _open_study(sweeper, storage, sampler)
    log.info(
        "Optuna study %r (%s, %d trials so far): %d trials, %d at a time; %s, %s, %s",
        study.study_name,
        sweeper.storage or "in memory",
        len(study.trials),
        n_trials,
        sweeper.n_jobs,
        sweeper.direction,
        type(sampler).__name__,
        type(sweeper.pruner).__name__,
    )
    with _reachable(study.study_name, None if sweeper.storage else storage):
        done = 0
        while done < n_trials:
            size = min(sweeper.n_jobs, n_trials - done)
            trials = [study.ask(space) for _ in range(size)]
            with _failed_if_stopped(study, trials):
                returns = _launch(sweeper, trials, fixed)
            failures = [
                e for t, r in zip(trials, returns, strict=True) if (e := _tell(study, t, r))
            ]
            if len(failures) / size > sweeper.max_failure_rate:
                raise MtlError(
                    f"{len(failures)} of {size} trials of a batch failed, more than "
                    f"hydra.sweeper.max_failure_rate={sweeper.max_failure_rate}: the study "
                    "stops (each trial's error is above and in its folder's results.json)"
                )
            done += size
    _write_best(study, Path(str(sweeper.config.hydra.sweep.dir)))


def _open_study(
    sweeper: OptunaSweeper, storage: str | optuna.storages.BaseStorage, sampler: object
) -> optuna.Study:
    """The sweeper's study in `storage`, created or (kept there before) loaded; one that tunes
    the other way is refused."""
    study = optuna.create_study(
        study_name=sweeper.study_name,
        storage=storage,
        sampler=sampler,
        pruner=sweeper.pruner,
        direction=sweeper.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != sweeper.direction:
        raise ConfigError(
            f"hydra.sweeper.direction={sweeper.direction} is not allowed: the study "
            f"{sweeper.study_name!r} in {sweeper.storage} tunes its objective the other way; "
            "give another hydra.sweeper.study_name"
        )
    return study


def _launch(
    sweeper: OptunaSweeper, trials: Sequence[Trial], fixed: Sequence[str]
) -> list[JobReturn]:
    """The trials as jobs numbered as the trials (consecutive numbers are launched at once),
    each with its sampled values, the fixed overrides and its trial named in its environment
    (`mtltrain.loop._pruning`)."""
    assert sweeper.config is not None
    hydra = sweeper.config.hydra
    pruner = OmegaConf.to_container(hydra.sweeper.pruner, resolve=True)
    returns: list[JobReturn] = []
    for run in _consecutive(trials):
        jobs = []
        for t in run:
            env = trial_env(t.number, sweeper.study_name, sweeper.storage, pruner)
            named = (as_override(f"++hydra.job.env_set.{k}", v) for k, v in env.items())
            jobs.append([*trial_overrides(t.params, fixed), *named])
        returns.extend(sweeper.launcher.launch(jobs, initial_job_idx=run[0].number))
    return returns


def _consecutive(trials: Sequence[Trial]) -> Iterator[list[Trial]]:
    """The trials in runs of consecutive numbers (another process asking the same study
    takes the numbers between)."""
    run: list[Trial] = []
    for t in trials:
        if run and t.number != run[-1].number + 1:
            yield run
            run = []
        run.append(t)
    if run:
        yield run


def _tell(study: optuna.Study, trial: Trial, ret: JobReturn) -> BaseException | None:
    """The job's outcome to the study: its objective (COMPLETE), PRUNED, or FAIL (a run that
    raised, or an objective that is not a finite number); the failure, if any."""
    outcome = _outcome(ret)
    if isinstance(outcome, Pruned):
        _told(study, trial, TrialState.PRUNED)
        return None
    if isinstance(outcome, BaseException):
        _told(study, trial, TrialState.FAIL)
        return outcome
    value = float(outcome)
    if not math.isfinite(value):
        _told(study, trial, TrialState.FAIL)
        return MtlError(f"trial {trial.number}'s objective is {value}")
    _told(study, trial, TrialState.COMPLETE, value)
    return None


def _outcome(ret: JobReturn) -> object:
    """The job's return value, or the error it raised (without the line Hydra writes to
    stderr as it raises it: the job has said its error in its own line)."""
    if ret.status == JobStatus.COMPLETED:
        return ret.return_value
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return ret.return_value
        except Exception as e:
            return e


def _told(study: optuna.Study, trial: Trial, state: TrialState, value: float | None = None) -> None:
    """`study.tell`; the grid sampler's call to stop the study once its grid is done, which
    raises outside `Study.optimize` (after the trial is stored), is let pass: the sweeper
    runs no more trials than the grid has."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError:
        if not isinstance(study.sampler, optuna.samplers.GridSampler):
            raise


@contextlib.contextmanager
def _failed_if_stopped(study: optuna.Study, trials: Sequence[Trial]) -> Iterator[None]:
    """Trials whose launch is stopped (a signal, a launcher's error) are told FAIL, so that the
    study continued later holds none left RUNNING."""
    try:
        yield
    except BaseException:
        for t in trials:
            with contextlib.suppress(Exception):
                _told(study, t, TrialState.FAIL)
        raise


@contextlib.contextmanager
def _reachable(name: str, memory: optuna.storages.BaseStorage | None) -> Iterator[None]:
    """A study kept in memory, reachable by name from the runs of this process while it runs."""
    if memory is None:
        yield
        return
    IN_PROCESS_STORAGES[name] = memory
    try:
        yield
    finally:
        IN_PROCESS_STORAGES.pop(name, None)


def _write_best(study: optuna.Study, sweep_dir: Path) -> None:
    """The study's best trial into the sweep folder; a study with none finished is an error."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise MtlError(
            "no trial of the Optuna study finished, so it has no best one: each trial's error "
            "is above and in its folder's results.json (mtltrain-report <sweep folder> lists them)"
        )
    best = study.best_trial
    log.info("Best trial %d: %s with %s", best.number, best.value, best.params)
    results = {
        "name": "optuna",
        "study_name": study.study_name,
        "best_trial": best.number,
        "best_params": best.params,
        "best_value": best.value,
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS)
