"""Typed schemas of the settings that are not `_target_` nodes.

Hydra checks their names and types when it composes the config (`trainer.epochs=abc` or
`trainer.epoch=5` fail before anything runs); `__post_init__` checks their ranges when a run
turns them into objects with `settings(...)`. Data sets, models and weighting strategies check
their own arguments where they are built.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from mtltrain.constraints import Seed, mismatch
from mtltrain.errors import ConfigError
from mtltrain.tasks import DIRECTION

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
NONFINITE = ("stop", "skip")
SELECT = ("last", "best")
GRAD_CLIP_OVER = ("model", "shared")


def _at_least(key: str, value: float, low: float) -> None:
    if not (value >= low and math.isfinite(value)):  # NaN is not >= anything
        raise ConfigError(f"{key}={value} is not allowed: it must be a finite number >= {low}")


def _finite_positive(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # an interpolation or a type the optimizer itself checks
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} is not allowed: it must be a finite number > 0")


def _complete(obj: object) -> bool:
    """False for the schema's own blank instance (values still MISSING): nothing to check."""
    return not any(isinstance(v, str) and v == MISSING for v in vars(obj).values())


def check_boolean(key: str, value: object) -> None:
    """Refuse what is not true or false (OmegaConf would read 42 or "yes" as true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not allowed: give true or false")


def _validation_size(value: object) -> None:
    """A fraction in [0, 1) or a whole count written without a decimal point: 1.0 could mean
    either, so it is refused."""
    fraction = isinstance(value, float) and 0 <= value < 1
    count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if fraction or count:
        return
    whole = isinstance(value, float) and value.is_integer() and value >= 1
    ambiguous = f" ({value} reads as a fraction or as a count of {int(value)})" if whole else ""
    raise ConfigError(
        f"trainer.validation={value!r} is not allowed{ambiguous}: give a fraction below 1 "
        "(0.1) or a whole count of samples without a decimal point (5000); 0: none"
    )


def check_seed(seed: int, key: str = "seed") -> None:
    """A seed as the data sets' and strategies' seeds are checked (`constraints.Seed`)."""
    bad = mismatch(seed, Seed, key)
    if bad is not None:
        raise ConfigError(f"{bad.where}{bad.text}")


def check_tags(tags: object) -> None:
    """`tags` is a list, and each of a run's tags one word or phrase: the loggers keep the tags
    joined by commas."""
    if not isinstance(tags, ListConfig | list):
        raise ConfigError(
            f"tags={tags} is not allowed: tags takes a list of labels, tags=[baseline,mnist] "
            "(tags=[] for none)"
        )
    for tag in tags:
        if not isinstance(tag, str) or not tag or "," in tag:
            shown = OmegaConf.to_container(tag) if isinstance(tag, ListConfig | DictConfig) else tag
            raise ConfigError(
                f"tags: {shown!r} is not allowed: each tag is a non-empty text without a comma, "
                "e.g. tags=[baseline,mnist]"
            )


def _one_of(key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {list(allowed)}")


@dataclass
class LossConfig:
    """Settings of the task losses."""

    beta: float = MISSING
    focal_gamma: float = MISSING
    dice_smooth: float = MISSING
    huber_delta: float = 1.0

    def __post_init__(self) -> None:
        if not _complete(self):
            return
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"loss.beta={self.beta} is not allowed: it must be in [0, 1]")
        _at_least("loss.focal_gamma", self.focal_gamma, 0)
        _finite_positive("loss.dice_smooth", self.dice_smooth)
        _finite_positive("loss.huber_delta", self.huber_delta)


@dataclass
class TrainerConfig:
    """The training loop's settings (conf/trainer/default.yaml documents each)."""

    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    eval_every: int = MISSING
    figures: Any = MISSING
    figure_every: int = MISSING
    log_every: int = MISSING
    checkpoint_every: int = MISSING
    checkpoint_interval: float = MISSING
    device: str = MISSING
    threads: Any = MISSING
    # the switches (BOOLEANS) and validation are typed Any and checked in __post_init__:
    # OmegaConf would read progress=42 as true and validation=1 as 1.0
    progress: Any = MISSING
    optimizer: Any = MISSING
    nonfinite: str = MISSING
    max_skipped: float = MISSING
    deterministic: Any = MISSING
    precision: str = MISSING
    channels_last: Any = MISSING
    compile: str | None = MISSING
    fused_optimizer: Any = MISSING
    keep_host_memory: Any = MISSING
    cudnn_benchmark: Any = MISSING
    validation: Any = MISSING
    validation_seed: int = MISSING
    select: str = MISSING
    num_workers: int = MISSING
    limit_batches: int | None = MISSING
    shuffle: Any = MISSING
    checkpoint: Any = MISSING
    lr_scheduler: Any = MISSING  # null | a _target_ node (checked: _compose.check_lr_scheduler)
    grad_clip: float | None = MISSING
    grad_clip_over: str = MISSING

    BOOLEANS: ClassVar[tuple[str, ...]] = (
        "progress",
        "figures",
        "deterministic",
        "channels_last",
        "fused_optimizer",
        "keep_host_memory",
        "cudnn_benchmark",
        "shuffle",
        "checkpoint",
    )

    def __post_init__(self) -> None:
        if not _complete(self):
            return
        for key in ("epochs", "batch_size", "eval_batch_size", "eval_every", "log_every"):
            _at_least(f"trainer.{key}", getattr(self, key), 1)
        _at_least("trainer.figure_every", self.figure_every, 0)
        _at_least("trainer.num_workers", self.num_workers, 0)
        if self.limit_batches is not None:
            _at_least("trainer.limit_batches", self.limit_batches, 1)
        _at_least("trainer.checkpoint_every", self.checkpoint_every, 0)
        _at_least("trainer.checkpoint_interval", self.checkpoint_interval, 0)
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", str(self.device)):
            raise ConfigError(
                f"trainer.device={self.device!r} is not allowed: choose one of "
                f"{', '.join(DEVICES)} or cuda:N (the GPU numbered N)"
            )
        _one_of("trainer.precision", self.precision, PRECISIONS)
        _one_of("trainer.compile", self.compile, (None, *COMPILE_MODES))
        _one_of("trainer.nonfinite", self.nonfinite, NONFINITE)
        _one_of("trainer.select", self.select, SELECT)
        _one_of("trainer.grad_clip_over", self.grad_clip_over, GRAD_CLIP_OVER)
        if self.grad_clip is not None:
            _finite_positive("trainer.grad_clip", self.grad_clip)
        _validation_size(self.validation)
        check_seed(self.validation_seed, "trainer.validation_seed")
        for key in self.BOOLEANS:
            check_boolean(f"trainer.{key}", getattr(self, key))
        if not 0 <= self.max_skipped <= 1:
            raise ConfigError(
                f"trainer.max_skipped={self.max_skipped} is not allowed: it is a share of the "
                "run's steps, in [0, 1]"
            )
        valid_threads = isinstance(self.threads, int) and not isinstance(self.threads, bool)
        if self.threads != "auto" and not (valid_threads and self.threads >= 1):
            raise ConfigError(
                f"trainer.threads={self.threads!r} is not allowed: give auto or a whole number >= 1"
            )
        lr = self.optimizer.get("lr") if isinstance(self.optimizer, dict) else None
        _finite_positive("trainer.optimizer.lr", lr)


@dataclass
class RunConfig:
    """The primary config: one choice per group, and the run-wide settings."""

    dataset: Any = MISSING
    model: Any = MISSING
    architecture: Any = None  # {} (hps: the model as it is) or a _target_ node (conf/architecture/)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    weighting: Any = MISSING
    seed: int = MISSING
    objective: str | None = None
    resume: str | None = None
    resume_sweep: Any = False  # true | false (checked, as TrainerConfig's switches)
    loss: LossConfig = field(default_factory=LossConfig)
    logger: Any = None  # {name: _target_ node}: the config group logger (conf/logger/)
    callbacks: Any = None  # {name: _target_ node}: the user's own callbacks
    tags: Any = field(default_factory=list)  # a list of texts (checked: check_tags)


def folder_name(text: str) -> str:
    """A job's overrides as one folder name that any file system takes and that can be passed
    back unquoted (resume=<folder>): "key=value,key=value" becomes "key-value_key-value", and
    every other character outside A-Z a-z 0-9 . _ + - becomes "_"; at most 150 characters."""
    text = text.replace("=", "-").replace(",", "_")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)[:150]


def direction(objective: str | None) -> str:
    """Which way `objective` improves, "maximize" or "minimize" (for mtltrain_optuna)."""
    metric = (objective or "").rpartition("/")[2]
    if metric not in DIRECTION:
        raise ConfigError(
            f"objective={objective} is not allowed with hydra/sweeper=mtltrain_optuna, which tunes "
            "one metric with a direction: set objective=validation/<task>/<metric> with <metric> "
            f"one of {list(DIRECTION)} (and trainer.validation=0.1 to hold out a split), or, "
            "for a metric of one's own, give its direction: hydra.sweeper.direction=maximize "
            "or minimize"
        )
    return "maximize" if DIRECTION[metric] > 0 else "minimize"


def register() -> None:
    """Make the schema known to Hydra as the config `run_schema` (conf/config.yaml uses it),
    the resolver `mtltrain.folder_name` its sweep's job folders are named with, and
    `mtltrain.direction`, the direction the optuna preset tunes `objective` in."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    OmegaConf.register_new_resolver("mtltrain.folder_name", folder_name, replace=True)
    OmegaConf.register_new_resolver("mtltrain.direction", direction, replace=True)


def settings(node: DictConfig) -> Any:
    """A schema-typed node as its dataclass, its ranges checked."""
    return OmegaConf.to_object(node)
