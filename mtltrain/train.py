"""The training loop: config → built objects → fit and evaluate → TensorBoard and results.json."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mtltrain import checkpoint, figures, rundir
from mtltrain.config import build, build_partial, flat_config
from mtltrain.data.base import MultiTaskData, Split
from mtltrain.errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    MtlError,
    TrainingError,
    first_line,
)
from mtltrain.interrupts import StopSignals
from mtltrain.losses import LossTerm, compute_losses, detach, loss_terms
from mtltrain.metrics import TaskMetrics, main_metric, metric_names
from mtltrain.models import MultiTaskModel
from mtltrain.nonfinite import NonfiniteWatch, nonfinite_error
from mtltrain.results import RESULTS_FILE, summary_table, write_json
from mtltrain.runtime import (
    autocast,
    keep_host_memory,
    optimizer_factory,
    seed_everything,
    select_device,
    settle_threads,
)
from mtltrain.schema import TrainerConfig, settings
from mtltrain.tasks import TaskSpec
from mtltrain.tblog import TensorBoardLog
from mtltrain.weighting import Weighting

log = logging.getLogger(__name__)


def param_groups(
    model: MultiTaskModel, weighting: Weighting, weight_decay: float
) -> list[dict[str, Any]]:
    """All parameters in one group, or, where the model has weight decay, a second group for
    the strategy's own parameters (σ, c), which must get none."""
    own = list(weighting.parameters())
    if not weight_decay or not own:
        return [{"params": [*model.parameters(), *own]}]
    return [{"params": list(model.parameters())}, {"params": own, "weight_decay": 0.0}]


def true_sigma(split: Split, terms: Sequence[LossTerm]) -> dict[str, float | None]:
    """Per term, the RMS of the true label-noise σ: what a homoscedastic σ should learn."""
    return {
        t.name: split.noise_std[t.task].square().mean().sqrt().item()
        if t.task in split.noise_std
        else None
        for t in terms
    }


@torch.no_grad()
def evaluate(
    model: Callable[[torch.Tensor], dict],
    split: Split,
    tasks: Sequence[TaskSpec],
    batch_size: int,
    precision: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Metrics of `model` (in eval mode) on a whole split, without training."""
    metrics = TaskMetrics(tasks, knows_sigma=split.noise_std)
    for batch in split.batches(batch_size):
        with precision or contextlib.nullcontext():
            outputs = model(batch.inputs)
        metrics.update(outputs, batch)
    return metrics.compute()


def place_data(data: MultiTaskData, device: torch.device, channels_last: bool) -> MultiTaskData:
    """Data on the training device when it fits in half its free memory; else pinned host
    memory, from which batches are copied without blocking. Images in NHWC if asked."""
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


class Trainer:
    """Trains one model with one weighting strategy, logging to one TensorBoard writer.

    Its position (epoch, batch within the epoch, step) and everything that changes while it
    trains are in `state_dict()`, so a run stopped anywhere continues exactly.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        weighting: Weighting,
        optimizer: torch.optim.Optimizer,
        data: MultiTaskData,
        trainer: TrainerConfig,
        tb: TensorBoardLog,
        device: torch.device,
        seed: int,
        checkpoint_path: Path | None = None,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.weighting, self.optimizer = model, weighting, optimizer
        self.data, self.tb, self.device, self.cfg = data, tb, device, trainer
        self.checkpoint_path = checkpoint_path
        self.run_info = run_info or {}  # what a checkpoint says of its run (config, overrides)
        self.forward = torch.compile(model, mode=trainer.compile) if trainer.compile else model
        self.precision = autocast(device, trainer.precision)
        self.generator = torch.Generator(device=data.train.inputs.device).manual_seed(seed)
        # Training batches carry what training reads: inputs, targets, and the true σ where
        # a heteroscedastic task's metrics score against it.
        hetero = {t.name for t in data.tasks if t.heteroscedastic}
        noise = {k: v for k, v in data.train.noise_std.items() if k in hetero}
        self.train_split = Split(data.train.inputs, data.train.targets, noise)
        self.terms = weighting.terms
        self.shared = model.shared_parameters()
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # by type: data placed on "cuda" lands on "cuda:0", which != torch.device("cuda")
        self.on_device = data.train.inputs.device.type == device.type
        self.epochs, self.batch_size = trainer.epochs, trainer.batch_size
        self.log_lines_every = max(1, self.epochs // trainer.eval_every // 10)  # ~ten lines
        self.stop = StopSignals()
        self.watch = (  # CUDA: non-finite steps found without a sync per step
            NonfiniteWatch(len(self.terms), device)
            if device.type == "cuda" and trainer.nonfinite == "stop"
            else None
        )
        self.last_checkpoint_step: int | None = None
        # what changes while training (all of it in state_dict)
        self.epoch = self.batch = self.step = self.evaluations = self.nonfinite_steps = 0
        self.shuffle_state = self.generator.get_state()
        self.test_metrics: dict[str, float] = {}
        self.reset_running_metrics()

    # -- state ---------------------------------------------------------------------------

    def reset_running_metrics(self) -> None:
        self.train_metrics = TaskMetrics(self.data.tasks, knows_sigma=self.train_split.noise_std)
        self.train_loss = torch.zeros((), device=self.device)
        self.train_batches = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
            "position": {
                "epochs": self.epochs,  # what the run was set to train when this was written
                "epoch": self.epoch,
                "batch": self.batch,
                "step": self.step,
                "evaluations": self.evaluations,
                "nonfinite_steps": self.nonfinite_steps,
            },
            "shuffle_state": self.shuffle_state,
            "generator": self.generator.get_state(),
            "rng": checkpoint.rng_states(),
            "running": {
                "sums": self.train_metrics.sums,
                "counts": self.train_metrics.counts,
                "loss": self.train_loss,
                "batches": self.train_batches,
            },
            "test_metrics": self.test_metrics,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.weighting.load_state_dict(state["weighting"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"the checkpoint does not fit this run: {first_line(e)}"
            ) from None
        position = state["position"]
        self.epoch, self.batch, self.step = position["epoch"], position["batch"], position["step"]
        finished = self.epoch == position.get("epochs") and self.batch == 0
        if self.epoch > self.epochs or (self.epoch == self.epochs and not finished):
            raise ConfigError(
                f"trainer.epochs={self.epochs} is not allowed: the checkpoint has trained "
                f"{self.epoch} epoch(s){' and part of the next' if self.batch else ''}; resume "
                f"with trainer.epochs above {self.epoch}"
            )
        self.evaluations = position["evaluations"]
        self.nonfinite_steps = position["nonfinite_steps"]
        self.shuffle_state = state["shuffle_state"]
        self.generator.set_state(state["generator"])
        checkpoint.set_rng_states(state["rng"])
        running = state["running"]
        self.train_metrics.sums = {k: v.to(self.device) for k, v in running["sums"].items()}
        self.train_metrics.counts = dict(running["counts"])
        self.train_loss = running["loss"].to(self.device)
        self.train_batches = running["batches"]
        self.test_metrics = state["test_metrics"]
        self.last_checkpoint_step = self.step

    def save_checkpoint(self) -> None:
        self.check_watch()  # never a checkpoint of a model that took a non-finite step
        if self.checkpoint_path is not None:
            checkpoint.save(self.checkpoint_path, {"trainer": self.state_dict(), **self.run_info})
            self.last_checkpoint_step = self.step

    # -- one step ------------------------------------------------------------------------

    def log_step(self, losses: dict[str, torch.Tensor], parts: torch.Tensor) -> None:
        self.check_watch()
        names = self.weighting.names
        values: dict[str, Any] = {"loss/total": parts.sum()}
        for i, name in enumerate(names):
            values[f"loss_raw/{name}"] = losses[name]
            values[f"loss_weighted/{name}"] = parts[i]
        for quantity, vector in self.weighting.report().items():
            values.update({f"{quantity}/{n}": vector[i] for i, n in enumerate(names)})
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["nonfinite_steps"] = self.nonfinite_steps
        self.tb.scalars(values, self.step)

    def finite(
        self, losses: dict[str, torch.Tensor], parts: torch.Tensor, total: torch.Tensor
    ) -> bool:
        """Whether every loss and weighted loss of the step is finite, read from their weighted
        sum `total` in one check: a non-finite loss makes its weighted loss non-finite (w·NaN
        = NaN, w·±Inf = ±Inf, 0·Inf = NaN) and a non-finite term the sum. Stops the run on
        one that is not, unless trainer.nonfinite=skip. With a watch (CUDA, stop mode) the
        check waits on the device and `check_watch` reads it at the next log, evaluation or
        checkpoint, so no step waits for the GPU; the checkpoint on disk stays the good one."""
        if self.watch is not None:
            self.watch.see(self.step, torch.stack(list(losses.values())).detach(), parts, total)
            return True
        if bool(torch.isfinite(total)):
            return True
        if self.cfg.nonfinite == "skip":
            return False
        raw = torch.stack(list(losses.values())).detach()
        raise self.nonfinite_error(self.step, raw, parts)

    def check_watch(self) -> None:
        """Stop the run if the watch saw a non-finite step since the start."""
        found = self.watch.first_bad() if self.watch is not None else None
        if found is not None:
            raise self.nonfinite_error(*found)

    def nonfinite_error(self, step: int, raw: torch.Tensor, parts: torch.Tensor) -> TrainingError:
        num_batches = self.train_split.num_batches(self.batch_size)
        last = (
            None
            if self.last_checkpoint_step is None
            else (self.checkpoint_path, self.last_checkpoint_step)
        )
        return nonfinite_error(self.terms, raw, parts, step, (step - 1) // num_batches + 1, last)

    def train_step(self, batch: Split) -> torch.Tensor:
        """One optimisation step on a batch; returns the per-term contributions."""
        if not self.on_device:
            batch = batch.map(lambda t: t.to(self.device, non_blocking=True))
        with self.precision:
            outputs = self.forward(batch.inputs)
            losses = compute_losses(self.terms, outputs, batch.targets)
        seen = {name: detach(out) for name, out in outputs.items()}
        self.weighting.observe(seen, batch.targets)
        for p in self.params:  # optimizer.zero_grad(set_to_none=True), without its overhead
            p.grad = None
        parts = self.weighting.backward(losses, self.shared)
        self.step += 1
        total = parts.sum()
        if self.finite(losses, parts, total):
            self.optimizer.step()
            self.train_metrics.update(seen, batch)
            self.train_loss += total
            self.train_batches += 1
        else:
            self.nonfinite_steps += 1
        if self.step % self.cfg.log_every == 0:
            self.log_step(losses, parts)
        return parts

    # -- epochs --------------------------------------------------------------------------

    def train_epoch(self) -> None:
        """The rest of the current epoch over the shuffled train split."""
        if self.batch == 0:
            self.shuffle_state = self.generator.get_state()
        else:  # resuming mid-epoch: draw the epoch's order again
            self.generator.set_state(self.shuffle_state)
        split = self.train_split.shuffled(self.generator)
        if not self.on_device:
            split = split.map(torch.Tensor.pin_memory)
        bar = tqdm(
            split.batches(self.batch_size, start=self.batch),
            initial=self.batch,
            total=split.num_batches(self.batch_size),
            desc=f"epoch {self.epoch + 1}/{self.epochs}",
            leave=False,
            disable=None if self.cfg.progress else True,  # None: bars on a terminal only
        )
        for batch in bar:
            parts = self.train_step(batch)
            self.batch += 1
            if not bar.disable and self.step % self.cfg.log_every == 0:
                bar.set_postfix(loss=f"{parts.sum().item():.4g}", refresh=False)
            if self.stop.received is not None:
                bar.close()
                self.interrupt(self.stop.received)
        bar.close()

    def interrupt(self, signum: int) -> None:
        self.save_checkpoint()
        name = signal.Signals(signum).name
        raise Interrupted(
            f"stopped by {name} at step {self.step} (epoch {self.epoch + 1}); "
            f"checkpoint written to {self.checkpoint_path}; continue with: "
            f"mtltrain resume={checkpoint.run_dir_of(self.checkpoint_path)}",
            signum,
        )

    def evaluate(self) -> dict[str, float]:
        """Log the running train metrics since the last evaluation and the test metrics;
        figures every `figure_every` evaluations (0: never here; the last epoch's are drawn
        once, by `log_figures` at the end of the run)."""
        train = {
            **self.train_metrics.compute(),
            "loss": self.train_loss.item() / max(1, self.train_batches),
        }
        self.reset_running_metrics()
        self.model.eval()
        test = evaluate(
            self.forward, self.data.test, self.data.tasks, self.cfg.eval_batch_size, self.precision
        )
        self.evaluations += 1
        every = self.cfg.figure_every
        if every and self.evaluations % every == 0 and self.epoch < self.epochs:
            self.log_figures()
        self.model.train()
        self.tb.scalars(
            {
                **{f"train/{k}": v for k, v in train.items()},
                **{f"test/{k}": v for k, v in test.items()},
            },
            self.step,
        )
        if self.evaluations % self.log_lines_every == 0 or self.epoch == self.epochs:
            log.info(
                "epoch %d/%d  step %d  train loss %.4g  test %s",
                self.epoch, self.epochs, self.step, train["loss"],
                ", ".join(f"{k} {v:.4g}" for k, v in test.items()),
            )  # fmt: skip
        return test

    def log_figures(self, folder: Path | None = None) -> None:
        """The pictures of the model on the test split, into TensorBoard at this step and,
        with `folder`, as PNG files there."""
        rendered = figures.render(self.model, self.data.test, self.data.tasks)
        if rendered and folder is not None:
            folder.mkdir(exist_ok=True)
        for name, fig in rendered.items():
            self.tb.image(f"figures/{name}", figures.to_rgb(fig), self.step)
            if folder is not None:
                figures.save_png(fig, folder / f"{name}.png")

    def fit(self) -> dict[str, float]:
        """Train to the last epoch, evaluating every `eval_every` epochs and checkpointing
        every `checkpoint_every`; SIGINT/SIGTERM stop it after a step, with a checkpoint."""
        with self.stop:
            while self.epoch < self.epochs:
                self.train_epoch()
                self.epoch, self.batch = self.epoch + 1, 0
                last = self.epoch == self.epochs
                self.check_watch()
                if self.epoch % self.cfg.eval_every == 0 or last:
                    self.test_metrics = self.evaluate()
                every = self.cfg.checkpoint_every
                if last or (every and self.epoch % every == 0):
                    self.save_checkpoint()
        return self.test_metrics


def build_run(
    cfg: DictConfig, device: torch.device
) -> tuple[MultiTaskData, MultiTaskModel, Weighting, torch.optim.Optimizer]:
    """Data, model, weighting strategy and optimizer, on `device`, as the config says."""
    trainer = settings(cfg.trainer)
    data = place_data(build(cfg.dataset), device, trainer.channels_last)
    model = build(cfg.model, tasks=data.tasks).to(device)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weighting = build(cfg.weighting, terms=loss_terms(data.tasks, settings(cfg.loss))).to(device)
    factory = optimizer_factory(build_partial(cfg.trainer.optimizer), trainer.fused_optimizer)
    weight_decay = cfg.trainer.optimizer.get("weight_decay", 0.0)
    optimizer = factory(params=param_groups(model, weighting, weight_decay))
    return data, model, weighting, optimizer


def resolve_objective(cfg: DictConfig, tasks: Sequence[TaskSpec], sigma: Collection[str]) -> str:
    """The metric the task function returns: `objective`, or test/<first task's main metric>."""
    known = [f"{split}/{m}" for split in ("test", "train") for m in metric_names(tasks, sigma)]
    objective = cfg.objective or f"test/{main_metric(tasks[0])}"
    if objective not in known:
        raise ConfigError(
            f"objective={objective!r} is not a metric of this run: choose one of {known}"
        )
    return objective


def configure_process(trainer: TrainerConfig, device: torch.device) -> None:
    """Thread pools, allocator, determinism and cuDNN as the trainer settings say."""
    settle_threads()
    if device.type == "cpu" and trainer.keep_host_memory:
        keep_host_memory()
    if trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(trainer.deterministic)
    torch.backends.cudnn.benchmark = trainer.cudnn_benchmark and not trainer.deterministic


def run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    choices: dict[str, str] | None = None,
) -> float:
    """Train as `cfg` says, write TensorBoard logs, checkpoints and results.json into
    `run_dir`; continue the run of `cfg.resume` where it stopped.

    Returns the objective metric, for Hydra sweepers. A failure of a fresh run leaves a
    results.json that says so; nothing a run wrote before is ever replaced by a failure.
    """
    info = {"choices": choices or {}, "overrides": list(overrides)}
    if not cfg.resume:
        rundir.check_fresh(run_dir)
    try:
        return _run(cfg, run_dir, info)
    except MtlError as e:
        if not cfg.resume or isinstance(e, Interrupted):
            status = "interrupted" if isinstance(e, Interrupted) else "failed"
            write_json(run_dir / RESULTS_FILE, {"status": status, "error": str(e), **info})
        raise


def _run(cfg: DictConfig, run_dir: Path, info: dict[str, Any]) -> float:
    started = time.perf_counter()
    trainer_cfg = settings(cfg.trainer)
    device = select_device(trainer_cfg.device)
    state = checkpoint.load(rundir.checkpoint_of(Path(cfg.resume))) if cfg.resume else None
    configure_process(trainer_cfg, device)
    seed_everything(cfg.seed)
    data, model, weighting, optimizer = build_run(cfg, device)
    objective = resolve_objective(cfg, data.tasks, data.test.noise_std)
    log.info(
        "%s: %d train / %d test samples, tasks %s, weighting %s, device %s",
        info["choices"].get("dataset", "data"), len(data.train), len(data.test),
        [t.name for t in data.tasks], type(weighting).__name__, device,
    )  # fmt: skip
    purge = state["trainer"]["position"]["step"] + 1 if state else None
    with TensorBoardLog(run_dir / "tb", purge_step=purge) as tb, logging_redirect_tqdm():
        run_info = {**info, "config": OmegaConf.to_container(cfg, resolve=True)}
        trainer = Trainer(
            model, weighting, optimizer, data, trainer_cfg, tb, device, cfg.seed,
            checkpoint.path_in(run_dir), run_info,
        )  # fmt: skip
        if state:
            trainer.load_state_dict(state["trainer"])
            log.info("resumed at step %d (epoch %d)", trainer.step, trainer.epoch + 1)
        else:
            quantities = weighting.report()
            tb.layout({q: [f"^{q}/"] for q in ("loss_raw", "loss_weighted", *quantities)})
            tags = [f"test/{m}" for m in metric_names(data.tasks, data.test.noise_std)]
            tb.hparams(flat_config(cfg), tags)
        fit_started = time.perf_counter()
        test_metrics = trainer.fit()
        train_time = time.perf_counter() - fit_started
        model.eval()
        trainer.log_figures(run_dir / "figures")

    train_metrics = evaluate(
        trainer.forward, data.train, data.tasks, trainer_cfg.eval_batch_size, trainer.precision
    )
    metrics = {**{f"test/{k}": v for k, v in test_metrics.items()},
               **{f"train/{k}": v for k, v in train_metrics.items()}}  # fmt: skip
    names = weighting.names
    learned = {q: dict(zip(names, v.tolist(), strict=True)) for q, v in weighting.report().items()}
    results = {
        "status": "completed",
        **info,
        "seed": int(cfg.seed),
        "epochs": trainer.epochs,
        "steps": trainer.step,
        "nonfinite_steps": trainer.nonfinite_steps,
        "device": str(device),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "train_time_s": round(train_time, 3),
        "objective": {"name": objective, "value": metrics[objective]},
        "metrics": metrics,
        "weighting": learned,
        "true_sigma": true_sigma(data.train, weighting.terms),
    }
    write_json(run_dir / RESULTS_FILE, results)
    tasks = {t.name: t for t in data.tasks}
    main = {t.name: main_metric(tasks[t.task]) for t in weighting.terms}
    print(summary_table(results, main, [t.name for t in weighting.terms if not t.heteroscedastic]))
    return metrics[objective]
