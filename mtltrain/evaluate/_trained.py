"""A trained run read back from its folder: its saved config (with data set overrides on top),
its data set and its selected model rebuilt, ready to be evaluated or exported.

The model is the one the run reports: a finished run's `selected.by` in results.json says
which checkpoint holds it (best: checkpoints/best.pt, last: checkpoints/last.pt); a run that
stopped before its end gives the model of its last checkpoint (best.pt where it selects the
best evaluation and has one). The config is the resolved one the checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from mtltrain.build import build_data, build_model, input_shape, place_data
from mtltrain.config._compose import (
    check_node,
    config_error,
    setting_keys,
    split_transforms,
    unknown_setting,
)
from mtltrain.config._overrides import parse_overrides
from mtltrain.config._schema import TrainerConfig
from mtltrain.data.base import MultiTaskData, Split
from mtltrain.errors import CheckpointError, ConfigError, RunFolderError, first_line
from mtltrain.evaluate._splits import check_split
from mtltrain.loop._job import evaluate, mismatch
from mtltrain.loop._runtime import autocast, seed_everything, select_device
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.outputs import _run_folder as rundir
from mtltrain.outputs._results import read_results

# what may change on top of the saved config: where and how the data is read, and how the
# model is evaluated (the device, the batch size, the batches); the model itself is the run's
CHANGEABLE = ("dataset.", "trainer.device", "trainer.eval_batch_size", "trainer.limit_batches")


@dataclass
class TrainedRun:
    """A run's selected model (in eval mode, on `device`) and its data set, rebuilt from its
    folder; `checkpoint` is the file the model came from, `selected` the evaluation it is
    (by, epoch, step; None for a run that did not finish), `results` its results.json."""

    folder: Path
    config: DictConfig
    overrides: list[str]
    checkpoint: Path
    selected: dict[str, Any] | None
    results: dict[str, Any] | None
    trainer: TrainerConfig
    device: torch.device
    data: MultiTaskData
    model: nn.Module

    def split(self, name: str) -> Split:
        """The split `name` (train, validation, test) of the run's data set; a ConfigError
        for a name outside SPLITS or a split the run holds none of."""
        check_split(name)
        splits = {"train": self.data.train, **self.data.splits()}
        if name not in splits:
            raise ConfigError(
                f"split={name} is not allowed: this run held out no validation split "
                f"(trainer.validation={self.trainer.validation}); choose one of "
                f"{', '.join(splits)}"
            )
        return splits[name]

    def evaluate(self, name: str) -> dict[str, float]:
        """The metrics of the model on split `name`, as results.json names them
        ("<split>/<task>/<metric>"): the run's evaluation (`mtltrain.loop.evaluate`), with its
        evaluation batch size, precision and batches (`trainer.limit_batches`: the first ones)."""
        precision = autocast(self.device, self.trainer.precision)
        size, limit = self.trainer.eval_batch_size, self.trainer.limit_batches
        metrics = evaluate(
            self.model, self.split(name), self.data.tasks, size, precision, limit=limit
        )
        return {f"{name}/{k}": v for k, v in metrics.items()}

    def evaluated_samples(self, name: str) -> int:
        """How many samples of split `name` `evaluate` scores: all, or those of its first
        `trainer.limit_batches` batches."""
        n, limit = len(self.split(name)), self.trainer.limit_batches
        return n if limit is None else min(n, limit * self.trainer.eval_batch_size)


def open_trained(folder: Path, overrides: Sequence[str] = ()) -> TrainedRun:
    """The run in `folder` rebuilt: its selected model and its data set, with `overrides`
    (dataset.*, trainer.device, trainer.eval_batch_size, trainer.limit_batches; Hydra's
    key=value syntax) applied
    to its saved config. The random generators are seeded with the run's seed before the
    data set is built, as the run seeded them. Any problem is a one-line MtlError."""
    rundir.check_not_in_use(folder)
    file, results = selected_checkpoint(folder)
    state = checkpoint.load(file)
    trained = state if "model" in state else state["trainer"]
    config = with_overrides(OmegaConf.create(state["config"]), overrides)
    trainer = trainer_settings(config)
    device = select_device(trainer.device)
    seed_everything(config.seed)
    data = place_data(build_data(config.dataset, trainer), device, trainer.channels_last)
    model = build_model(config, data.tasks, lambda: input_shape(data)).to(device)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    differs = mismatch(trained["model"], model.state_dict(), "model parameter")
    if differs is not None:
        given = f" with {' '.join(overrides)}" if overrides else ""
        raise CheckpointError(
            f"the model the saved config builds{given} does not take {file}: {differs}; "
            "data set overrides may not change the tasks or their heads"
        )
    model.load_state_dict(trained["model"])
    model.eval()
    selected = None if results is None else results.get("selected")
    return TrainedRun(
        folder, config, list(overrides), file, selected, results, trainer, device, data, model
    )


def selected_checkpoint(folder: Path) -> tuple[Path, dict[str, Any] | None]:
    """The checkpoint that holds the model `folder`'s run reports, and its results.json
    where it finished; a RunFolderError for a folder without a trained model."""
    if not folder.is_dir():
        raise RunFolderError(f"{folder} is not a run folder: there is no such folder")
    last, best = rundir.checkpoint_file(folder), rundir.best_checkpoint_file(folder)
    status = rundir.status(folder)
    if status == "completed":
        results = read_results(folder)
        file = best if results.get("selected", {}).get("by") == "best" else last
        if not file.is_file():
            raise CheckpointError(
                f"{folder} holds a finished run whose selected model is in "
                f"{file.relative_to(folder)}, which is missing: there is no model to evaluate"
            )
        return file, results
    if last.is_file():
        return (best if best.is_file() else last), None
    if status is not None or (folder / ".hydra").is_dir():
        raise RunFolderError(
            f"{folder} holds a run that did not finish ({status or 'no results.json'}) and left "
            f"no checkpoint ({rundir.CHECKPOINTS}/{rundir.LAST}): there is no trained model"
        )
    jobs = rundir.jobs_in(folder)
    if jobs:
        raise RunFolderError(
            f"{folder} is not a run folder but holds {len(jobs)} runs (a sweep's folder?): "
            f"give one of them, e.g. {jobs[0]}"
        )
    raise RunFolderError(
        f"{folder} is not a run folder of mtltrain: it holds neither {rundir.RESULTS_FILE} nor "
        f"{rundir.CHECKPOINTS}/{rundir.LAST}"
    )


def with_overrides(config: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """`config` with `overrides` applied as Hydra applies them (a mapping merged into the one
    there; +key adds, ~key removes); only CHANGEABLE keys, and the data set node is checked
    against its target's signature."""
    try:
        parsed = parse_overrides(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise config_error(e, overrides) from None
    known = setting_keys(config)
    for o in parsed:
        key = o.key_or_group
        if not key.startswith(CHANGEABLE) or o.is_sweep_override():
            raise ConfigError(
                f"{o.input_line} is not allowed: the model is the run's own, and an override "
                "changes one setting of dataset.*, trainer.device, trainer.eval_batch_size or "
                "trainer.limit_batches"
            )
        there = OmegaConf.select(config, key, default=_ABSENT) is not _ABSENT
        if not there and not o.is_add():
            raise ConfigError(unknown_setting(key, known))
        try:
            if o.is_delete():
                parent, _, name = key.rpartition(".")
                del OmegaConf.select(config, parent)[name]
            else:
                OmegaConf.update(config, key, o.value(), merge=True, force_add=o.is_add())
        except OmegaConfBaseException as e:
            raise ConfigError(
                f"{o.input_line} is not allowed: it does not fit the saved {key}: {first_line(e)}"
            ) from None
    dataset, transforms = split_transforms(config.dataset)
    for node in (dataset, *(n for nodes in transforms.values() for n in nodes)):
        check_node(node)
    return config


_ABSENT = object()


def trainer_settings(config: DictConfig) -> TrainerConfig:
    """The saved trainer settings as their schema, ranges checked (trainer.device,
    trainer.eval_batch_size and trainer.limit_batches may be overridden)."""
    values = OmegaConf.to_container(config.trainer, resolve=True)
    try:
        return TrainerConfig(**values)
    except TypeError:
        raise CheckpointError(
            "the run's saved trainer settings are not those of this mtltrain version: evaluate "
            "it with the version that trained it"
        ) from None
