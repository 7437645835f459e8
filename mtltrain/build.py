"""Config → built objects: data, model, strategy, optimizer, callbacks: a run's job.

`build_job` is the one wiring of a run: the CLI's runs, the benchmark and the tests all get
their job from it, so the three cannot drift apart (the loop, `mtltrain.loop._trainer.Trainer`, then
trains one job or several stacked).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from mtltrain.config._compose import (
    architecture_node,
    build,
    build_partial,
    split_transforms,
    weighting_node,
)
from mtltrain.config._overrides import parse_overrides
from mtltrain.config._schema import TrainerConfig, settings
from mtltrain.data.base import AnySplit, DatasetSplit, MultiTaskData, hold_out
from mtltrain.distributed import join
from mtltrain.errors import ConfigError, first_line
from mtltrain.lean_torch import defer_dynamo_import, flop_counter
from mtltrain.loop._callbacks import Callback
from mtltrain.loop._job import Job
from mtltrain.loop._nonfinite import NonfiniteGuard, NonfiniteWatch
from mtltrain.loop._pruning import trial_pruning
from mtltrain.loop._runtime import (
    autocast,
    choose_threads,
    keep_host_memory,
    optimizer_factory,
    parallel_launcher,
    seed_everything,
    select_device,
    settle_threads,
)
from mtltrain.loop._schedule import build_schedule
from mtltrain.loop._selection import Selection, resolve_objective
from mtltrain.losses import SHAPED_KINDS, loss_terms, point
from mtltrain.metrics import metric_directions, metric_names
from mtltrain.models.base import MultiTaskNet
from mtltrain.outputs import _run_folder as rundir
from mtltrain.outputs._checkpoints import CheckpointCallback
from mtltrain.outputs._event_writer import TensorBoardLog
from mtltrain.outputs._figures import FiguresCallback
from mtltrain.outputs._logger import Logger, LoggersCallback
from mtltrain.outputs._progress import ProgressCallback
from mtltrain.outputs._tensorboard import TensorBoardCallback
from mtltrain.tasks import TaskSpec
from mtltrain.weighting.base import Weighting

log = logging.getLogger(__name__)
SWEEP_FILE = "multirun.yaml"  # a Hydra sweep's settings, in its folder


def configure_process(trainer: TrainerConfig, device: torch.device) -> None:
    """Allocator, determinism and cuDNN as the trainer settings say (threads: `set_threads`)."""
    if device.type == "cpu":
        keep_host_memory(trainer.keep_host_memory)
    if trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    enabled = torch.are_deterministic_algorithms_enabled()
    if enabled != trainer.deterministic or torch.is_deterministic_algorithms_warn_only_enabled():
        torch.use_deterministic_algorithms(trainer.deterministic)  # imports inductor: ~1 s
    torch.backends.cudnn.benchmark = trainer.cudnn_benchmark and not trainer.deterministic


def set_threads(
    trainer: TrainerConfig, model: MultiTaskNet, split: AnySplit, device: torch.device
) -> None:
    """The intra-op threads `trainer.threads` asks for (on CUDA, "auto" keeps torch's)."""
    if device.type == "cpu":
        threads, why = choose_threads(
            trainer.threads,
            lambda: forward_flops(model, split, trainer.batch_size),
            steady=trainer.deterministic,
        )
        log.info("%d CPU thread%s (%s)", threads, "" if threads == 1 else "s", why)
        settle_threads(threads)
    else:
        settle_threads(None if trainer.threads == "auto" else int(trainer.threads))


def check_fits(model: MultiTaskNet, data: MultiTaskData, device: torch.device) -> None:
    """The training samples have a target of every task and the model takes their inputs: a
    forward pass on two of them (in eval mode, the random generators left as they were), or a
    ConfigError saying what does not fit."""
    batch = data.train.head(2)
    missing = [t.name for t in data.tasks if t.name not in batch.targets]
    if missing:
        raise ConfigError(
            f"dataset: the data set's samples have no target of the tasks {missing}: each "
            f"item of a Dataset is (input, {{task: target}}) with a target of every task"
        )
    sample = batch.inputs.to(device)
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            outputs, _ = model(sample)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise ConfigError(
            f"the model does not take the data set's inputs (each of shape "
            f"{list(sample.shape[1:])}): {type(e).__name__}: {first_line(e)}; check the "
            "model's input size (model.in_features, or its encoder's)"
        ) from None
    finally:
        model.train()
    check_targets(data.tasks, outputs, batch.targets)


def check_targets(
    tasks: Sequence[TaskSpec], outputs: Mapping[str, Any], targets: Mapping[str, Tensor]
) -> None:
    """A classification or segmentation (or semantic) task's targets are class indices
    (integers), and a regression (or depth, normals) task's have the shape of its head's point
    prediction: a loss of tensors of other shapes would broadcast them ([N, 1] against [N]
    gives [N, N]) and train and score on the wrong differences without a word."""
    for task in tasks:
        indices = task.kind in ("classification", "segmentation", "semantic")
        if indices and targets[task.name].is_floating_point():
            raise ConfigError(
                f"dataset: the targets of the {task.kind} task {task.name} are "
                f"{targets[task.name].dtype}: give class indices as integers (int64, "
                "torch.tensor(2) rather than 2.0)"
            )
        if task.kind not in SHAPED_KINDS or task.name not in outputs:
            continue
        predicted, target = point(outputs[task.name]).shape, targets[task.name].shape
        if predicted != target:
            raise ConfigError(
                f"dataset: the targets of the {task.kind} task {task.name} have the shape "
                f"{list(target[1:])} per sample, and its head predicts {list(predicted[1:])}: "
                f"give each sample's target that shape"
            )


def forward_flops(model: MultiTaskNet, split: AnySplit, batch_size: int) -> float:
    """FLOPs of one training batch's forward pass, counted on up to 16 samples and scaled, in
    eval mode (batch norm keeps its statistics) and with the random generators left as they
    were."""
    sample = split.head(min(batch_size, 16))
    counter = flop_counter()
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad(), counter:
        model(sample.inputs)
    model.train()
    return counter.get_total_flops() * batch_size / len(sample)


def place_data(
    data: MultiTaskData, device: torch.device, channels_last: bool, num_workers: int = 0
) -> MultiTaskData:
    """Data on the training device when it fits in half its free memory; else pinned host
    memory, from which batches are copied without blocking. Images in NHWC if asked. A
    `DatasetSplit` stays where it is, loaded by `num_workers` into pinned memory on CUDA."""
    pinned = device.type == "cuda"
    data = data.map_splits(
        lambda s: s.loaded_by(num_workers, pinned) if isinstance(s, DatasetSplit) else s
    )
    if channels_last:
        data = data.map(
            lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
        )
    if device.type != "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.nbytes() <= free // 2:
        return data.map(lambda t: t.to(device))
    log.info("data (%.1f GB) kept in pinned host memory", data.nbytes() / 1e9)
    return data.map(lambda t: t.pin_memory())


def param_groups(model: MultiTaskNet, strategy: Weighting, factory: Any) -> list[dict[str, Any]]:
    """The model's parameters, and in a group of their own, without weight decay whatever the
    optimizer's default, the strategy's parameters that its own optimizers do not train."""
    own = strategy.model_optimizer_parameters()
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if own:
        target = getattr(factory, "func", factory)
        takes_decay = "weight_decay" in inspect.signature(target).parameters
        groups.append({"params": own, **({"weight_decay": 0.0} if takes_decay else {})})
    return groups


def build_data(node: DictConfig, trainer: TrainerConfig) -> MultiTaskData:
    """The data set with `trainer.validation` held out: by the data set itself where its
    build takes `validation` (one that must hold out before it makes its samples: MultiMNIST
    pairs images), else from its training set; then its transforms (`with_transforms`)."""
    node, transforms = split_transforms(node)
    size, seed = trainer.validation, trainer.validation_seed
    if "validation" in inspect.signature(build_partial(node).func).parameters:
        data = build(node, validation=size, validation_seed=seed)
    else:
        data = hold_out(build(node), size, seed)
    return with_transforms(data, transforms)


def with_transforms(data: MultiTaskData, transforms: dict[str, list[DictConfig]]) -> MultiTaskData:
    """Each item's input of every split through `dataset.transform`, and first, of the
    training split only, through `dataset.train_transform` (each a list applied in order)."""
    built = {key: [build(node) for node in nodes] for key, nodes in transforms.items()}
    if not any(built.values()):
        return data
    given = next(key for key, fns in built.items() if fns)
    if not all(isinstance(s, DatasetSplit) for s in (data.train, *data.splits().values())):
        raise ConfigError(
            f"dataset.{given} is not allowed with this data set: transforms apply to the items "
            "of a torch Dataset, and its splits are tensors (transform them where it makes them)"
        )

    def through(split: DatasetSplit, fns: list) -> DatasetSplit:
        for fn in fns:
            split = split.with_transform(fn)
        return split

    every = built["transform"]
    return MultiTaskData(
        data.tasks,
        through(data.train, [*built["train_transform"], *every]),
        through(data.test, every),
        None if data.validation is None else through(data.validation, every),
    )


def build_model(
    cfg: DictConfig,
    tasks: Sequence[TaskSpec],
    input_shape: Callable[[], Sequence[int]] | None = None,
) -> MultiTaskNet:
    """The model of a run's config: `cfg.model` as it builds it (architecture hps), or the
    architecture `cfg.architecture` wiring the model config's encoder, head and heads. An
    architecture whose `input_shape` is null (gates that read the input) gets `input_shape()`,
    one input's shape as the data set gives it (asked only then)."""
    architecture = architecture_node(cfg)
    if architecture is None:
        return build(cfg.model, tasks=tasks)
    if "input_shape" in architecture and architecture.input_shape is None and input_shape:
        architecture = OmegaConf.merge(architecture, {"input_shape": list(input_shape())})
    heads = cfg.model.get("heads") or {}
    return build(
        architecture,
        tasks=tasks,
        encoder=build(cfg.model.encoder),
        head=build_partial(cfg.model.head),
        heads={name: build_partial(heads[name]) for name in heads},
    )


def input_shape(data: MultiTaskData) -> list[int]:
    """One training input's shape, as the model receives it (the random generators left as
    they were, so the model's initialisation does not depend on whether it was asked)."""
    with torch.random.fork_rng(devices=[]):
        return list(data.train.head(1).inputs.shape[1:])


def build_objects(
    cfg: DictConfig, trainer: TrainerConfig, device: torch.device
) -> tuple[MultiTaskData, MultiTaskNet, Weighting, torch.optim.Optimizer]:
    """Data, model, set-up strategy and the model's optimizer, on `device`."""
    data = place_data(
        build_data(cfg.dataset, trainer), device, trainer.channels_last, trainer.num_workers
    )
    model = build_model(cfg, data.tasks, lambda: input_shape(data)).to(device)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    check_fits(model, data, device)
    terms = loss_terms(data.tasks, settings(cfg.loss))
    strategy = build(weighting_node(cfg), terms=terms).to(device)
    strategy.setup(model)
    factory = build_partial(cfg.trainer.optimizer)
    optimizer = optimizer_factory(factory, trainer.fused_optimizer)(
        params=param_groups(model, strategy, factory)
    )
    return data, model, strategy, optimizer


def build_job(
    cfg: DictConfig,
    run_dir: Path | None = None,
    loggers: Sequence[Logger] = (),
    run_info: dict[str, Any] | None = None,
    resumed: bool = False,
    extra_callbacks: Sequence[Callback] = (),
) -> Job:
    """The job `cfg` describes, with the process set up as a run sets it up.

    With `run_dir` it checkpoints there (`run_info` goes into each checkpoint) and, with
    trainer.figures, draws its final figures into run_dir/figures; it logs into `loggers` (a
    run that is not `resumed` also writes its HParams and tags there, and TensorBoard's
    layout). The user's callbacks (`cfg.callbacks`), then `extra_callbacks`, come last.
    """
    defer_dynamo_import()  # an eager run never imports torch._dynamo
    trainer_cfg = settings(cfg.trainer)
    device = select_device(trainer_cfg.device)
    ranks = join(device, run_dir)
    configure_process(trainer_cfg, device)
    seed_everything(cfg.seed)
    data, model, strategy, optimizer = build_objects(cfg, trainer_cfg, device)
    for line in strategy.run_warnings(trainer_cfg.epochs):
        log.warning("%s", line)
    if ranks.size > 1 and not data.in_memory():
        raise ConfigError(
            "a data set of torch Datasets is not allowed under torchrun: its ranks shard "
            "in-memory tensors only; train it in one process"
        )
    ranks.broadcast([model, strategy])
    objective = resolve_objective(cfg.objective, data)
    knows_sigma = (data.validation or data.test).noise_std  # the objective's split's
    selection = Selection(trainer_cfg.select, objective, metric_directions(data.tasks, knows_sigma))
    schedule = build_schedule(trainer_cfg.lr_scheduler, optimizer, selection)
    set_threads(trainer_cfg, model, data.train, device)
    callbacks = [
        *run_callbacks(
            cfg, trainer_cfg, data, strategy, device, run_dir, loggers, run_info, resumed
        ),
        *user_callbacks(cfg.get("callbacks")),
        *extra_callbacks,
    ]
    compiled = torch.compile(model, mode=trainer_cfg.compile) if trainer_cfg.compile else None
    return Job(
        model,
        strategy,
        optimizer,
        data,
        trainer_cfg,
        device,
        cfg.seed,
        autocast(device, trainer_cfg.precision),
        selection,
        callbacks,
        forward=compiled,
        ranks=ranks,
        schedule=schedule,
    )


# where a run logs and what it is labelled with: no HParams column (tags have their own)
NOT_HPARAMS = ("logger", "callbacks", "tags")


def run_hparams(
    cfg: DictConfig, run_info: dict[str, Any], run_dir: Path | None = None
) -> dict[str, str]:
    """A run's HParams columns, {name: value as given}: in a sweep, the settings the sweep
    varies (`swept_keys`), which are what sets its runs apart; otherwise its config choices,
    overrides and seed (TensorBoard marks those that differ between the runs it shows)."""
    params = {group: choice for group, choice in run_info.get("choices", {}).items() if choice}
    for o in parse_overrides(run_info.get("overrides", [])):
        params[o.key_or_group] = o.input_line.partition("=")[2]  # as the command line wrote it
    params["seed"] = str(int(cfg.seed))
    params = {k: v for k, v in params.items() if k.partition(".")[0] not in NOT_HPARAMS}
    swept = None if run_dir is None else swept_keys(run_dir.parent / SWEEP_FILE)
    return {k: v for k, v in params.items() if k in swept} if swept else params


def swept_keys(sweep_file: Path) -> frozenset[str] | None:
    """The keys (and config groups) a Hydra sweep varies, as its `sweep_file` has them: its
    sweep overrides (`seed=0,1,2`, `weighting=fixed,uncertainty`, `seed=range(3)`, glob(...))
    and its sweeper's params. Hydra's basic sweeper writes that file into the sweep's folder,
    the parent of its jobs' folders, before it launches them, whatever the launcher (read here,
    not from HydraConfig, which the vectorized launcher's jobs are built without). None where
    there is no such file: a single run, or a sweeper that writes none (Optuna). Read once
    per version of the file: a sweep's jobs share it."""
    try:
        stat = sweep_file.stat()
    except OSError:
        return None
    return _swept_keys_of(str(sweep_file), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _swept_keys_of(sweep_file: str, mtime_ns: int, size: int) -> frozenset[str] | None:
    try:
        sweep = OmegaConf.load(sweep_file)
    except OSError:
        return None
    overrides = parse_overrides(OmegaConf.select(sweep, "hydra.overrides.task") or [])
    params = OmegaConf.select(sweep, "hydra.sweeper.params") or {}
    return frozenset({o.key_or_group for o in overrides if o.is_sweep_override()} | set(params))


def run_callbacks(
    cfg: DictConfig,
    trainer: TrainerConfig,
    data: MultiTaskData,
    strategy: Weighting,
    device: torch.device,
    run_dir: Path | None,
    loggers: Sequence[Logger],
    run_info: dict[str, Any] | None,
    resumed: bool,
) -> Sequence[Callback]:
    """The callbacks of a run, the non-finite policy first (it must see a bad step before a
    checkpoint or a log is written)."""
    saver = (
        CheckpointCallback(
            rundir.checkpoint_file(run_dir),
            trainer.checkpoint_every,
            trainer.checkpoint_interval,
            run_info or {},
            rundir.best_checkpoint_file(run_dir) if trainer.select == "best" else None,
        )
        if run_dir is not None and trainer.checkpoint
        else None
    )
    watched = device.type == "cuda" and trainer.nonfinite == "stop"
    guard = NonfiniteGuard(
        strategy.terms,
        trainer.nonfinite,
        trainer.log_every,
        trainer.max_skipped,
        NonfiniteWatch(len(strategy.terms), device) if watched else None,
        saver.last_saved if saver is not None else lambda: None,
    )
    callbacks: list[Callback] = [guard] if saver is None else [guard, saver]
    if loggers:
        hparams = None if resumed else run_hparams(cfg, run_info or {}, run_dir)
        skipped = trainer.nonfinite == "skip"
        tags = list(cfg.get("tags") or [])
        callbacks.append(LoggersCallback(loggers, trainer.log_every, skipped, hparams, tags))
    tb = next((logger for logger in loggers if isinstance(logger, TensorBoardLog)), None)
    if tb is not None:
        names = metric_names(data.tasks, data.test.noise_std)
        config = OmegaConf.to_yaml(cfg, resolve=True)
        callbacks.append(TensorBoardCallback(tb, not resumed, config, names))
    if run_dir is not None and trainer.figures:
        callbacks.append(FiguresCallback(tb, trainer.figure_every, run_dir / rundir.FIGURES))
    lines_every = max(1, trainer.epochs // trainer.eval_every // 10)  # about ten lines
    show = None if trainer.progress and parallel_launcher() is None else False
    callbacks.append(ProgressCallback(show, trainer.log_every, lines_every))
    pruning = trial_pruning()  # in an Optuna sweep's trial: its objective, to its pruner
    return callbacks if pruning is None else [*callbacks, pruning]


HOOKS = tuple(name for name in vars(Callback) if name.startswith(("on_", "allows_")))


def user_callbacks(node: DictConfig | None) -> list[Callback]:
    """The user's callbacks, {name: _target_ node} (cfg.callbacks), each built; an object that
    is not a `Callback` but has some of its hooks is wrapped into one that calls those."""
    built = []
    for name in node or {}:
        callback = build(node[name])
        if not isinstance(callback, Callback):
            hooks = {h: getattr(callback, h) for h in HOOKS if callable(getattr(callback, h, None))}
            if not hooks:
                raise ConfigError(
                    f"callbacks.{name}._target_={node[name]._target_} is not allowed: it builds "
                    f"a {type(callback).__name__}, which has none of the hooks of a callback "
                    f"({', '.join(HOOKS)}); subclass mtltrain.loop.Callback"
                )
            callback = type(f"{type(callback).__name__}Hooks", (Callback,), hooks)()
        built.append(callback)
    return built
