"""`hydra/sweeper=mtltrain_optuna`: the Hydra sweeper of mtltrain's Optuna studies (see
`mtltrain_optuna_sweeper`). Only Hydra's modules load when Hydra scans its plugins; Optuna
loads when a sweep starts (`_study`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Runs `n_trials` trials of an Optuna study over the sweep's search space, `n_jobs` at a
    time through the launcher, each trial a job numbered as its trial."""

    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        study_name: str,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 1.0,
        params: DictConfig | None = None,
    ) -> None:
        # Hydra instantiates the sampler and pruner (the grid sampler partially: it takes the
        # search space); the settings are checked with the sweep's others (mtltrain.config._sweep)
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = params or {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        """hydra.sweeper.params, then the command line's overrides (the later wins), as the
        study's search space and fixed settings; see `_study.run_study`."""
        from hydra_plugins.mtltrain_optuna_sweeper._study import run_study

        assert self.config is not None and self.launcher is not None
        run_study(self, [*_as_overrides(self.params), *arguments])


def _as_overrides(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """hydra.sweeper.params as `key=expression` overrides; a nested key (given on the command
    line as hydra.sweeper.params.trainer.optimizer.lr) joined with dots."""
    overrides = []
    for key, value in params.items():
        if isinstance(value, Mapping):
            overrides.extend(_as_overrides(value, f"{prefix}{key}."))
        else:
            overrides.append(f"{prefix}{key}={value}")
    return overrides
