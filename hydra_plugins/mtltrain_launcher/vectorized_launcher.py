"""`hydra/launcher=vectorized`: a sweep's jobs that differ only in what lives in tensors (seed,
learning rate, a strategy's settings: `mtltrain.stacking.STACKABLE`) train together in one
process, `group_size` at a time (`mtltrain.loop._stacked`); each job still gets its own folder,
.hydra files, TensorBoard events, checkpoints and results.json. Jobs of no group, or of a
group that cannot stack (a gradient-based strategy, a model with dropout), run one after
another, as the basic launcher runs them, with a log line that says why.

A launcher rather than a setting, because grouping needs every job's config at once, which
only the launcher sees; it lives in this package (`hydra_plugins` is where Hydra looks).
Only this module's Hydra imports load when Hydra scans its plugins: mtltrain and torch load
when a sweep launches.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.config_loader import ConfigLoader
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class VectorizedLauncher(Launcher):
    def __init__(self, group_size: int = 16) -> None:
        # group_size is checked with the sweep's other settings (mtltrain.config._sweep)
        self.group_size = group_size
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.configs: RememberedConfigs | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.configs = RememberedConfigs.of(hydra_context.config_loader)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from mtltrain.stacking import groups_of

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        log.info("Launching %d jobs, stacked where they can be", len(job_overrides))
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            configs.append(config)
        if self.configs is not None:
            self.configs.clear()
        returns: list[JobReturn | None] = [None] * len(configs)
        for group, why in groups_of(configs, self.group_size):
            if why:
                log.info("job(s) %s run one after another: %s", _numbers(configs, group), why)
                for i in group:
                    returns[i] = self.run_alone(configs[i])
            else:
                log.info("jobs %s: stacked", _numbers(configs, group))
                stacked = self.run_stacked([configs[i] for i in group])
                for i, ret in zip(group, stacked, strict=True):
                    returns[i] = ret
        assert all(r is not None for r in returns)
        return returns  # type: ignore[return-value]

    def run_alone(self, config: DictConfig) -> JobReturn:
        assert self.task_function is not None and self.hydra_context is not None
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def run_stacked(self, configs: Sequence[DictConfig]) -> list[JobReturn]:
        """Hydra prepares each job's folder as for a job of its own (run_job with a task that
        only takes down the job's arguments); then they train together."""
        from mtltrain.cli import failed_job, job_arguments
        from mtltrain.errors import MtlError
        from mtltrain.run import RunArgs, run_stacked

        assert self.hydra_context is not None and self.config is not None
        jobs: list[RunArgs] = []
        hydra_of_job: list[DictConfig] = []

        def prepare(cfg: DictConfig) -> None:
            hydra = HydraConfig.get()
            jobs.append((cfg, *job_arguments(hydra)))
            hydra_of_job.append(hydra)

        returns = [
            run_job(
                hydra_context=self.hydra_context,
                task_function=prepare,
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            for config in configs
        ]
        # the jobs' lines go to the sweep's log, not to the last prepared job's file
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        prepared = [r for r in returns if r.status == JobStatus.COMPLETED]
        outcomes = run_stacked(jobs)
        for ret, outcome, hydra in zip(prepared, outcomes, hydra_of_job, strict=True):
            ret.return_value, ret.status = outcome, JobStatus.COMPLETED
            if isinstance(outcome, MtlError):
                try:
                    ret.return_value = failed_job(outcome, hydra)
                except MtlError as e:  # a sweeper that records failed trials
                    ret.return_value, ret.status = e, JobStatus.FAILED
        return returns


class RememberedConfigs:
    """The sweeper composes every job's config to check it before it launches them (Hydra's
    `validate_batch_is_legal`), and the launcher composes them again: a config loader wrapped
    by this keeps the first composition of each job's overrides and hands it over at the
    second, so a job's config is composed once (0.15 s of CPU each); `clear` drops what was
    not asked for twice."""

    @classmethod
    def of(cls, loader: ConfigLoader) -> RememberedConfigs:
        """`loader`'s, wrapped now unless it is already."""
        wrapper = getattr(loader.load_sweep_config, "__self__", None)
        return wrapper if isinstance(wrapper, cls) else cls(loader)

    def __init__(self, loader: ConfigLoader) -> None:
        self.compose = loader.load_sweep_config
        self.composed: dict[tuple[int, tuple[str, ...]], DictConfig] = {}
        loader.load_sweep_config = self.load_sweep_config  # type: ignore[method-assign]

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key in self.composed:
            return self.composed.pop(key)
        self.composed[key] = self.compose(master_config, sweep_overrides)
        return copy.deepcopy(self.composed[key])

    def clear(self) -> None:
        self.composed.clear()


def _numbers(configs: Sequence[DictConfig], group: Sequence[int]) -> str:
    return ", ".join(f"#{configs[i].hydra.job.num}" for i in group)
