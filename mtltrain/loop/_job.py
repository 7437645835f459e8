"""One job of the loop: a run's model, strategy, optimizers, callbacks, selection, generator,
position and running metrics, and its whole state (`state_dict`, from which it resumes exactly).

The trainer (`mtltrain.loop._trainer`) and the steps (`mtltrain.loop._job_step`,
`mtltrain.loop._stacked`) change a job by its methods only: a step counts itself with `add_step`
(or `skip_step`, or `add_steps` for what a stacked step has summed over several steps) and ends
with `end_step`; an epoch ends with `end_epoch` (the strategy's epoch hook, an evaluation when one
is due, selection, callbacks); `interrupt` checkpoints (by the callbacks) and stops it; `guarded`
runs a call whose error stops this job alone. Callbacks are handed the job.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mtltrain.config._schema import TrainerConfig
from mtltrain.data.base import AnySplit, MultiTaskData, Split
from mtltrain.distributed import ONE_PROCESS, Ranks
from mtltrain.errors import CheckpointError, ConfigError, Interrupted
from mtltrain.loop._callbacks import Callback, hooked
from mtltrain.loop._runtime import rng_states, set_rng_states
from mtltrain.loop._schedule import Schedule, resume_schedule
from mtltrain.loop._selection import Metrics, Selection
from mtltrain.metrics import TaskMetrics
from mtltrain.models.base import MultiTaskNet, Outputs, predict
from mtltrain.step import Step
from mtltrain.tasks import TaskSpec
from mtltrain.weighting.base import Weighting


@torch.no_grad()
def evaluate(
    model: MultiTaskNet,
    split: AnySplit,
    tasks: Sequence[TaskSpec],
    batch_size: int,
    precision: contextlib.AbstractContextManager | None = None,
    ranks: Ranks = ONE_PROCESS,
    limit: int | None = None,
) -> dict[str, float]:
    """Metrics of `model` in eval mode on a whole split (its first `limit` batches where
    set), without training; its mode is kept. Under torchrun each rank scores its shard of the
    split and the sums are added up."""
    was_training = model.training
    model.eval()
    metrics = TaskMetrics(tasks, knows_sigma=split.noise_std)
    shard, _ = ranks.shard(split)
    # an empty shard still adds its (zero) sums, so that every rank takes part in the reduction
    device = next(model.parameters()).device
    for batch in itertools.islice(shard.batches(batch_size), limit) if len(shard) else [shard]:
        if batch.device != device:  # loaded from a Dataset, or kept in host memory
            batch = batch.map(lambda t: t.to(device, non_blocking=True))
        with precision or contextlib.nullcontext():
            outputs = predict(model, batch.inputs)
        metrics.update(outputs, batch)
    model.train(was_training)
    return metrics.compute(ranks)


class Job:
    """One model trained with one weighting strategy, and everything of it that changes while
    it trains: its position (epoch, batch within the epoch, step), running metrics, selection
    and generator, all in `state_dict()`, so a run stopped anywhere continues exactly. `error`
    is what stopped it (None while it trains)."""

    def __init__(
        self,
        model: MultiTaskNet,
        strategy: Weighting,
        optimizer: torch.optim.Optimizer,
        data: MultiTaskData,
        settings: TrainerConfig,
        device: torch.device,
        seed: int,
        precision: contextlib.AbstractContextManager,
        selection: Selection,
        callbacks: Sequence[Callback] = (),
        forward: MultiTaskNet | None = None,
        ranks: Ranks = ONE_PROCESS,
        schedule: Schedule | None = None,
    ) -> None:
        self.model, self.strategy, self.optimizer = model, strategy, optimizer
        self.schedule = schedule  # trainer.lr_scheduler: steps at epoch ends
        self.ranks, self.seed = ranks, seed
        self.selection = selection
        self.data, self.cfg, self.device, self.precision = data, settings, device, precision
        self.forward = model if forward is None else forward
        self.callbacks = list(callbacks)
        self.strategy_optimizers = strategy.optimizers()
        self.terms = strategy.terms
        self.generator = torch.Generator(device=data.train.device).manual_seed(seed)
        self.train_split = training_split(data)
        # by type: data placed on "cuda" lands on "cuda:0", which != torch.device("cuda")
        self.on_device = data.train.device.type == device.type
        self.epochs, self.batch_size = settings.epochs, settings.batch_size
        batches = self.train_split.num_batches(self.batch_size)
        self.batches_per_epoch = min(batches, settings.limit_batches or batches)
        self.vetoes = hooked(self.callbacks, "allows_update")
        self.step_ends = hooked(self.callbacks, "on_step_end")
        self.error: BaseException | None = None
        # what changes while training (all of it in state_dict)
        self.epoch = self.batch = self.step = self.evaluations = self.skipped_steps = 0
        self.shuffle_state = self.generator.get_state()
        self.test_metrics: dict[str, float] = {}
        self.train_metrics = TaskMetrics(
            data.tasks, knows_sigma=self.train_split.noise_std, running=True
        )
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
            "rng": rng_states(),
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
            "lr_scheduler": None if self.schedule is None else self.schedule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for what, module, key in (
            ("model parameter", self.model, "model"),
            ("weighting state", self.strategy, "weighting"),
        ):
            differs = mismatch(state[key], module.state_dict(), what)
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
        resume_schedule(self.schedule, state.get("lr_scheduler"))  # none before it existed
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
        set_rng_states(state["rng"])
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

    # -- what a step tells its job -------------------------------------------------------

    def allows_update(self, step: Step) -> bool:
        """Whether the job's callbacks let the step's update go ahead (the non-finite policy)."""
        return all(cb.allows_update(self, step) for cb in self.vetoes)

    def add_step(self, outputs: Outputs, batch: Split, total: Tensor, losses: Tensor) -> None:
        """An updated step into the running train metrics and losses: its detached `outputs`
        on `batch`, its `total` and its term `losses`."""
        self.train_metrics.update(outputs, batch)
        self.train_loss += total
        self.train_batches += 1
        self.epoch_losses += losses.detach()
        self.epoch_batches += 1

    def add_steps(self, total: Tensor, losses: Tensor, count: int) -> None:
        """`count` updated steps at once (a stacked step's since its last sync): the sums of
        their totals and of their term losses (their outputs: `add_outputs`)."""
        self.train_loss = self.train_loss + total
        self.train_batches += count
        self.epoch_losses = self.epoch_losses + losses
        self.epoch_batches += count

    def add_outputs(self, outputs: Outputs, batch: Split) -> None:
        """Updated steps' detached outputs on their samples into the running train metrics."""
        self.train_metrics.update(outputs, batch)

    def skip_step(self) -> None:
        """A step whose update a callback vetoed: counted, not trained on."""
        self.skipped_steps += 1

    def end_step(self, step: Step) -> None:
        """The step is the job's last: its position moves on, its `on_step_end` callbacks run."""
        self.step = step.number
        self.batch += 1
        for cb in self.step_ends:
            cb.on_step_end(self, step)

    # -- epochs --------------------------------------------------------------------------

    def epoch_order(self) -> Tensor:
        """The current epoch's order of the train split, drawn from the run's generator (drawn
        again when resuming mid-epoch), on the data's device; with trainer.shuffle=false the
        split's own order, every epoch."""
        if not self.cfg.shuffle:
            return torch.arange(len(self.train_split), device=self.generator.device)
        if self.batch == 0:
            self.shuffle_state = self.generator.get_state()
        else:  # resuming mid-epoch: draw the epoch's order again
            self.generator.set_state(self.shuffle_state)
        return self.train_split.order(self.generator)

    def evaluate(self) -> Metrics:
        """The running train metrics since the last evaluation, and the metrics of every
        evaluated split (validation where held out, test)."""
        self.ranks.check_same([self.model, self.strategy], self.step)
        train = {
            **self.train_metrics.compute(self.ranks),
            "loss": self.train_loss.item() / max(1, self.train_batches),
        }
        self.train_metrics = TaskMetrics(
            self.data.tasks, knows_sigma=self.train_split.noise_std, running=True
        )
        self.train_loss, self.train_batches = torch.zeros((), device=self.device), 0
        evaluated = {
            name: evaluate(
                self.forward,
                split,
                self.data.tasks,
                self.cfg.eval_batch_size,
                self.precision,
                self.ranks,
                self.cfg.limit_batches,
            )
            for name, split in self.data.splits().items()
        }
        self.evaluations += 1
        return {"train": train, **evaluated}

    def start(self) -> None:
        """Before its first step of a fit: `on_fit_start` callbacks; under torchrun each rank's
        random stream."""
        self.notify("on_fit_start")
        self.ranks.separate_random_streams(self.seed, self.step)

    def end_epoch(self) -> None:
        """Close the epoch just trained: strategy hook, evaluation if due, the learning-rate
        schedule's step, callbacks."""
        self.epoch, self.batch = self.epoch + 1, 0
        self.notify("on_train_epoch_end")
        mean = self.epoch_losses / max(1, self.epoch_batches)
        self.strategy.on_epoch_end(self.epoch - 1, mean)
        self.epoch_losses, self.epoch_batches = torch.zeros_like(self.epoch_losses), 0
        metrics = None
        if self.epoch % self.cfg.eval_every == 0 or self.epoch == self.epochs:
            metrics = self.evaluate()
            self.test_metrics = metrics["test"]
            self.selection.update(self.epoch, self.step, metrics)
            if self.selection.improved:
                self.selection.keep(self.model, self.strategy)
            self.notify("on_evaluation", metrics)
        if self.schedule is not None:
            self.schedule.end_epoch(metrics)
        self.hold_running_metrics_on_rank_0()
        self.notify("on_epoch_end")

    def interrupt(self, signum: int) -> None:
        """Stop after the step just taken: the callbacks checkpoint; raises Interrupted."""
        self.hold_running_metrics_on_rank_0()
        self.notify("on_interrupt")
        self.ranks.barrier()  # no rank exits (and torchrun stops the rest) before the checkpoint
        raise Interrupted(
            f"stopped by {signal.Signals(signum).name} at step {self.step} "
            f"(epoch {self.epoch + 1})",
            signum,
        )

    def finish(self) -> None:
        """After its last epoch: `on_fit_end` callbacks, then with trainer.select=best the
        model and strategy in their selected state (TensorBoard and figures show where
        training ended)."""
        self.notify("on_fit_end")
        self.selection.restore(self.model, self.strategy)

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

    def notify(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # -- errors --------------------------------------------------------------------------

    def guarded(self, call: Callable[[], Any]) -> Any:
        """`call`; an error stops this job alone (`fail`), and False is returned."""
        try:
            return call()
        except Exception as e:
            self.fail(e)
            return False

    def fail(self, error: BaseException) -> None:
        """The job stops with `error` (its first one is kept, for its run)."""
        if self.error is None:
            self.error = error


def training_split(data: MultiTaskData) -> AnySplit:
    """What training batches carry: inputs, targets, and the true σ where a heteroscedastic
    task's metrics score against it (a Dataset's items carry inputs and targets only)."""
    if not isinstance(data.train, Split):
        return data.train
    hetero = {t.name for t in data.tasks if t.heteroscedastic}
    noise = {k: v for k, v in data.train.noise_std.items() if k in hetero}
    return Split(data.train.inputs, data.train.targets, noise)


def mismatch(saved: dict[str, Any], current: dict[str, Any], what: str) -> str | None:
    """How a saved state dict differs from the run's own, in words: the first tensor of
    another shape, else the first name only one of them has; None when they fit."""
    shapes = [
        (k, v.shape, current[k].shape)
        for k, v in saved.items()
        if k in current and isinstance(v, torch.Tensor) and v.shape != current[k].shape
    ]
    only_saved = [k for k in saved if k not in current]
    only_here = [k for k in current if k not in saved]
    more = len(shapes) + len(only_saved) + len(only_here) - 1
    tail = f" (and {more} more difference{'s' * (more != 1)})" if more > 0 else ""
    if shapes:
        k, there, here = shapes[0]
        return f"{what} {k} is {list(there)} in the checkpoint but {list(here)} here{tail}"
    if only_saved:
        return f"the checkpoint's {what} has {only_saved[0]}, this run's has not{tail}"
    if only_here:
        return f"this run's {what} has {only_here[0]}, the checkpoint's has not{tail}"
    return None
