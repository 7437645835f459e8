"""The shape every data set returns: in-memory tensors per split and one `TaskSpec` per task."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

TaskKind = Literal["classification", "regression"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: what its head predicts and how it is trained and scored.

    `out_features` is the number of values the head emits per sample (classes for
    classification); `losses` names the task's loss terms in `mtltrain.losses.LOSSES`.
    """

    name: str
    kind: TaskKind
    out_features: int
    losses: tuple[str, ...]


@dataclass
class Split:
    """Inputs and per-task targets of one split, held as tensors.

    `noise_std` holds, per task, the true standard deviation of each sample's label noise
    where the data set knows it (synthetic data); it is what a learned σ is scored against.
    `raw_inputs` are the inputs before normalisation, where they differ (for plots).
    A batch is itself a `Split`.
    """

    inputs: Tensor
    targets: dict[str, Tensor]
    noise_std: dict[str, Tensor] = field(default_factory=dict)
    raw_inputs: Tensor | None = None

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def _map(self, fn) -> Split:
        # Tensors shared between fields (reconstruction targets are the inputs) are mapped once.
        done: dict[int, Tensor] = {}

        def once(t: Tensor) -> Tensor:
            if id(t) not in done:
                done[id(t)] = fn(t)
            return done[id(t)]

        return Split(
            once(self.inputs),
            {k: once(v) for k, v in self.targets.items()},
            {k: once(v) for k, v in self.noise_std.items()},
            None if self.raw_inputs is None else once(self.raw_inputs),
        )

    def to(self, device: torch.device | str) -> Split:
        return self._map(lambda t: t.to(device))

    def batches(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> Iterator[Split]:
        """Yield batches in order, or shuffled when a generator is given.

        Shuffling gathers the whole split once by a random permutation, so every batch is a
        view: no per-sample Python work and no copy per step.
        """
        source = self
        if generator is not None:
            perm = torch.randperm(len(self), generator=generator, device=generator.device)
            source = self._map(lambda t: t[perm.to(t.device)])
        for start in range(0, len(self), batch_size):
            yield source._map(lambda t, s=start: t[s : s + batch_size])

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


@dataclass
class MultiTaskData:
    """A data set split into train (for training) and test (for evaluation)."""

    tasks: tuple[TaskSpec, ...]
    train: Split
    test: Split

    def to(self, device: torch.device | str) -> MultiTaskData:
        return MultiTaskData(self.tasks, self.train.to(device), self.test.to(device))
