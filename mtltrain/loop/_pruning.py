"""Pruning of an Optuna trial from its run (`hydra/sweeper=mtltrain_optuna`): the run reports
its objective at each evaluation to its trial, and stops with `Pruned` when the study's pruner
says the trial is worse than the others were at that point.

The sweeper names each job's trial in the job's environment (Hydra's `hydra.job.env_set`,
which every launcher that runs a job through Hydra applies, in whatever process the job runs):
`TRIAL_ENV` holds, as JSON, the trial's number, the study's name, its storage's URL and its
pruner's config (Optuna keeps no pruner in a storage). The run reaches the trial through that
storage (SQLite: from any process); a study kept in memory (no storage) is reached only by a
run in the sweeper's own process, through `IN_PROCESS_STORAGES`. A run that cannot reach its
trial trains unpruned, with a log line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from mtltrain.config._sweep import log_optuna_as_hydra
from mtltrain.errors import Pruned
from mtltrain.loop._callbacks import Callback

if TYPE_CHECKING:
    import optuna

    from mtltrain.loop._job import Job
    from mtltrain.loop._selection import Metrics

log = logging.getLogger(__name__)
TRIAL_ENV = "MTLTRAIN_OPTUNA_TRIAL"
# study name -> its in-memory storage, while a sweep in this process runs it
IN_PROCESS_STORAGES: dict[str, Any] = {}


def trial_env(number: int, study: str, storage: str | None, pruner: dict) -> dict[str, str]:
    """The environment that names a job's trial (see the module)."""
    trial = {"number": number, "study": study, "storage": storage, "pruner": pruner}
    return {TRIAL_ENV: json.dumps(trial)}


def trial_pruning() -> TrialPruning | None:
    """The pruning callback of the trial this process's environment names; None outside an
    Optuna sweep, or where the trial cannot be reached (in-memory study, other process)."""
    given = os.environ.get(TRIAL_ENV)
    if given is None:
        return None
    import optuna
    from hydra.utils import instantiate

    log_optuna_as_hydra()  # in this job's process too (a parallel launcher's)
    trial = json.loads(given)
    name, url = trial["study"], trial["storage"]
    storage = optuna.storages.RDBStorage(url) if url else IN_PROCESS_STORAGES.get(name)
    if storage is None:
        log.info(
            "trial %d is not pruned: its study is kept in the sweeper's memory, in another "
            "process; set hydra.sweeper.storage (e.g. sqlite:///study.db) to prune",
            trial["number"],
        )
        return None
    study = optuna.load_study(study_name=name, storage=storage, pruner=instantiate(trial["pruner"]))
    study_id = storage.get_study_id_from_name(name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial["number"])
    return TrialPruning(optuna.trial.Trial(study, trial_id))


class TrialPruning(Callback):
    """At each evaluation: report the objective (the value the selection reads) at the epoch
    to the trial, and raise `Pruned` when the study's pruner prunes the trial there."""

    def __init__(self, trial: optuna.trial.Trial) -> None:
        self.trial = trial

    def on_evaluation(self, job: Job, metrics: Metrics) -> None:
        selection = job.selection
        value = metrics.get(selection.split, {}).get(selection.metric, math.nan)
        if not math.isfinite(value):
            return  # Optuna's pruners compare finite values; a failure is the run's to report
        self.trial.report(value, job.epoch)
        if self.trial.should_prune():
            raise Pruned(
                f"trial {self.trial.number} pruned after epoch {job.epoch}: "
                f"{selection.objective}={value:.6g} is worse than the study's pruner allows"
            )
