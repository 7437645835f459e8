"""The training loop: epochs of steps, the strategy's hooks and the callbacks; nothing else.

A step: forward → term losses → `strategy.observe` → the engine's backward pass → callbacks
may veto the update (the non-finite policy) → the model's optimizer steps →
`strategy.after_step` → the strategy's own optimizers step → `on_step_end` callbacks. An
epoch ends with `on_train_epoch_end` callbacks, `strategy.on_epoch_end` with the epoch's mean
term losses, an evaluation when one is due (`on_evaluation`), then `on_epoch_end` callbacks
(checkpoints). Which strategy, model or callbacks the loop holds it never asks: everything
else is a callback (`mtltrain.loop._callbacks`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtltrain.config._schema import TrainerConfig
from mtltrain.data.base import MultiTaskData, Split
from mtltrain.distributed import ONE_PROCESS, Ranks
from mtltrain.errors import CheckpointError, ConfigError, Interrupted
from mtltrain.interrupts import StopSignals
from mtltrain.loop._callbacks import Callback, hooked
from mtltrain.loop._direct_step import direct_step
from mtltrain.loop._engine import Backward
from mtltrain.loop._selection import Metrics, Selection
from mtltrain.losses import compute_losses, detach
from mtltrain.metrics import TaskMetrics
from mtltrain.models.base import MultiTaskNet, predict
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.step import Step
from mtltrain.tasks import TaskSpec
from mtltrain.weighting.base import Weighting


@torch.no_grad()
def evaluate(
    model: MultiTaskNet,
    split: Split,
    tasks: Sequence[TaskSpec],
    batch_size: int,
    precision: contextlib.AbstractContextManager | None = None,
    ranks: Ranks = ONE_PROCESS,
) -> dict[str, float]:
    """Metrics of `model` in eval mode on a whole split, without training; its mode is kept.
    Under torchrun each rank scores its shard of the split and the sums are added up."""
    was_training = model.training
    model.eval()
    metrics = TaskMetrics(tasks, knows_sigma=split.noise_std)
    shard, _ = ranks.shard(split)
    # an empty shard still adds its (zero) sums, so that every rank takes part in the reduction
    for batch in shard.batches(batch_size) if len(shard) else [shard]:
        with precision or contextlib.nullcontext():
            outputs = predict(model, batch.inputs)
        metrics.update(outputs, batch)
    model.train(was_training)
    return metrics.compute(ranks)


class Trainer:
    """Trains one model with one weighting strategy.

    Its position (epoch, batch within the epoch, step) and everything that changes while it
    trains are in `state_dict()`, so a run stopped anywhere continues exactly.
    """

    def __init__(
        self,
        model: MultiTaskNet,
        strategy: Weighting,
        optimizer: torch.optim.Optimizer,
        backward: Backward,
        data: MultiTaskData,
        settings: TrainerConfig,
        device: torch.device,
        seed: int,
        precision: contextlib.AbstractContextManager,
        selection: Selection,
        callbacks: Sequence[Callback] = (),
        forward: MultiTaskNet | None = None,
        ranks: Ranks = ONE_PROCESS,
    ) -> None:
        self.model, self.strategy, self.optimizer = model, strategy, optimizer
        self.ranks, self.seed = ranks, seed
        self.selection = selection
        self.backward = backward
        self.data, self.cfg, self.device, self.precision = data, settings, device, precision
        self.forward = model if forward is None else forward
        self.callbacks = list(callbacks)
        self.strategy_optimizers = strategy.optimizers()
        self.optimizer_step = direct_step(optimizer)
        self.terms = strategy.terms
        self.generator = torch.Generator(device=data.train.inputs.device).manual_seed(seed)
        # Training batches carry what training reads: inputs, targets, and the true σ where
        # a heteroscedastic task's metrics score against it.
        hetero = {t.name for t in data.tasks if t.heteroscedastic}
        noise = {k: v for k, v in data.train.noise_std.items() if k in hetero}
        self.train_split = Split(data.train.inputs, data.train.targets, noise)
        self.params = [
            p
            for opt in (optimizer, *self.strategy_optimizers)
            for group in opt.param_groups
            for p in group["params"]
        ]
        # by type: data placed on "cuda" lands on "cuda:0", which != torch.device("cuda")
        self.on_device = data.train.inputs.device.type == device.type
        self.epochs, self.batch_size = settings.epochs, settings.batch_size
        self.batches_per_epoch = self.train_split.num_batches(self.batch_size)
        self.stop = StopSignals()
        self.vetoes = hooked(self.callbacks, "allows_update")
        self.step_ends = hooked(self.callbacks, "on_step_end")
        # what changes while training (all of it in state_dict)
        self.epoch = self.batch = self.step = self.evaluations = self.skipped_steps = 0
        self.shuffle_state = self.generator.get_state()
        self.test_metrics: dict[str, float] = {}
        self.train_metrics = TaskMetrics(data.tasks, knows_sigma=self.train_split.noise_std)
        self.train_loss, self.train_batches = torch.zeros((), device=device), 0
        self.epoch_losses, self.epoch_batches = torch.zeros(len(self.terms), device=device), 0

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.strategy.state_dict(),
            "weighting_optimizers": [o.state_dict() for o in self.strategy_optimizers],
            "position": {
                "epochs": self.epochs,  # what the run was set to train when this was written
                "epoch": self.epoch,
                "batch": self.batch,
                "step": self.step,
                "evaluations": self.evaluations,
                "nonfinite_steps": self.skipped_steps,
            },
            "shuffle_state": self.shuffle_state,
            "generator": self.generator.get_state(),
            "rng": checkpoint.rng_states(),
            "running": {
                "sums": self.train_metrics.sums,
                "counts": self.train_metrics.counts,
                "loss": self.train_loss,
                "batches": self.train_batches,
                "epoch_losses": self.epoch_losses,
                "epoch_batches": self.epoch_batches,
            },
            "test_metrics": self.test_metrics,
            "selection": self.selection.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for what, module, key in (
            ("model parameter", self.model, "model"),
            ("weighting state", self.strategy, "weighting"),
        ):
            differs = checkpoint.mismatch(state[key], module.state_dict(), what)
            if differs is not None:
                raise CheckpointError(f"the checkpoint does not fit this run: {differs}")
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["weighting"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            for opt, saved in zip(
                self.strategy_optimizers, state["weighting_optimizers"], strict=True
            ):
                opt.load_state_dict(saved)
        except (ValueError, KeyError):
            raise CheckpointError(
                "the checkpoint does not fit this run: its optimizer state is for other "
                "parameter groups (another optimizer, or a strategy with parameters of its own)"
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
        self.skipped_steps = position["nonfinite_steps"]
        self.shuffle_state = state["shuffle_state"]
        self.generator.set_state(state["generator"])
        checkpoint.set_rng_states(state["rng"])
        running = state["running"]
        self.train_metrics.sums = {k: v.to(self.device) for k, v in running["sums"].items()}
        self.train_metrics.counts = dict(running["counts"])
        self.keep_running_metrics_on_rank_0()  # the checkpoint's are every rank's
        self.train_loss = running["loss"].to(self.device)
        self.train_batches = running["batches"]
        self.epoch_losses = running["epoch_losses"].to(self.device)
        self.epoch_batches = running["epoch_batches"]
        self.test_metrics = state["test_metrics"]
        if "selection" in state:  # checkpoints before trainer.select have none
            self.selection.load_state_dict(state["selection"])

    # -- one step ------------------------------------------------------------------------

    def train_step(self, batch: Split) -> Step:
        """One optimisation step on a batch (under torchrun: on this rank's shard of it)."""
        batch, share = self.ranks.shard(batch)
        if not self.on_device:
            batch = batch.map(lambda t: t.to(self.device, non_blocking=True))
        with self.precision:
            outputs, features = self.forward(batch.inputs)
            losses = compute_losses(self.terms, outputs, batch.targets)
        losses = self.ranks.global_losses(losses, share)
        seen = {name: detach(out) for name, out in outputs.items()}
        step = Step(self.step + 1, self.epoch, batch, seen, losses, share=share, ranks=self.ranks)
        for p in self.params:  # optimizer.zero_grad(set_to_none=True), without its overhead
            p.grad = None
        self.strategy.observe(step)
        step.parts, step.total = self.backward(losses, features)
        self.step = step.number
        if all(cb.allows_update(self, step) for cb in self.vetoes):
            self.optimizer_step()
            self.strategy.after_step(step, self.recompute_losses)
            for opt in self.strategy_optimizers:
                opt.step()
            self.train_metrics.update(seen, batch)
            self.train_loss += step.total
            self.train_batches += 1
            self.epoch_losses += losses.detach()
            self.epoch_batches += 1
        else:
            self.skipped_steps += 1
        for cb in self.step_ends:
            cb.on_step_end(self, step)
        return step

    @torch.no_grad()
    def recompute_losses(self, step: Step) -> Tensor:
        """The term losses of the step's batch under the model as it is now."""
        with self.precision:
            outputs, _ = self.forward(step.batch.inputs)
            losses = compute_losses(self.terms, outputs, step.batch.targets)
        return self.ranks.global_losses(losses, step.share)

    # -- epochs --------------------------------------------------------------------------

    def epoch_order(self) -> Tensor:
        """The current epoch's order of the train split, drawn from the run's generator (drawn
        again when resuming mid-epoch), on the data's device."""
        if self.batch == 0:
            self.shuffle_state = self.generator.get_state()
        else:  # resuming mid-epoch: draw the epoch's order again
            self.generator.set_state(self.shuffle_state)
        return self.train_split.order(self.generator)

    def train_epoch(self) -> None:
        """The rest of the current epoch over the shuffled train split."""
        split = self.train_split.take(self.epoch_order())
        if not self.on_device:
            split = split.map(torch.Tensor.pin_memory)
        for batch in split.batches(self.batch_size, start=self.batch):
            self.train_step(batch)
            self.batch += 1
            signum = self.ranks.agreed_signal(self.stop.received)
            if signum is not None:
                self.interrupt(signum)

    def interrupt(self, signum: int) -> None:
        self.hold_running_metrics_on_rank_0()
        self.notify("on_interrupt")
        self.ranks.barrier()  # no rank exits (and torchrun stops the rest) before the checkpoint
        raise Interrupted(
            f"stopped by {signal.Signals(signum).name} at step {self.step} "
            f"(epoch {self.epoch + 1})",
            signum,
        )

    def evaluate(self) -> Metrics:
        """The running train metrics since the last evaluation, and the metrics of every
        evaluated split (validation where held out, test)."""
        self.ranks.check_same([self.model, self.strategy], self.step)
        train = {
            **self.train_metrics.compute(self.ranks),
            "loss": self.train_loss.item() / max(1, self.train_batches),
        }
        self.train_metrics = TaskMetrics(self.data.tasks, knows_sigma=self.train_split.noise_std)
        self.train_loss, self.train_batches = torch.zeros((), device=self.device), 0
        evaluated = {
            name: evaluate(
                self.forward,
                split,
                self.data.tasks,
                self.cfg.eval_batch_size,
                self.precision,
                self.ranks,
            )
            for name, split in self.data.splits().items()
        }
        self.evaluations += 1
        return {"train": train, **evaluated}

    def end_epoch(self) -> None:
        """Close the epoch just trained: strategy hook, evaluation if due, callbacks."""
        self.epoch, self.batch = self.epoch + 1, 0
        self.notify("on_train_epoch_end")
        mean = self.epoch_losses / max(1, self.epoch_batches)
        self.strategy.on_epoch_end(self.epoch - 1, mean)
        self.epoch_losses, self.epoch_batches = torch.zeros_like(self.epoch_losses), 0
        if self.epoch % self.cfg.eval_every == 0 or self.epoch == self.epochs:
            metrics = self.evaluate()
            self.test_metrics = metrics["test"]
            self.selection.update(self.epoch, self.step, metrics)
            if self.selection.improved:
                self.selection.keep(self.model, self.strategy)
            self.notify("on_evaluation", metrics)
        self.hold_running_metrics_on_rank_0()
        self.notify("on_epoch_end")

    def hold_running_metrics_on_rank_0(self) -> None:
        """Rank 0's running train metrics become the sums over ranks, the others' zero: what a
        checkpoint (written by rank 0) must hold to resume them."""
        if self.ranks.size == 1 or not self.train_metrics.complete():
            return
        sums, counts = self.train_metrics.summed(self.ranks)
        self.train_metrics.sums = {k: v.to(self.device) for k, v in sums.items()}
        self.train_metrics.counts = counts
        self.keep_running_metrics_on_rank_0()

    def keep_running_metrics_on_rank_0(self) -> None:
        """Zero the running train metrics of ranks 1…: rank 0 holds every rank's."""
        if self.ranks.rank:
            metrics = self.train_metrics
            metrics.sums = {k: torch.zeros_like(v) for k, v in metrics.sums.items()}
            metrics.counts = dict.fromkeys(metrics.counts, 0)

    def fit(self) -> dict[str, float]:
        """Train to the last epoch; SIGINT/SIGTERM/SIGUSR2 stop it after a step (callbacks
        checkpoint). With trainer.select=best the model and strategy end in their selected
        state, after the callbacks' end (TensorBoard and figures show where training ended).
        Returns the last evaluation's test metrics (`selection` holds the reported ones)."""
        self.notify("on_fit_start")
        self.ranks.separate_random_streams(self.seed, self.step)
        with self.stop:
            while self.epoch < self.epochs:
                self.train_epoch()
                self.end_epoch()
        self.notify("on_fit_end")
        self.selection.restore(self.model, self.strategy)
        return self.test_metrics

    def notify(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)
