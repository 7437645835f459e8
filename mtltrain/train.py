"""The training loop: config → built objects → fit and evaluate → TensorBoard and results.json."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mtltrain import figures
from mtltrain.config import build, build_partial, flat_config
from mtltrain.data.base import MultiTaskData, Split
from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, compute_losses, detach, loss_terms
from mtltrain.metrics import TaskMetrics, main_metric, metric_names
from mtltrain.models import MultiTaskModel
from mtltrain.results import RESULTS_FILE, summary_table, write_json
from mtltrain.runtime import (
    autocast,
    keep_host_memory,
    optimizer_factory,
    seed_everything,
    select_device,
    settle_threads,
)
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


@dataclass
class Speed:
    """The trainer's speed settings (see conf/trainer/default.yaml)."""

    precision: str = "fp32"
    channels_last: bool = True
    compile: str | None = None
    fused_optimizer: bool = True
    keep_host_memory: bool = True
    cudnn_benchmark: bool = True

    @classmethod
    def from_config(cls, trainer: DictConfig) -> Speed:
        return cls(**{f.name: trainer[f.name] for f in fields(cls)})


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
    """Trains one model with one weighting strategy, logging to one TensorBoard writer."""

    def __init__(
        self,
        model: MultiTaskModel,
        weighting: Weighting,
        optimizer: torch.optim.Optimizer,
        data: MultiTaskData,
        trainer: DictConfig,
        tb: TensorBoardLog,
        device: torch.device,
        seed: int,
    ) -> None:
        self.model, self.weighting, self.optimizer = model, weighting, optimizer
        self.data, self.tb, self.device = data, tb, device
        speed = Speed.from_config(trainer)
        self.forward = torch.compile(model, mode=speed.compile) if speed.compile else model
        self.precision = (
            autocast(device, speed.precision)
            if speed.precision != "fp32"
            else contextlib.nullcontext()
        )
        self.generator = torch.Generator(device=data.train.inputs.device).manual_seed(seed)
        # Training batches carry what training reads: inputs, targets, and the true σ where
        # a heteroscedastic task's metrics score against it.
        hetero = {t.name for t in data.tasks if t.heteroscedastic}
        noise = {k: v for k, v in data.train.noise_std.items() if k in hetero}
        self.train_split = Split(data.train.inputs, data.train.targets, noise)
        self.terms = weighting.terms
        self.shared = model.shared_parameters()
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.on_device = data.train.inputs.device == device
        self.epochs = int(trainer.epochs)
        self.batch_size = int(trainer.batch_size)
        self.eval_batch_size = int(trainer.eval_batch_size)
        self.eval_every = int(trainer.eval_every)
        self.figure_every = int(trainer.figure_every)
        self.log_every = int(trainer.log_every)
        self.log_lines_every = max(1, self.epochs // self.eval_every // 10)  # about ten lines
        self.show_bars = None if trainer.progress else True  # None: bars on a terminal only
        self.step = 0
        self.evaluations = 0
        self.train_metrics = TaskMetrics(data.tasks, knows_sigma=noise)
        self.train_loss = torch.zeros((), device=device)
        self.train_batches = 0

    def log_step(self, losses: dict[str, torch.Tensor], parts: torch.Tensor) -> None:
        names = self.weighting.names
        values: dict[str, Any] = {"loss/total": parts.sum()}
        for i, name in enumerate(names):
            values[f"loss_raw/{name}"] = losses[name]
            values[f"loss_weighted/{name}"] = parts[i]
        for quantity, vector in self.weighting.report().items():
            values.update({f"{quantity}/{n}": vector[i] for i, n in enumerate(names)})
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        self.tb.scalars(values, self.step)

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
        self.optimizer.step()
        self.step += 1
        self.train_metrics.update(seen, batch)
        self.train_loss += parts.sum()
        self.train_batches += 1
        if self.step % self.log_every == 0:
            self.log_step(losses, parts)
        return parts

    def train_epoch(self, epoch: int) -> None:
        """One pass over the train split, shuffled."""
        split = self.train_split.shuffled(self.generator)
        if not self.on_device:
            split = split.map(torch.Tensor.pin_memory)
        bar = tqdm(
            split.batches(self.batch_size),
            total=split.num_batches(self.batch_size),
            desc=f"epoch {epoch + 1}/{self.epochs}",
            leave=False,
            disable=self.show_bars,
        )
        for batch in bar:
            parts = self.train_step(batch)
            if not bar.disable and self.step % self.log_every == 0:
                bar.set_postfix(loss=f"{parts.sum().item():.4g}", refresh=False)
        bar.close()

    def evaluate(self) -> dict[str, float]:
        """Log the running train metrics since the last evaluation and the test metrics;
        figures every `figure_every` evaluations (0: never here)."""
        train = {
            **self.train_metrics.compute(),
            "loss": self.train_loss.item() / max(1, self.train_batches),
        }
        self.train_metrics = TaskMetrics(self.data.tasks, knows_sigma=self.train_split.noise_std)
        self.train_loss.zero_()
        self.train_batches = 0
        self.model.eval()
        test = evaluate(
            self.forward, self.data.test, self.data.tasks, self.eval_batch_size, self.precision
        )
        self.evaluations += 1
        if self.figure_every and self.evaluations % self.figure_every == 0:
            for name, fig in figures.render(self.model, self.data.test, self.data.tasks).items():
                self.tb.image(f"figures/{name}", figures.to_rgb(fig), self.step)
        self.model.train()
        self.tb.scalars(
            {
                **{f"train/{k}": v for k, v in train.items()},
                **{f"test/{k}": v for k, v in test.items()},
            },
            self.step,
        )
        if self.evaluations % self.log_lines_every == 0 or self.epoch + 1 == self.epochs:
            log.info(
                "epoch %d/%d  step %d  train loss %.4g  test %s",
                self.epoch + 1, self.epochs, self.step, train["loss"],
                ", ".join(f"{k} {v:.4g}" for k, v in test.items()),
            )  # fmt: skip
        return test

    def fit(self) -> dict[str, float]:
        """Train for all epochs, evaluating the test split every `eval_every` epochs."""
        test: dict[str, float] = {}
        for epoch in range(self.epochs):
            self.epoch = epoch
            self.train_epoch(epoch)
            if (epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs:
                test = self.evaluate()
        return test


def save_figures(
    model: MultiTaskModel, data: MultiTaskData, tb: TensorBoardLog, step: int, folder: Path
) -> None:
    """The final pictures: into TensorBoard and as PNG files in `folder`."""
    rendered = figures.render(model, data.test, data.tasks)
    if rendered:
        folder.mkdir(exist_ok=True)
    for name, fig in rendered.items():
        tb.image(f"figures/{name}", figures.to_rgb(fig), step)
        figures.save_png(fig, folder / f"{name}.png")


def build_run(
    cfg: DictConfig, device: torch.device
) -> tuple[MultiTaskData, MultiTaskModel, Weighting, torch.optim.Optimizer]:
    """Data, model, weighting strategy and optimizer, on `device`, as the config says."""
    speed = Speed.from_config(cfg.trainer)
    data = place_data(build(cfg.dataset), device, speed.channels_last)
    model = build(cfg.model, tasks=data.tasks).to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weighting = build(cfg.weighting, terms=loss_terms(data.tasks, cfg.loss)).to(device)
    factory = optimizer_factory(build_partial(cfg.trainer.optimizer), speed.fused_optimizer)
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


def run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    choices: dict[str, str] | None = None,
) -> float:
    """Train as `cfg` says, write TensorBoard logs and results.json into `run_dir`.

    Returns the objective metric, for Hydra sweepers.
    """
    started = time.perf_counter()
    device = select_device(cfg.trainer.device)
    settle_threads()
    if device.type == "cpu" and cfg.trainer.keep_host_memory:
        keep_host_memory()
    torch.backends.cudnn.benchmark = bool(cfg.trainer.cudnn_benchmark)
    seed_everything(cfg.seed)
    data, model, weighting, optimizer = build_run(cfg, device)
    objective = resolve_objective(cfg, data.tasks, data.test.noise_std)
    log.info(
        "%s: %d train / %d test samples, tasks %s, weighting %s, device %s",
        (choices or {}).get("dataset", "data"), len(data.train), len(data.test),
        [t.name for t in data.tasks], type(weighting).__name__, device,
    )  # fmt: skip

    with TensorBoardLog(run_dir / "tb") as tb, logging_redirect_tqdm():
        quantities = weighting.report()
        tb.layout({q: [f"^{q}/"] for q in ("loss_raw", "loss_weighted", *quantities)})
        tags = [f"test/{m}" for m in metric_names(data.tasks, data.test.noise_std)]
        tb.hparams(flat_config(cfg), tags)
        trainer = Trainer(model, weighting, optimizer, data, cfg.trainer, tb, device, cfg.seed)
        fit_started = time.perf_counter()
        test_metrics = trainer.fit()
        train_time = time.perf_counter() - fit_started
        model.eval()
        save_figures(model, data, tb, trainer.step, run_dir / "figures")

    train_metrics = evaluate(
        trainer.forward, data.train, data.tasks, trainer.eval_batch_size, trainer.precision
    )
    metrics = {**{f"test/{k}": v for k, v in test_metrics.items()},
               **{f"train/{k}": v for k, v in train_metrics.items()}}  # fmt: skip
    names = weighting.names
    learned = {q: dict(zip(names, v.tolist(), strict=True)) for q, v in weighting.report().items()}
    sigma_true = true_sigma(data.train, weighting.terms)
    results = {
        "status": "completed",
        "choices": choices or {},
        "overrides": list(overrides),
        "seed": int(cfg.seed),
        "epochs": trainer.epochs,
        "steps": trainer.step,
        "device": str(device),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "train_time_s": round(train_time, 3),
        "objective": {"name": objective, "value": metrics[objective]},
        "metrics": metrics,
        "weighting": learned,
        "true_sigma": sigma_true,
    }
    write_json(run_dir / RESULTS_FILE, results)
    tasks = {t.name: t for t in data.tasks}
    main = {t.name: main_metric(tasks[t.task]) for t in weighting.terms}
    print(summary_table(results, main, [t.name for t in weighting.terms if not t.heteroscedastic]))
    return metrics[objective]
