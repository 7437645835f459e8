"""The training loop: config → built objects → fit and evaluate → TensorBoard and results.json."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mtltrain import figures
from mtltrain.config import build, flat_config
from mtltrain.data.base import MultiTaskData, Split
from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, compute_losses, detach, loss_terms
from mtltrain.metrics import TaskMetrics, main_metric, metric_names
from mtltrain.models import MultiTaskModel
from mtltrain.results import RESULTS_FILE, summary_table, write_json
from mtltrain.tasks import TaskSpec
from mtltrain.tblog import TensorBoardLog
from mtltrain.weighting import Weighting

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")


def select_device(name: str) -> torch.device:
    """`auto` takes CUDA when present, else the CPU."""
    if name not in DEVICES:
        raise ConfigError(f"trainer.device={name!r} is not allowed: choose one of {DEVICES}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible: use auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: MultiTaskModel, weighting: Weighting) -> list[dict[str, Any]]:
    """Model parameters, then the strategy's own parameters, which get no weight decay."""
    groups = [{"params": list(model.parameters())}]
    own = list(weighting.parameters())
    if own:
        groups.append({"params": own, "weight_decay": 0.0})
    return groups


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
    model: MultiTaskModel, split: Split, tasks: Sequence[TaskSpec], batch_size: int
) -> dict[str, float]:
    """Metrics of the model on a whole split, in eval mode and without training."""
    was_training = model.training
    model.eval()
    metrics = TaskMetrics(tasks, knows_sigma=split.noise_std)
    for batch in split.batches(batch_size):
        metrics.update(model(batch.inputs), batch)
    model.train(was_training)
    return metrics.compute()


class Fit:
    """Trains one model with one weighting strategy, logging to one TensorBoard writer."""

    def __init__(
        self,
        model: MultiTaskModel,
        weighting: Weighting,
        optimizer: torch.optim.Optimizer,
        data: MultiTaskData,
        trainer: DictConfig,
        tb: TensorBoardLog,
        generator: torch.Generator,
    ) -> None:
        self.model, self.weighting, self.optimizer = model, weighting, optimizer
        self.data, self.tb, self.generator = data, tb, generator
        self.terms = weighting.terms
        self.shared = model.shared_parameters()
        self.epochs = int(trainer.epochs)
        self.batch_size = int(trainer.batch_size)
        self.eval_batch_size = int(trainer.eval_batch_size)
        self.eval_every = int(trainer.eval_every)
        self.figure_every = int(trainer.figure_every)
        self.log_every = int(trainer.log_every)
        self.show_bars = None if trainer.progress else True  # None: bars on a terminal only
        self.step = 0
        self.evaluations = 0

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

    def train_step(self, batch: Split, metrics: TaskMetrics) -> torch.Tensor:
        """One optimisation step on a batch; returns the per-term contributions."""
        outputs = self.model(batch.inputs)
        losses = compute_losses(self.terms, outputs, batch.targets)
        seen = {name: detach(out) for name, out in outputs.items()}
        self.weighting.observe(seen, batch.targets)
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.weighting.backward(losses, self.shared)
        self.optimizer.step()
        self.step += 1
        metrics.update(seen, batch)
        if self.step % self.log_every == 0:
            self.log_step(losses, parts)
        return parts

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the shuffled train split; returns running train metrics and loss."""
        split = self.data.train
        metrics = TaskMetrics(self.data.tasks, knows_sigma=split.noise_std)
        loss_sum = torch.zeros((), device=split.inputs.device)
        bar = tqdm(
            split.batches(self.batch_size, generator=self.generator),
            total=split.num_batches(self.batch_size),
            desc=f"epoch {epoch + 1}/{self.epochs}",
            leave=False,
            disable=self.show_bars,
        )
        for batch in bar:
            parts = self.train_step(batch, metrics)
            loss_sum += parts.sum()
            if not bar.disable and self.step % self.log_every == 0:
                bar.set_postfix(loss=f"{parts.sum().item():.4g}", refresh=False)
        bar.close()
        return {**metrics.compute(), "loss": loss_sum.item() / split.num_batches(self.batch_size)}

    def evaluate(self) -> dict[str, float]:
        """Test metrics, logged; figures every `figure_every` evaluations (0: never here)."""
        test_metrics = evaluate(self.model, self.data.test, self.data.tasks, self.eval_batch_size)
        self.tb.scalars({f"test/{k}": v for k, v in test_metrics.items()}, self.step)
        self.evaluations += 1
        if self.figure_every and self.evaluations % self.figure_every == 0:
            for name, fig in figures.render(self.model, self.data.test, self.data.tasks).items():
                self.tb.image(f"figures/{name}", figures.to_rgb(fig), self.step)
        return test_metrics

    def run(self) -> dict[str, float]:
        """Train for all epochs, evaluating the test split every `eval_every` epochs."""
        lines = max(1, self.epochs // 10)
        test_metrics: dict[str, float] = {}
        for epoch in range(self.epochs):
            train_metrics = self.train_epoch(epoch)
            last = epoch + 1 == self.epochs
            if (epoch + 1) % self.eval_every == 0 or last:
                test_metrics = self.evaluate()
            self.tb.scalars({f"train/{k}": v for k, v in train_metrics.items()}, self.step)
            if (epoch + 1) % lines == 0 or last:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in test_metrics.items())
                log.info(
                    "epoch %d/%d  train loss %.4g  test %s",
                    epoch + 1, self.epochs, train_metrics["loss"], shown,
                )  # fmt: skip
        return test_metrics


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
) -> tuple[MultiTaskData, MultiTaskModel, Weighting]:
    data = build(cfg.dataset).to(device)
    model = build(cfg.model, tasks=data.tasks).to(device)
    terms = loss_terms(data.tasks, cfg.loss)
    weighting = build(cfg.weighting, terms=terms).to(device)
    return data, model, weighting


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
    seed_everything(cfg.seed)
    data, model, weighting = build_run(cfg, device)
    objective = resolve_objective(cfg, data.tasks, data.test.noise_std)
    optimizer = build(cfg.trainer.optimizer, params=param_groups(model, weighting))
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
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
        fit = Fit(model, weighting, optimizer, data, cfg.trainer, tb, generator)
        test_metrics = fit.run()
        save_figures(model, data, tb, fit.step, run_dir / "figures")

    train_metrics = evaluate(model, data.train, data.tasks, int(cfg.trainer.eval_batch_size))
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
        "epochs": fit.epochs,
        "steps": fit.step,
        "device": str(device),
        "wall_time_s": round(time.perf_counter() - started, 3),
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
