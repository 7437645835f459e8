"""One optimizer step for N stacked jobs (`mtltrain.loop._stacked`), by torch's own optimizer:
over the stacked tensors where every job's optimizer is an elementwise one with the same
settings, else over each job's rows; each job's optimizer gets its state back for its
checkpoints."""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtltrain.loop._direct_step import by_settings, direct_step, equal_settings, settings_of

# optimizers whose update of a tensor is elementwise, so one step over the stacked tensors is
# every job's own; others (Adafactor's norms, LAMB's trust ratios) step each job's rows
ELEMENTWISE_OPTIMIZERS = tuple(
    getattr(torch.optim, name)
    for name in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad",
                 "Adadelta", "Rprop", "ASGD")
)  # fmt: skip


class JobsOptimizer:
    """One optimizer kind's step for every job, by torch's own optimizer: over the stacked
    tensors themselves where every job's optimizer has the same settings (its state is then
    stacked too; `stacks` maps a row to its stacked tensor), else over each job's rows, the
    groups of equal settings merged. Each job's optimizer keeps its groups, over its rows, and
    gets its state back (`hand_over`) for its checkpoints."""

    def __init__(
        self,
        optimizers: Sequence[torch.optim.Optimizer],
        rows: dict[int, nn.Parameter],
        stacks: dict[int, tuple[Tensor, int]] | None = None,
    ) -> None:
        self.jobs = list(optimizers)
        for opt in self.jobs:  # each job's optimizer over its rows, its state kept
            for group in opt.param_groups:
                group["params"] = [rows[id(p)] for p in group["params"]]
            opt.state = defaultdict(dict, {rows[id(p)]: s for p, s in opt.state.items()})
        self.stacks = stacks or {}
        elementwise = isinstance(self.jobs[0], ELEMENTWISE_OPTIMIZERS)
        over_stacks = _over_stacks(self.jobs, self.stacks) if stacks and elementwise else None
        # over the stacked tensors, or over every job's rows
        self.stacked = over_stacks is not None
        self.merged = over_stacks or _over_rows(self.jobs)
        self.stepping = direct_step(self.merged)

    def step(self) -> None:
        self.stepping()

    def rows_params(self) -> list[Tensor]:
        return [p for opt in self.jobs for p in _params(opt)]

    def per_row(self) -> None:
        """From now on over each job's rows (a job is to skip an update alone)."""
        if self.stacked:
            self.hand_over(range(len(self.jobs)))
            self.stacked, self.merged = False, _over_rows(self.jobs)
            self.stepping = direct_step(self.merged)

    def hand_over(self, jobs: Sequence[int]) -> None:
        """Each of `jobs`' optimizers its state, as its own optimizer would hold it."""
        held = self.merged.state
        for i in jobs:
            opt = self.jobs[i]
            if not self.stacked:
                opt.state = defaultdict(dict, {p: held[p] for p in _params(opt) if p in held})
                continue
            state: dict[Tensor, Any] = defaultdict(dict)
            for p in _params(opt):
                stacked, row = self.stacks[id(p)]
                if stacked in held:
                    state[p] = {
                        k: v[row] if v.shape == stacked.shape else v.clone()
                        for k, v in held[stacked].items()
                    }
            opt.state = state


def _over_stacks(
    optimizers: Sequence[torch.optim.Optimizer], stacks: dict[int, tuple[Tensor, int]]
) -> torch.optim.Optimizer | None:
    """One optimizer over the stacked tensors, where job i's optimizer holds row i of the
    same stacked tensors as job 0's, group for group, with the same settings; None where not."""
    first = optimizers[0]
    stacked_groups = []
    for g, group in enumerate(first.param_groups):
        settings = settings_of(group)
        params = [stacks[id(p)][0] for p in group["params"]]
        for i, opt in enumerate(optimizers):
            theirs = opt.param_groups[g]
            same_rows = [stacks[id(p)] for p in theirs["params"]] == [(q, i) for q in params]
            if not (same_rows and equal_settings(settings_of(theirs), settings)):
                return None
        stacked_groups.append({**settings, "params": params})
    state: dict[Tensor, dict[str, Tensor]] = {}
    for group in first.param_groups:
        for p in group["params"]:
            stacked, _ = stacks[id(p)]
            held = [
                opt.state.get(q)
                for opt in optimizers
                for q in _params(opt)
                if stacks[id(q)][0] is stacked
            ]
            if not any(held):
                continue
            if not all(held) or any(h.keys() != held[0].keys() for h in held):
                return None
            state[stacked] = {}
            for k, v in held[0].items():
                values = [h[k] for h in held]
                if v.shape == p.shape:
                    state[stacked][k] = torch.stack(values)
                elif all(torch.equal(x, v) for x in values):
                    state[stacked][k] = v.clone()
                else:
                    return None
    return _optimizer_like(first, stacked_groups, state)


def _over_rows(optimizers: Sequence[torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """One optimizer over every job's rows, the groups of equal settings merged, its state
    each job's."""
    state: dict[Tensor, Any] = {}
    for opt in optimizers:
        state.update(opt.state)
    groups = [g for opt in optimizers for g in opt.param_groups]
    return _optimizer_like(optimizers[0], groups, state)


def _optimizer_like(
    opt: torch.optim.Optimizer, groups: list[dict[str, Any]], state: dict[Tensor, Any]
) -> torch.optim.Optimizer:
    """An optimizer of `opt`'s kind over `groups` (each with all its settings), those of equal
    settings merged, holding `state`; its constructor gets those of `opt`'s defaults that it
    takes by name."""
    takes = inspect.signature(type(opt)).parameters
    merged_groups = [{**s, "params": params} for s, params in by_settings(groups)]
    merged = type(opt)(merged_groups, **{k: v for k, v in opt.defaults.items() if k in takes})
    merged.state.update(state)
    return merged


def _params(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]
