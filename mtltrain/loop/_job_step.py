"""The per-job step: one job's step by its own model, engine and optimizers (a single run, N =
1, with nothing of the stacked machinery).

A step: forward → term losses (and, for a strategy with `extra_batches`, those batches, drawn
from their streams by `mtltrain.loop._extra_batches`; for a gradient-based strategy their
forward passes and term losses too, whose Jacobians the engine hands it; in training mode as
the step's own, so batch-norm statistics see them too, as in SDMGrad's and MoDo's code) →
`strategy.observe` → the engine's backward pass → the job's callbacks may veto the update (the
non-finite policy) → the gradients' total norm is clipped (`trainer.grad_clip`) → the model's
optimizer steps (torch's fused Adam(W) called directly: `mtltrain.loop._direct_step.direct_step`) →
`strategy.after_step` → the strategy's own optimizers step → the job counts the step
(`Job.add_step` or `skip_step`) and its `on_step_end` callbacks run (`Job.end_step`). Under
torchrun each rank steps its shard of the global batch, with the global batch's losses (a
strategy with extra batches is refused there).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from mtltrain.data.base import DatasetSplit, Split
from mtltrain.errors import ConfigError
from mtltrain.loop._direct_step import direct_step
from mtltrain.loop._engine import Backward, engine_for
from mtltrain.loop._extra_batches import extra_batches, source_split
from mtltrain.loop._job import Job
from mtltrain.losses import compute_losses, detach
from mtltrain.step import Step


class PerJobStep:
    """A `StepRunner` of one job (see the module)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.strategy, self.terms, self.ranks = job.strategy, job.terms, job.ranks
        self.forward, self.precision, self.device = job.forward, job.precision, job.device
        self.on_device, self.batch_size = job.on_device, job.batch_size
        self.backward: Backward = engine_for(job.strategy, job.model, job.ranks)
        self.optimizer_step = direct_step(job.optimizer)
        self.max_norm = job.cfg.grad_clip
        shared = job.cfg.grad_clip_over == "shared"
        self.clipped = list(job.model.shared_parameters() if shared else job.model.parameters())
        self.strategy_optimizers = job.strategy_optimizers
        self.params = [
            p
            for opt in (job.optimizer, *self.strategy_optimizers)
            for group in opt.param_groups
            for p in group["params"]
        ]
        self.loaded: Iterator[Split] = iter(())  # the epoch's batches, from the job's position
        self.sources = [
            source_split(s, job.data, job.train_split) for s in job.strategy.extra_batches
        ]
        self.extra: list[Iterator[Split]] = []  # a stream of extra batches per source
        refuse_extra_batches(job)

    def start_epoch(self) -> None:
        """The epoch's order of the train split: gathered once from tensors, or the batches a
        DataLoader loads in that order from the job's position on (workers seeded by the run's
        seed and the epoch)."""
        job = self.job
        self.extra = [
            extra_batches(split, self.batch_size, job.seed, job.epoch, j, job.batch)
            for j, split in enumerate(self.sources)
        ]
        order = job.epoch_order()
        if isinstance(job.train_split, DatasetSplit):
            seed = job.seed * 100_003 + job.epoch
            self.loaded = job.train_split.batches(self.batch_size, job.batch, order, seed)
            return
        split = job.train_split.take(order)
        if not self.on_device:
            split = split.map(torch.Tensor.pin_memory)
        self.loaded = split.batches(self.batch_size, job.batch)

    def step(self, batch: int) -> None:
        self.train_step(next(self.loaded), [next(stream) for stream in self.extra])

    def sync(self) -> None:
        """Nothing to hand over: each step counts itself into its job."""

    def train_step(self, batch: Split, extra: Sequence[Split] = ()) -> Step:
        """One optimisation step on a batch (under torchrun: on this rank's shard of it), with
        the strategy's `extra` batches."""
        job = self.job
        batch, share = self.ranks.shard(batch)
        if not self.on_device:
            batch = batch.map(lambda t: t.to(self.device, non_blocking=True))
        extra = tuple(self.placed(b) for b in extra)
        with self.precision:
            differentiated = extra if self.strategy.level is not None else ()
            extra_losses = [  # first: the heads' views the engine reads are the step's batch's
                compute_losses(self.terms, self.forward(b.inputs)[0], b.targets)
                for b in differentiated
            ]
            outputs, features = self.forward(batch.inputs)
            losses = compute_losses(self.terms, outputs, batch.targets)
        losses = self.ranks.global_losses(losses, share)
        seen = {name: detach(out) for name, out in outputs.items()}
        step = Step(
            job.step + 1, job.epoch, batch, seen, losses, share=share, ranks=self.ranks,
            extra_batches=extra,
        )  # fmt: skip
        for p in self.params:  # optimizer.zero_grad(set_to_none=True), without its overhead
            p.grad = None
        self.strategy.observe(step)
        step.parts, step.total = self.backward(losses, features, extra_losses)
        if job.allows_update(step):
            if self.max_norm is not None:  # under torchrun every rank holds the summed gradients
                torch.nn.utils.clip_grad_norm_(self.clipped, self.max_norm)
            self.optimizer_step()
            self.strategy.after_step(step, self.recompute_losses)
            for opt in self.strategy_optimizers:
                opt.step()
            job.add_step(seen, batch, step.total, losses)
        else:
            job.skip_step()
        job.end_step(step)
        return step

    def placed(self, batch: Split) -> Split:
        """`batch` on the step's device."""
        if batch.device.type == self.device.type:
            return batch
        return batch.map(lambda t: t.to(self.device, non_blocking=True))

    @torch.no_grad()
    def recompute_losses(self, step: Step) -> Tensor:
        """The term losses of the step's batch under the model as it is now."""
        with self.precision:
            outputs, _ = self.forward(step.batch.inputs)
            losses = compute_losses(self.terms, outputs, step.batch.targets)
        return self.ranks.global_losses(losses, step.share)


def refuse_extra_batches(job: Job) -> None:
    """A strategy with extra batches trains in one process: under torchrun it is refused in
    one line."""
    sources = job.strategy.extra_batches
    if sources and job.ranks.size > 1:
        raise ConfigError(
            f"weighting={type(job.strategy).__name__} is not allowed under torchrun: each step "
            f"draws extra batches ({', '.join(sources)}), which the ranks do not share; run it "
            "in one process"
        )
