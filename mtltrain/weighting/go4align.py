"""GO4Align (Shen, Wang, Xiao, van Noord & Worring, "GO4Align: Group Optimization for Multi-Task
Alignment", NeurIPS 2024): adaptive group risk minimization, as its official code computes it.

Each step, from the step's detached losses L:
- risk-guided indicators: p ← p·exp(−η·L)/Σ (p = 1/K at the start, η = `step_size`: the
  official code's robust_step_size), ω_k = (Σ_j L_j/L_k)·p_k (the scale balance Σ_j L_j/L_k
  times the risk history p);
- dynamical group assignment: the K values ω_k are clustered into M = `groups` groups by
  K-means, and each task's weight is its group's mean indicator;
- total = Σ_k w_k·L_k with w held constant.
The official code clusters with Lloyd's K-means from random centres; here the clustering of
the K scalars is the exact 1-D K-means (the partition of the sorted ω into M contiguous runs of
least within-group sum of squares, by dynamic programming): deterministic, and the optimum
Lloyd's iterations approach. M = 1 gives every task the mean indicator (the official default,
which the paper's experiments raise); M ≥ K gives each task its own ω_k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mtltrain.losses import LossTerm
from mtltrain.step import Step
from mtltrain.weighting.base import Range, Weighting

EPS = 1e-8  # of a loss, in the scale balance Σ_j L_j/(L_k + ε)


class GO4Align(Weighting):
    """Σ_k w_k·L_k, w_k the mean of task k's group of indicators ω = (Σ_j L_j/L_k)·p.

    p ← softmax(log p − η·L) each step accumulates the tasks' risks (η = `step_size`); the K
    indicators ω_k = (Σ_j L_j/(L_k + ε))·p_k are grouped by exact 1-D K-means into `groups`
    groups (at most K), and each task takes its group's mean ω as its weight for the step.
    A step whose losses are not all finite and positive (ΣL/L_k has no value at L_k = 0: a
    masked loss on a batch without valid targets) leaves p and the weights as they were. The
    scale balance divides by each loss, so it refuses a term whose loss can be negative.

    Paper: Shen et al., NeurIPS 2024.
    Scale: Σ_k ω_k·L_k = Σ_k L_k (ω before grouping; grouping keeps Σ w = Σ ω).
    Logs: `indicator` (ω), `group` (each task's group, 0 for the lowest weight).
    """

    elementwise = True

    RANGES: ClassVar[Mapping[str, Range]] = {
        "groups": (lambda v: isinstance(v, int) and v >= 1, "it must be an integer >= 1"),
        "step_size": (lambda v: v >= 0, "it must be >= 0"),
    }

    def __init__(self, terms: Sequence[LossTerm], groups: int = 2, step_size: float = 1e-4) -> None:
        super().__init__(terms)
        self.check_settings({"groups": groups, "step_size": step_size})
        self.require_nonnegative_losses("divides the sum of the losses by each loss")
        self.groups, self.step_size = min(groups, len(terms)), float(step_size)
        k = len(terms)
        self.register_buffer("probability", torch.full((k,), 1.0 / k))
        self.register_buffer("indicator", torch.full((k,), 1.0))
        self.register_buffer("group", torch.zeros(k, dtype=torch.long))
        self.register_buffer("weight", torch.ones(k))

    def observe(self, step: Step) -> None:
        losses = step.losses.detach().to(self.weight)
        if not bool((torch.isfinite(losses) & losses.gt(0)).all()):
            return
        probability = torch.softmax(self.probability.log() - self.step_size * losses, dim=0)
        indicator = losses.sum() / (losses + EPS) * probability
        group, means = grouped(indicator.double().cpu().numpy(), self.groups)
        self.probability.copy_(probability)
        self.indicator.copy_(indicator)
        self.group.copy_(torch.from_numpy(group))
        self.weight.copy_(torch.from_numpy(means[group]))

    def contributions(self, losses: Tensor) -> Tensor:
        return self.weight * losses

    def weights(self) -> Tensor:
        return self.weight.clone()

    def report(self) -> dict[str, Tensor]:
        return {
            "weight": self.weights(),
            "indicator": self.indicator.clone(),
            "group": self.group.to(self.weight.dtype),
        }


def grouped(values: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-D K-means: each value's group (numbered by increasing mean) and the groups'
    means, the partition of the sorted values into `groups` contiguous runs of least
    within-group sum of squares (dynamic programming over the runs' last values)."""
    order = np.argsort(values, kind="stable")
    x = values[order]
    n = len(x)
    s1, s2 = np.concatenate([[0.0], np.cumsum(x)]), np.concatenate([[0.0], np.cumsum(x * x)])
    start, end = np.arange(n)[:, None], np.arange(n)[None, :] + 1  # run x[start:end]
    size = np.maximum(end - start, 1)
    cost = s2[end] - s2[start] - (s1[end] - s1[start]) ** 2 / size
    cost = np.where(end > start, np.maximum(cost, 0.0), np.inf)  # [start, end − 1]
    best = cost[0].copy()  # best[j]: the first j + 1 values in one run
    starts = [np.zeros(n, dtype=int)]
    for _ in range(1, groups):
        # a new last run x[i:j + 1] after the best split of x[:i] into one run fewer
        candidates = np.full((n, n), np.inf)
        candidates[1:] = best[:-1, None] + cost[1:]
        starts.append(candidates.argmin(0))
        best = candidates.min(0)
    labels = np.empty(n, dtype=np.int64)
    j = n
    for g in range(groups - 1, -1, -1):  # back from the last run
        i = int(starts[g][j - 1]) if g else 0
        labels[i:j] = g
        j = i
    group = np.empty(n, dtype=np.int64)
    group[order] = labels
    means = np.array([values[group == g].mean() for g in range(groups)])
    return group, means
