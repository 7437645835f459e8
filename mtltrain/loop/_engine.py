"""The backward pass: the one place that turns a step's loss terms into `.grad`.

- Loss-based strategies (`level = None`): back-propagate Σ_k parts_k with
  parts = `strategy.contributions(losses)`.
- Gradient-based strategies: the Jacobian of the contributions, one row per term, with respect
  to the shared parameters (`level = "parameters"`) or to the shared representation the model
  returns (`"representation"`, as MGDA-UB). The strategy's `aggregate` turns it into one
  direction: the `.grad` of the shared parameters, or, at the representation, back-propagated
  through the shared layers in one more pass. Every other parameter (the task heads, the
  strategy's own) gets the gradient of Σ_k contributions_k, which for a task head is its own
  task's unweighted gradient.

How the rows are taken. On a model whose heads each read a view of the features of their own
(`HeadInputs`: `MultiTaskModel`, one term per task; the engine turns the views on), one
backward pass of Σ_k contributions_k through the heads stops at the views and leaves term k's
gradient of the features at view k (contributions are elementwise: term k reaches the features
through its own head only; the engine checks the graph and falls back where a term reaches
them otherwise). Those are the rows at the representation; at the parameters each is carried
through the shared layers, one pass each. Elsewhere (MTAN, cross-stitch, the MoE
architectures, several terms on one task, `mtltrain.backward`) one backward pass per term:
the terms are one stacked vector, so each of those K passes runs through every head. At
K = 40 on a 784→256→256 MLP with two-class heads the views (and MGDA's warm-started solve) cut
MGDA-UB's step from 14–18× to 1.9–2.2× `fixed`'s, with the same Jacobian to rounding
(docs/performance.md, "Many tasks"). A
vmapped pass over the K rows (`torch.autograd.grad(..., is_grads_batched=True)`) was no faster
there than the K passes through the shared layers, nor on the §5B MNIST model than one pass
per task (`scripts/bench.py`, "engine"); torchjd's `mtl_backward` + `jac_to_grad` was slower.

`weighting.every` = n > 1 (`GradientWeighting.reuses_weights`): on the steps between
recomputations no Jacobian is taken; the shared layers get the gradient of
Σ_k w_k·contributions_k with the last weights (one pass through the shared layers) and the
other parameters that of Σ_k contributions_k, as on any step.

A strategy with extra batches (`Weighting.extra_batches`, SDMGrad, MoDo) is handed to
`observe_extra`, before `aggregate`, the Jacobian of each extra batch's contributions at the
shared parameters (`extra`: their term losses, with their graphs); a loss-based one gets none.

Either way a call returns each term's detached contribution to the step's total and the total;
for a gradient-based strategy parts_k = w_k·contribution_k with the aggregation's weights, and
the total is NaN when the Jacobian, the weights or the combined direction is not finite, so the
loop's one finiteness check also catches a broken aggregation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor
from torch.autograd.graph import Node

from mtltrain.distributed import ONE_PROCESS, Ranks
from mtltrain.lean_torch import backward
from mtltrain.models.base import Features, HeadInputs, MultiTaskNet
from mtltrain.weighting.base import Weighting


class Backward(Protocol):
    def __call__(
        self, losses: Tensor, features: Features, extra: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        """Fill `.grad` from the step's term losses (and hand the strategy the Jacobians of
        its `extra` batches' term losses); return (parts, total), detached."""
        ...


class WeightedSum:
    """Back-propagates Σ_k contributions_k (loss-based strategies); under torchrun the model's
    gradients are then summed over ranks (the strategy's own come whole from the global
    losses every rank holds)."""

    def __init__(self, strategy: Weighting, params: Sequence[Tensor], ranks: Ranks) -> None:
        self.strategy, self.ranks = strategy, ranks
        self.model_params = [p for p in params if p.requires_grad]

    def __call__(
        self, losses: Tensor, features: Features, extra: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        parts = self.strategy.contributions(losses)
        total = parts.sum()
        backward(total)
        self.ranks.sum_gradients(self.model_params)
        return parts.detach(), total.detach()


class TaskJacobian:
    """Aggregates the per-term Jacobian of the shared parameters or representation."""

    def __init__(
        self,
        strategy: Weighting,
        shared: Sequence[Tensor],
        params: Sequence[Tensor],
        ranks: Ranks,
        split: HeadInputs | None = None,
    ) -> None:
        self.strategy, self.ranks, self.split = strategy, ranks, split
        self.representation = strategy.level == "representation"
        self.shared = list(shared)
        shared_ids = {id(p) for p in self.shared}
        self.heads = [p for p in params if p.requires_grad and id(p) not in shared_ids]
        self.others = [*self.heads, *(p for p in strategy.parameters() if p.requires_grad)]
        self.tasks = [t.task for t in strategy.terms]

    def __call__(
        self, losses: Tensor, features: Features, extra: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        if extra:
            self.strategy.observe_extra([self.shared_rows(e) for e in extra])
        contributions = self.strategy.contributions(losses)
        views = self.head_views(contributions, features)
        if self.strategy.reuses_weights():
            return self.reused(contributions, features, views)
        targets: Sequence[Tensor] = (
            (features if isinstance(features, tuple) else (features,))
            if self.representation
            else self.shared
        )
        sizes = [t.numel() for t in targets]
        if views is None:
            jacobian = self.jacobian_per_term(contributions, targets, sizes)
        else:
            jacobian = self.jacobian_from_views(contributions, views, features)
        self.ranks.sum_gradients(self.heads)
        direction, weights, check = self.combined(jacobian, losses.detach(), targets, sizes)
        pieces = [d.view_as(t) for d, t in zip(direction.split(sizes), targets, strict=True)]
        if self.representation:
            torch.autograd.backward(list(targets), pieces, inputs=self.shared)
            self.ranks.sum_gradients(self.shared)
        else:
            for p, piece in zip(self.shared, pieces, strict=True):
                p.grad = _like(p, piece)
        parts = weights.to(contributions.dtype) * contributions.detach()
        # a sum is finite if its terms are, and overflow only errs to NaN: 20× cheaper than all()
        return parts, torch.where(torch.isfinite(check), parts.sum(), torch.nan)

    def head_views(self, contributions: Tensor, features: Features) -> list[Tensor] | None:
        """Each term's view of `features` that its task's head read (`HeadInputs`), taken from
        the model (so none outlives its step); None where the forward made none or the
        contributions reach the features other than through them."""
        if self.split is None:
            return None
        made, self.split.head_inputs = self.split.head_inputs, {}
        if isinstance(features, tuple) or any(
            made.get(t) is None or made[t].data_ptr() != features.data_ptr() for t in self.tasks
        ):
            return None
        views = [made[t] for t in self.tasks]
        if _reaches(contributions.grad_fn, features.grad_fn, {v.grad_fn for v in views}):
            return None
        return views

    def jacobian_per_term(
        self, contributions: Tensor, targets: Sequence[Tensor], sizes: Sequence[int]
    ) -> Tensor:
        """The K × D Jacobian, one backward pass per term (each through every head: the
        terms are one stacked vector); the other parameters get Σ_k of their gradients."""
        k = contributions.shape[0]
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in targets))
        jacobian = targets[0].new_empty(k, sum(sizes), dtype=dtype)
        own: list[Tensor | None] = [None] * len(self.others)
        for i, contribution in enumerate(contributions):
            # the encoder's graph below the features outlives these passes: they stop at them
            grads = torch.autograd.grad(
                contribution, [*targets, *self.others], retain_graph=i < k - 1, allow_unused=True
            )
            for grad, row_piece in zip(grads, jacobian[i].split(sizes), strict=False):
                if grad is None:
                    row_piece.zero_()
                else:
                    row_piece.copy_(grad.reshape(-1))
            for j, grad in enumerate(grads[len(targets) :]):
                if grad is not None:
                    own[j] = grad if own[j] is None else own[j] + grad
        self.set_others(own)
        return jacobian

    def feature_rows(self, contributions: Tensor, views: Sequence[Tensor]) -> Tensor:
        """K × (features' shape): each term's gradient of the features, from one backward pass
        of Σ_k contributions_k through the heads, each of which reads its own view (the
        contributions are elementwise: term k's depends on the features through its own head
        only); the other parameters get their gradients of it."""
        grads = torch.autograd.grad(contributions.sum(), [*views, *self.others], allow_unused=True)
        self.set_others(grads[len(views) :])
        return torch.stack(
            [torch.zeros_like(c) if g is None else g for g, c in zip(grads, views, strict=False)]
        )

    def jacobian_from_views(
        self, contributions: Tensor, views: Sequence[Tensor], features: Tensor
    ) -> Tensor:
        """The K × D Jacobian from `feature_rows`: at the representation those rows; at the
        parameters each row carried through the shared layers, one pass each."""
        rows = self.feature_rows(contributions, views)
        if self.representation:
            return rows.reshape(len(rows), -1)
        k = len(rows)
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in self.shared))
        jacobian = features.new_empty(k, sum(p.numel() for p in self.shared), dtype=dtype)
        for i in range(k):
            grads = torch.autograd.grad(
                features, self.shared, rows[i], retain_graph=i < k - 1, allow_unused=True
            )
            torch.cat(
                [
                    torch.zeros(p.numel(), dtype=jacobian.dtype, device=p.device)
                    if g is None
                    else g.reshape(-1)
                    for g, p in zip(grads, self.shared, strict=True)
                ],
                out=jacobian[i],
            )
        return jacobian

    def reused(
        self, contributions: Tensor, features: Features, views: list[Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        """A step between recomputations (`weighting.every`): the shared layers get the
        gradient of Σ_k w_k·contributions_k with the last weights w, the others that of
        Σ_k contributions_k, as on any step; two passes through the heads (one with views)
        and one through the shared layers."""
        weights = self.strategy.weights().to(contributions)
        if views is None:
            grads = torch.autograd.grad(
                contributions.sum(), self.others, retain_graph=True, allow_unused=True
            )
            self.set_others(grads)
            torch.autograd.backward(weights @ contributions, inputs=self.shared)
            check = weights.sum()
        else:
            rows = self.feature_rows(contributions, views)
            direction = torch.tensordot(weights.to(rows.dtype), rows, dims=1)
            torch.autograd.backward(features, direction, inputs=self.shared)
            check = direction.sum()
        self.ranks.sum_gradients([*self.heads, *self.shared])
        parts = weights * contributions.detach()
        return parts, torch.where(torch.isfinite(check), parts.sum(), torch.nan)

    def set_others(self, grads: Sequence[Tensor | None]) -> None:
        """The heads' and the strategy's parameters' `.grad`, where they have one."""
        for p, grad in zip(self.others, grads, strict=True):
            if grad is not None:
                p.grad = _like(p, grad)

    def shared_rows(self, losses: Tensor) -> Tensor:
        """The K × D Jacobian of an extra batch's contributions at the shared parameters (one
        pass per term; its graph is freed)."""
        contributions = self.strategy.contributions(losses)
        k = contributions.shape[0]
        rows = []
        for i, contribution in enumerate(contributions):
            grads = torch.autograd.grad(
                contribution, self.shared, retain_graph=i < k - 1, allow_unused=True
            )
            rows.append(
                torch.cat([
                    torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if g is None
                    else g.reshape(-1)
                    for g, p in zip(grads, self.shared, strict=True)
                ])
            )  # fmt: skip
        return torch.stack(rows)

    def combined(
        self, jacobian: Tensor, losses: Tensor, targets: Sequence[Tensor], sizes: Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The strategy's aggregation of the global batch's Jacobian: the direction (at the
        representation, this rank's samples' part of it), the weights, and a sum that is
        finite only where the Jacobian, the direction and the weights are. Under torchrun the
        ranks' rows are summed (at the parameters: each is its part of the batch's) or, at the
        representation, set side by side (each rank's columns are its own samples')."""
        if not (self.representation and self.ranks.size > 1):
            whole = self.ranks.sum(jacobian)
            direction, weights = self.strategy.aggregate(whole, losses, targets)
            return direction, weights, whole.sum() + direction.sum() + weights.sum()
        gathered = [self.ranks.gather_columns(j) for j in jacobian.split(sizes, dim=1)]
        features = [  # the global batch's (GradDrop reads their signs)
            self.ranks.gather_columns(t.detach().reshape(1, -1))[0].view(-1, *t.shape[1:])
            for t in targets
        ]
        whole = torch.cat([g for g, _ in gathered], dim=1)
        direction, weights = self.strategy.aggregate(whole, losses, features)
        own, offset = [], 0
        for g, columns in gathered:
            own.append(direction[offset + columns.start : offset + columns.stop])
            offset += g.shape[1]
        check = whole.sum() + direction.sum() + weights.sum()
        return torch.cat(own), weights, check


def _reaches(root: Node | None, target: Node | None, around: set[Node | None]) -> bool:
    """Whether the graph from `root` reaches `target` other than through the nodes `around`."""
    seen: set[Node] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or node in around or node in seen:
            continue
        if node is target:
            return True
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return target is None


def _like(param: Tensor, grad: Tensor) -> Tensor:
    """`grad` in the parameter's dtype and memory layout (channels-last weights), which a
    fused optimizer assumes of a gradient."""
    if grad.stride() == param.stride() and grad.dtype == param.dtype:
        return grad
    return torch.empty_like(param).copy_(grad)


def engine_for(strategy: Weighting, model: MultiTaskNet, ranks: Ranks = ONE_PROCESS) -> Backward:
    """The backward pass `strategy` needs on `model`, over `ranks`; a gradient-based one on a
    model whose heads can read views of the features (one term per task) turns them on."""
    split = (
        model
        if strategy.level is not None
        and isinstance(model, HeadInputs)
        and len({t.task for t in strategy.terms}) == len(strategy.terms)
        else None
    )
    if isinstance(model, HeadInputs):
        model.split_features = split is not None
    return engine_over(strategy, model.shared_parameters(), list(model.parameters()), ranks, split)


def engine_over(
    strategy: Weighting,
    shared: Sequence[Tensor],
    params: Sequence[Tensor],
    ranks: Ranks = ONE_PROCESS,
    split: HeadInputs | None = None,
) -> Backward:
    """The backward pass `strategy` needs with the `shared` ones among the model's trainable
    `params` (the others are the task heads'), over `ranks`; from the heads' own views of the
    features where `split` makes them."""
    if strategy.level is None:
        return WeightedSum(strategy, params, ranks)
    return TaskJacobian(strategy, shared, params, ranks, split)
