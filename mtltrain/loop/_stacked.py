"""The stacked step: N jobs of the same shapes (`mtltrain.stacking` decides which) trained as
one, their models and strategies stacked; a `StepRunner` of the loop (`mtltrain.loop._trainer`).

Every parameter and buffer of the jobs' models and strategies becomes row i of one stacked
tensor, and job i's module holds that row (a Parameter sharing its storage), so whatever reads
or writes a job's module (evaluation, checkpoints, figures, the strategy's own hooks) reads
and writes the stacked tensors; the jobs are the stack's from then on (their optimizers step
rows, their old parameters are no longer the model's). A step runs:

- the forward pass and term losses of every job at once: the model's `forward_stacked` where
  it has one (one batched product of every job's layers), else `torch.func.vmap` over its
  `functional_call`; each job on its own batch (its own shuffle, from its own generator);
  the losses per element of every job at once, averaged per job (`losses.job_losses`; vmapped
  where a loss is not a mean per element, Dice);
- each strategy's `observe` per job, on its job's rows;
- the contributions of every job at once where the strategies differ only in their tensors
  (`Weighting.elementwise` ones directly, others vmapped; else per job), one backward pass;
- one step of torch's own optimizer (`mtltrain.loop._stacked_optimizer`): over the stacked tensors
  where every job's optimizer is an elementwise one with the same settings (its state is then
  stacked too), else over each job's rows with their groups of equal settings merged; either
  way each job's update is its own optimizer's.

What the steps sum up for each job (running losses, the outputs its train metrics score, its
optimizer's state) reaches the job at `sync` (`Job.add_steps`, `Job.add_outputs`,
`JobsOptimizer.hand_over`), which the loop calls before epoch ends and interrupts. A job's
callbacks are asked `allows_update` only for a step that is not finite (the one veto there
is, the non-finite policy): that job skips the update alone (its rows and optimizer state
kept) or stops alone (`Job.guarded`); the others go on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mtltrain.data.base import Split
from mtltrain.loop._job import Job
from mtltrain.loop._runtime import STARTING_THREADS, auto_threads, settle_threads
from mtltrain.loop._stacked_optimizer import JobsOptimizer
from mtltrain.losses import (
    all_per_element,
    compute_losses,
    detach,
    head_tensors,
    job_losses,
    map_heads,
)
from mtltrain.models.base import Outputs
from mtltrain.step import Step
from mtltrain.weighting.base import Weighting

log = logging.getLogger(__name__)
# pending train outputs are added into the jobs' running metrics once they hold this many bytes
# (the loop's syncs at every epoch's end flush them too): in host memory few enough to stay in
# the cache and in pages already touched (at 64 MiB every step of the §5A stack page-faulted its
# pending outputs in, 125 faults a step, and its products slowed by a quarter); on a GPU, whose
# caching allocator reuses its memory, fewer flushes of more
HOST_FLUSH_BYTES = 2**20
DEVICE_FLUSH_BYTES = 64 * 2**20
_NO_INPUTS = torch.empty(0)  # the running metrics read a batch's targets only


class StackedStep:
    """A `StepRunner` of N jobs stacked (see the module)."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.jobs = list(jobs)
        first = self.jobs[0]
        self.first, self.n = first, len(self.jobs)
        self.device, self.precision = first.device, first.precision
        stacks: dict[int, tuple[Tensor, int]] = {}  # id(a job's row): (stacked tensor, job)
        self.model_state, model_rows = _stack([t.model for t in self.jobs], stacks)
        self.strategy_state, strategy_rows = _stack([t.strategy for t in self.jobs], stacks)
        rows = {**model_rows, **strategy_rows}
        self.optimizer = JobsOptimizer([t.optimizer for t in self.jobs], rows, stacks)
        # a strategy's own optimizers step rows: their gradients come per job (after_step)
        self.strategy_optimizers = [
            JobsOptimizer([t.strategy_optimizers[j] for t in self.jobs], rows)
            for j in range(len(first.strategy_optimizers))
        ]
        own_params = [p for o in self.strategy_optimizers for p in o.rows_params()]
        # (stacked parameter, each job's row of it); their gradients are set up at the first step
        self.leaves = [
            (stacked, [module(t).get_parameter(name) for t in self.jobs])
            for module, state in (
                (lambda t: t.model, self.model_state),
                (lambda t: t.strategy, self.strategy_state),
            )
            for name, stacked in state.items()
            if stacked.requires_grad
        ]
        self.reached: list[tuple[Tensor, list[nn.Parameter]]] | None = None
        # rows whose gradient is their own, not a row of a stacked one: set to None every step
        self.apart: list[Tensor] = own_params
        self.without_update: set[int] = set()
        self.job_losses = (
            functools.partial(job_losses, first.terms)
            if all_per_element(first.terms)
            else vmap(functools.partial(compute_losses, first.terms))
        )
        self.job_outputs = vmap(self.job_output)
        self.stacked_forward = getattr(first.model, "forward_stacked", None)
        self.contributors = [_Contributions(t.strategy) for t in self.jobs]
        self.prefixed = {f"strategy.{k}": v for k, v in self.strategy_state.items()}
        self.together = all(_same_settings(t.strategy, first.strategy) for t in self.jobs)
        self.contributions_of = vmap(self.job_contributions)
        # an elementwise strategy's contributions of every job at once, on the stacked tensors
        self.broadcast = self.together and first.strategy.elementwise
        self.stacked_strategy = _Holding(first.strategy, self.strategy_state)
        # CUDA graphs (trainer.compile=reduce-overhead on a GPU) reuse their outputs' memory
        self.graphed = first.cfg.compile == "reduce-overhead" and self.device.type == "cuda"
        self.forward_losses = self.compiled(first.cfg.compile)
        self.observing = _overrides(first.strategy, "observe")
        self.acting_after = _overrides(first.strategy, "after_step")
        shared = all(_same_split(t.train_split, first.train_split) for t in self.jobs)
        self.train = (
            first.train_split if shared else _stacked_split([t.train_split for t in self.jobs])
        )
        self.shared_data = shared
        self.job_rows = torch.arange(self.n, device=first.train_split.inputs.device)[:, None]
        self.running_loss = torch.zeros(self.n, device=self.device)
        self.term_losses = torch.zeros(self.n, len(first.terms), device=self.device)
        self.steps_since, self.missed = 0, [0] * self.n  # since the last sync
        self.pending: list[tuple[Outputs, Split, Tensor | None]] = []
        self.pending_bytes = self.step_bytes = 0
        self.flush_bytes = HOST_FLUSH_BYTES if self.device.type == "cpu" else DEVICE_FLUSH_BYTES
        self.recomputed: Tensor | None = None
        self.number, self.epoch = first.step, first.epoch  # of the last step
        self.orders = torch.empty(0, dtype=torch.long)
        self.set_threads()

    # -- set up --------------------------------------------------------------------------

    def set_threads(self) -> None:
        """trainer.threads for the stack: "auto" takes the cores torch started with, as the
        stack is the sweep's one process and its step is N jobs' (measured here: two threads
        beat one from N = 4 on for the §5A model, 0.94 against 1.11 ms a step), less those
        other work keeps busy (`auto_threads`)."""
        if self.device.type != "cpu":
            return
        cfg = self.first.cfg
        if cfg.threads == "auto":
            threads, why = auto_threads(STARTING_THREADS, "auto", steady=cfg.deterministic)
        else:
            threads, why = int(cfg.threads), "trainer.threads"
        log.info("%d jobs stacked, on %d CPU thread(s) (%s)", self.n, threads, why)
        settle_threads(threads)

    def compiled(self, mode: str | None) -> Any:
        """`forward`, compiled by torch.compile in `mode` (trainer.compile) where that is set
        and the model has a `forward_stacked` (one graph: the batched products and the losses
        per element; its backward is compiled with it); the jobs then evaluate with their
        eager models (not one compilation per job). Compiled, a stacked job equals itself
        alone to rounding only (the fused kernels add in another order). `reduce-overhead` on a
        GPU replays the compiled step as CUDA graphs."""
        if mode is None:
            return self.forward
        for job in self.jobs:
            job.forward = job.model
        if self.stacked_forward is None:
            log.info("trainer.compile=%s: the stacked step runs eager (its model is vmapped)", mode)
            return self.forward
        log.info("trainer.compile=%s: the stacked step is compiled at its first step", mode)
        return torch.compile(self.forward, mode=mode)

    def active(self) -> list[int]:
        return [i for i, job in enumerate(self.jobs) if job.error is None]

    # -- one step ------------------------------------------------------------------------

    def forward(
        self, state: dict[str, Tensor], inputs: Tensor, targets: dict[str, Tensor]
    ) -> tuple[Outputs, Tensor]:
        """Every job's outputs, by the model's own `forward_stacked` where it has one (a
        batched product of all jobs' layers) else vmapped, and their [N, K] term losses (per
        element of every job at once where the losses allow, else vmapped)."""
        if self.stacked_forward is None:
            outputs = self.job_outputs(state, inputs)
        else:
            outputs, _ = self.stacked_forward(state, inputs)
        return outputs, self.job_losses(outputs, targets)

    def job_output(self, state: dict[str, Tensor], inputs: Tensor) -> Outputs:
        outputs, _ = functional_call(self.first.model, state, (inputs,))
        return outputs

    def job_contributions(self, state: dict[str, Tensor], losses: Tensor) -> Tensor:
        return functional_call(self.contributors[0], state, (losses,))

    def contributions(self, losses: Tensor) -> Tensor:
        """Each job's contributions: at once where the jobs' strategies differ only in their
        tensors, else each by its own strategy."""
        if self.broadcast:
            with self.stacked_strategy as strategy:
                return strategy.contributions(losses)
        if self.together:
            return self.contributions_of(self.prefixed, losses)
        rows = losses.unbind(0)  # each job's strategy on its rows of the stacked tensors
        return torch.stack(
            [
                functional_call(
                    self.contributors[i], {k: v[i] for k, v in self.prefixed.items()}, (row,)
                )
                for i, row in enumerate(rows)
            ]
        )

    def train_step(self, index: Tensor) -> None:
        """One step of every job, job i on the samples `index[i]` of its training set."""
        batch = self.train.map(
            (lambda t: t[index]) if self.shared_data else (lambda t: t[self.job_rows, index])
        )
        if not self.first.on_device:
            batch = batch.map(lambda t: t.to(self.device, non_blocking=True))
        if self.graphed:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are not read
        with self.precision:
            outputs, losses = self.forward_losses(self.model_state, batch.inputs, batch.targets)
        seen = {name: detach(out) for name, out in outputs.items()}
        if self.graphed:  # kept past the next step (pending metrics, the jobs' steps): copied
            seen, losses = map_heads(torch.clone, seen), losses.clone()
        self.number += 1
        self.recomputed = None
        shared = _StackedTensors(batch, seen, losses)
        steps = [JobStep(self.number, self.epoch, shared, i) for i in range(self.n)]
        active = self.active()
        self.clear_gradients()
        if self.observing:
            for i in active:
                self.jobs[i].guarded(lambda i=i: self.jobs[i].strategy.observe(steps[i]))
        contributions = self.contributions(losses)
        totals = contributions.sum(1)
        totals.sum().backward()
        parts, totals = contributions.detach(), totals.detach()
        shared.parts, shared.totals = parts, totals
        if self.reached is None:
            self.share_gradients()
        updated = self.vetted(steps, active, totals)
        self.optimizer.step()
        if self.acting_after:
            for i in updated:
                after = self.jobs[i].strategy.after_step
                self.jobs[i].guarded(lambda i=i, after=after: after(steps[i], self.recompute))
        for opt in self.strategy_optimizers:
            opt.step()
        self.account(seen, batch, losses.detach(), totals, updated)
        for i in self.active():  # not those the step stopped
            self.jobs[i].guarded(lambda i=i: self.jobs[i].end_step(steps[i]))

    def clear_gradients(self) -> None:
        """Zero the stacked gradients, which each job's rows share (after the first step: the
        backward pass adds into them in place); the strategies' own optimizers' are None, as
        alone."""
        if self.reached is None:
            for leaf, _ in self.leaves:
                leaf.grad = None
        else:
            torch._foreach_zero_([leaf.grad for leaf, _ in self.reached])
            for i in self.without_update:  # a job skipped or stopped last step: rows back
                for leaf, views in self.reached:
                    views[i].grad = leaf.grad[i]
            self.without_update = set()
        for p in self.apart:
            p.grad = None

    def share_gradients(self) -> None:
        """After the first backward pass: each job's parameter rows take their rows of the
        stacked gradients, for good (the parameters it did not reach keep None, as alone)."""
        self.reached = [(leaf, views) for leaf, views in self.leaves if leaf.grad is not None]
        reached = {id(leaf) for leaf, _ in self.reached}
        self.apart.extend(
            v for leaf, views in self.leaves if id(leaf) not in reached for v in views
        )
        for leaf, views in self.reached:
            for view, grad in zip(views, leaf.grad.unbind(0), strict=True):
                view.grad = grad

    def vetted(self, steps: Sequence[JobStep], active: list[int], totals: Tensor) -> list[int]:
        """The jobs whose update goes ahead. A job whose step is not finite asks its callbacks
        (the non-finite policy), which skip it or stop the job; a job that is not updated
        keeps its parameters and optimizer state (its rows get no gradient)."""
        if len(active) == self.n and bool(torch.isfinite(totals).all()):
            self.without_update = set()  # every job's update goes ahead: one check, no loop
            return active
        finite = torch.isfinite(totals).tolist()
        updated = []
        for i in active:
            job = self.jobs[i]
            if finite[i] or job.guarded(lambda job=job, s=steps[i]: job.allows_update(s)):
                updated.append(i)
            elif job.error is None:
                job.skip_step()
        self.without_update = set(range(self.n)) - set(updated)
        if any(self.jobs[i].error is None for i in self.without_update):
            self.optimizer.per_row()  # a skipped job's rows must stay as they are
        for i in self.without_update:
            for _, views in self.leaves:
                views[i].grad = None
        return updated

    def recompute(self, step: Step) -> Tensor:
        """A job's term losses of its step's batch under the updated model (every job's at
        once, the first time a job asks)."""
        if self.recomputed is None:
            assert isinstance(step, JobStep)
            batch = step.stacked_batch
            with torch.no_grad(), self.precision:
                _, self.recomputed = self.forward(self.model_state, batch.inputs, batch.targets)
        return self.recomputed[step.index]

    def account(
        self, seen: Outputs, batch: Split, losses: Tensor, totals: Tensor, updated: list[int]
    ) -> None:
        """Add the updated jobs' step to their running train metrics and losses."""
        self.steps_since += 1
        mask = None
        if len(updated) == self.n:
            self.running_loss += totals
            self.term_losses += losses
        else:
            mask = torch.zeros(self.n, dtype=torch.bool)
            mask[updated] = True
            for i in set(range(self.n)) - set(updated):
                self.missed[i] += 1
            kept = mask.to(self.device)
            self.running_loss += torch.where(kept, totals, 0.0)
            self.term_losses += torch.where(kept[:, None], losses, 0.0)
        scored = Split(_NO_INPUTS, batch.targets, batch.noise_std)  # what the metrics read
        self.pending.append((seen, scored, mask))
        if not self.step_bytes:  # the same every step
            held = [*scored.tensors(), *head_tensors(seen)]
            self.step_bytes = sum(t.nbytes for t in held)
        self.pending_bytes += self.step_bytes
        if self.pending_bytes > self.flush_bytes:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """The pending steps' outputs into each job's running train metrics."""
        if not self.pending:
            return
        batches = [b for _, b, _ in self.pending]
        joined_batch = Split(
            _NO_INPUTS,
            {k: torch.cat([b.targets[k] for b in batches], 1) for k in batches[0].targets},
            {k: torch.cat([b.noise_std[k] for b in batches], 1) for k in batches[0].noise_std},
        )
        joined_seen = map_heads(lambda *ts: torch.cat(ts, 1), *[s for s, _, _ in self.pending])
        masks = [m for _, _, m in self.pending]
        sizes = [next(iter(b.targets.values())).shape[1] for b in batches]
        for i in self.active():
            keep = _kept_samples(masks, sizes, i, self.device)
            if keep is not None and not bool(keep.any()):  # skipped every pending step
                continue
            row = lambda t, i=i, keep=keep: t[i] if keep is None else t[i][keep]  # noqa: E731
            outputs = map_heads(row, joined_seen)
            part = Split(
                _NO_INPUTS,
                {k: row(v) for k, v in joined_batch.targets.items()},
                {k: row(v) for k, v in joined_batch.noise_std.items()},
            )
            self.jobs[i].add_outputs(outputs, part)
        self.pending, self.pending_bytes = [], 0

    def sync(self) -> None:
        """Each active job gets what the steps since the last sync kept for it: its running
        metrics and losses, its epoch's term losses, its optimizers' state."""
        self.flush_metrics()
        counts = [self.steps_since - missed for missed in self.missed]
        for i in self.active():
            self.jobs[i].add_steps(self.running_loss[i], self.term_losses[i], counts[i])
        for opt in (self.optimizer, *self.strategy_optimizers):
            opt.hand_over(self.active())
        self.running_loss.zero_()
        self.term_losses.zero_()
        self.steps_since, self.missed = 0, [0] * self.n

    # -- epochs --------------------------------------------------------------------------

    def start_epoch(self) -> None:
        lead = self.jobs[self.active()[0]]  # every job is at the same position
        self.number, self.epoch = lead.step, lead.epoch
        self.orders = torch.stack([job.epoch_order() for job in self.jobs])

    def step(self, batch: int) -> None:
        size = self.first.batch_size
        self.train_step(self.orders[:, batch * size : (batch + 1) * size])


class _StackedTensors:
    """What a stacked step shares with its jobs' views: the stacked batch, outputs and [N, K]
    term losses, and after the backward pass the [N, K] parts and [N] totals."""

    def __init__(self, batch: Split, outputs: Outputs, losses: Tensor) -> None:
        self.batch, self.outputs, self.losses = batch, outputs, losses
        self.parts: Tensor | None = None
        self.totals: Tensor | None = None


class JobStep(Step):
    """Job i's view of a stacked step: its rows of the stacked batch, outputs, losses, parts
    and total, each taken when first read (a step whose job reads nothing costs no views)."""

    def __init__(self, number: int, epoch: int, stacked: _StackedTensors, index: int) -> None:
        self.number, self.epoch, self.index = number, epoch, index
        self.stacked = stacked
        self.share = 1.0
        self.ranks = Step.ranks

    @property
    def stacked_batch(self) -> Split:
        return self.stacked.batch

    @cached_property
    def batch(self) -> Split:  # type: ignore[override]
        return self.stacked.batch.map(lambda t: t[self.index])

    @cached_property
    def outputs(self) -> Outputs:  # type: ignore[override]
        return map_heads(lambda t: t[self.index], self.stacked.outputs)

    @cached_property
    def losses(self) -> Tensor:  # type: ignore[override]
        return self.stacked.losses[self.index]

    @property
    def parts(self) -> Tensor | None:  # type: ignore[override]
        parts = self.stacked.parts
        return None if parts is None else parts[self.index]

    @property
    def total(self) -> Tensor | None:  # type: ignore[override]
        totals = self.stacked.totals
        return None if totals is None else totals[self.index]


class _Holding:
    """`module` holding the stacked tensors in place of its own while entered (what
    `functional_call` does, at the cost of a few dictionary entries: the entries to swap are
    found once)."""

    def __init__(self, module: nn.Module, state: dict[str, Tensor]) -> None:
        self.module = module
        self.entries: list[tuple[dict[str, Any], str, Tensor]] = []
        for name, stacked in state.items():
            owner, _, leaf = name.rpartition(".")
            sub = module.get_submodule(owner)
            held = sub._parameters if leaf in sub._parameters else sub._buffers
            self.entries.append((held, leaf, stacked))
        self.own: list[Any] = []

    def __enter__(self) -> nn.Module:
        self.own = [held[leaf] for held, leaf, _ in self.entries]
        for held, leaf, stacked in self.entries:
            held[leaf] = stacked
        return self.module

    def __exit__(self, *_: object) -> None:
        for (held, leaf, _), own in zip(self.entries, self.own, strict=True):
            held[leaf] = own


class _Contributions(nn.Module):
    """A strategy's `contributions` as a module call, for `functional_call`."""

    def __init__(self, strategy: Weighting) -> None:
        super().__init__()
        self.strategy = strategy

    def forward(self, losses: Tensor) -> Tensor:
        return self.strategy.contributions(losses)


def _stack(
    modules: Sequence[nn.Module], stacks: dict[int, tuple[Tensor, int]]
) -> tuple[dict[str, Tensor], dict[int, nn.Parameter]]:
    """Stack the parameters and buffers of same-shaped `modules`, each module then holding its
    rows. Returns {name: stacked tensor} and {id(old parameter): the row that replaced it};
    `stacks` gets {id(row): (stacked tensor, module number)} of each parameter row."""
    stacked: dict[str, Tensor] = {}
    replaced: dict[int, nn.Parameter] = {}
    for name, first in modules[0].named_parameters():
        olds = [m.get_parameter(name) for m in modules]
        stacked[name] = torch.stack([p.detach() for p in olds]).requires_grad_(first.requires_grad)
        rows = stacked[name].detach().unbind(0)
        for i, (m, old, row) in enumerate(zip(modules, olds, rows, strict=True)):
            new = nn.Parameter(row, requires_grad=old.requires_grad)
            _put(m, name, new)
            replaced[id(old)] = new
            stacks[id(new)] = (stacked[name], i)
    for name, _ in modules[0].named_buffers():
        stacked[name] = torch.stack([m.get_buffer(name) for m in modules])
        for m, row in zip(modules, stacked[name].unbind(0), strict=True):
            _put(m, name, row)
    return stacked, replaced


def _put(module: nn.Module, name: str, value: Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner), leaf, value)


def _same_settings(a: Weighting, b: Weighting) -> bool:
    """Whether two strategies differ in their tensors only (the one's `contributions` can run
    with the other's tensors)."""

    def plain(s: Weighting) -> dict[str, Any]:
        # the terms hold loss functions built per job from the same settings (stack_key)
        return {
            k: v
            for k, v in vars(s).items()
            if not k.startswith("_")
            and k != "terms"
            and not isinstance(v, (torch.Generator, torch.optim.Optimizer))
        }

    pa, pb = plain(a), plain(b)
    if pa.keys() != pb.keys():
        return False
    try:
        return all(bool(pa[k] == pb[k]) for k in pa)
    except (RuntimeError, TypeError):  # a tensor kept as a plain attribute
        return False


def _overrides(strategy: Weighting, hook: str) -> bool:
    return getattr(type(strategy), hook) is not getattr(Weighting, hook)


def _same_split(a: Split, b: Split) -> bool:
    ta, tb = a.tensors(), b.tensors()
    return len(ta) == len(tb) and all(
        x is y or torch.equal(x, y) for x, y in zip(ta, tb, strict=True)
    )


def _stacked_split(splits: Sequence[Split]) -> Split:
    """The jobs' training sets as one Split of [N, samples, …] tensors."""
    first = splits[0]
    return Split(
        torch.stack([s.inputs for s in splits]),
        {k: torch.stack([s.targets[k] for s in splits]) for k in first.targets},
        {k: torch.stack([s.noise_std[k] for s in splits]) for k in first.noise_std},
    )


def _kept_samples(
    masks: Sequence[Tensor | None], sizes: Sequence[int], job: int, device: torch.device
) -> Tensor | None:
    """Which of the pending samples job `job` trained on (None: all)."""
    if all(m is None for m in masks):
        return None
    keep = [
        torch.full((size,), m is None or bool(m[job]), device=device)
        for m, size in zip(masks, sizes, strict=True)
    ]
    return torch.cat(keep)
