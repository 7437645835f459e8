"""Which jobs can train stacked (`mtltrain.loop._stacked`), decided outside the loop: a sweep's
configs grouped by what must be equal (`stack_key`: the config without the STACKABLE
settings, which live in tensors) and by whether their strategy, as set, stacks (a loss-based
one: IMTL with variant=loss stacks, its other variants do not), and the built jobs of a group
checked (`unstackable`: the same strategy class and level, shapes, optimizers and devices; no
torchrun, dropout, batch norm, learning-rate schedule or gradient clipping). The
vectorized launcher groups with `groups_of`, `run.run_stacked` checks with `unstackable`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mtltrain.config._compose import called_with
from mtltrain.data.base import Split
from mtltrain.loop._job import Job
from mtltrain.weighting.base import Weighting

# Settings that may differ between jobs trained together: they end up in tensors of their own
# (data, initial weights, optimizer settings, a strategy's settings), not in the shapes.
STACKABLE = (
    "seed",
    "dataset.seed",
    "trainer.validation_seed",
    "trainer.optimizer",
    "weighting",
    "resume",
    # what each job's own callbacks and evaluations do, not the stack's step
    "trainer.eval_every",
    "trainer.eval_batch_size",
    "trainer.figures",
    "trainer.figure_every",
    "trainer.log_every",
    "trainer.progress",
    "trainer.checkpoint_interval",
    "trainer.checkpoint_every",
    "trainer.nonfinite",
    "trainer.max_skipped",
    "trainer.select",
    "objective",
    "logger",  # each job logs into its own loggers, in its own folder
    "callbacks",
    "tags",
)


def stack_key(cfg: DictConfig) -> str:
    """What must be equal for two jobs to train stacked: their config without the STACKABLE
    settings (the optimizer's and the strategy's classes stay), as written, before
    interpolation (`dataset.seed: ${seed}` is the same text in every job)."""
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)
    for dotted in STACKABLE:
        *path, last = dotted.split(".")
        node = config
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        value = node.pop(last, None) if isinstance(node, dict) else None
        if isinstance(value, dict) and "_target_" in value:
            node[last] = {"_target_": value["_target_"]}
    return json.dumps(config, sort_keys=True, default=str)


def groups_of(configs: Sequence[DictConfig], size: int) -> list[tuple[list[int], str]]:
    """The jobs (their positions in `configs`) that train together, at most `size` at a time,
    each group with "" or why its jobs run one after another instead."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, cfg in enumerate(configs):  # IMTL's variants loss and hybrid: apart
        by_key.setdefault((stack_key(cfg), _strategy_unstackable(cfg)), []).append(i)
    groups: list[tuple[list[int], str]] = []
    for (_, why), members in by_key.items():
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            alone = "no other job differs from it in stackable settings only"
            groups.append((chunk, why or (alone if len(chunk) == 1 else "")))
    return groups


def _strategy_unstackable(cfg: DictConfig) -> str:
    """Why the config's strategy cannot stack, decided by its class and settings ("" where it
    can, or where its class cannot be loaded: the job then fails alone, as it would on any
    launcher)."""
    try:
        strategy = get_class(str(cfg.weighting._target_))
    except Exception:
        return "its weighting._target_ cannot be loaded"
    if not issubclass(strategy, Weighting):  # not a strategy: the job fails alone
        return ""
    given = OmegaConf.to_container(cfg.weighting, resolve=False)
    return _unstackable_class(strategy, strategy.loss_based(called_with(strategy, given)))


PER_TASK_GRADIENTS = "it combines per-task gradients, which are not batched over jobs"


def _unstackable_class(strategy: type[Weighting], loss_based: bool) -> str:
    """Why runs of a strategy cannot stack, named by its class: a reason of its own
    (`Weighting.unstackable`), else its per-task gradients where it is not loss-based (as set:
    IMTL with variant=loss stacks); "" where they can."""
    why = strategy.unstackable or ("" if loss_based else PER_TASK_GRADIENTS)
    return f"{strategy.__name__}: {why}" if why else ""


def unstackable(jobs: Sequence[Job]) -> str:
    """Why these jobs (at the same step: `run.run_stacked` groups them so) cannot train
    stacked; "" where they can."""
    first = jobs[0]
    if not all(job.data.in_memory() for job in jobs):
        return "their data sets are torch Datasets (loaded batch by batch, not stacked tensors)"
    if len({(type(job.strategy), job.strategy.level) for job in jobs}) > 1:
        return "their strategies differ"
    if why := _unstackable_class(type(first.strategy), first.strategy.level is None):
        return why
    if first.strategy.extra_batches:
        return f"{type(first.strategy).__name__}: the stacked step draws no extra batches"
    if first.ranks.size > 1:
        return "they run under torchrun"
    if first.schedule is not None or first.cfg.grad_clip is not None:
        return "trainer.lr_scheduler or trainer.grad_clip is set (per job, not in the fused update)"
    if _draws_random(first.model):
        return "the model draws dropout masks (not each job's own)"
    if _tracks_batch_statistics(first.model):
        return "the model's batch norm layers update running statistics (vmapped: not as alone)"
    if len({(job.epochs, job.batches_per_epoch, job.batch_size, job.device) for job in jobs}) > 1:
        return "their epochs, batches or devices differ"
    shapes = [(_shapes(job.model), _shapes(job.strategy)) for job in jobs]
    if any(shape != shapes[0] for shape in shapes):
        return "their models or strategies differ in shape"
    if any(_optimizer_kinds(job) != _optimizer_kinds(first) for job in jobs):
        return "their optimizers differ"
    if any(_split_shapes(job.train_split) != _split_shapes(first.train_split) for job in jobs):
        return "their training sets differ in shape"
    if (
        first.device.type == "cpu"
        and _has_convolutions(first.model)
        and not hasattr(first.model, "forward_stacked")
    ):
        return (
            "vmapped convolutions run as grouped ones, slower per job than one job at a time "
            "on a CPU (scripts/bench_stacked.py)"
        )
    return ""


# torch's dropout and convolution layers (and their subclasses: the lazy convolutions)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout)  # fmt: skip
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d)  # fmt: skip
# batch norm: its running statistics vmapped end otherwise than a job's own (MTAN measured)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _draws_random(model: nn.Module) -> bool:
    return any(isinstance(m, DROPOUTS) and m.p > 0 and m.training for m in model.modules())


def _tracks_batch_statistics(model: nn.Module) -> bool:
    return any(
        isinstance(m, BATCH_NORMS) and m.track_running_stats and m.training for m in model.modules()
    )


def _has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, CONVOLUTIONS) for m in model.modules())


def _shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [(k, tuple(v.shape), v.dtype) for k, v in tensors]


def _optimizer_kinds(job: Job) -> list[type]:
    return [type(o) for o in (job.optimizer, *job.strategy_optimizers)]


def _split_shapes(split: Split) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in split.tensors()]
