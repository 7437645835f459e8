"""The shape every data set returns: in-memory tensors per split and one `TaskSpec` per task."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtltrain.errors import ConfigError
from mtltrain.losses import LOSSES, check_losses
from mtltrain.tasks import TaskKind, TaskSpec


@dataclass
class Split:
    """Inputs and per-task targets of one split, held as tensors.

    Where a synthetic data set knows the truth it says so, per task and sample: `noise_free`
    is the target without noise, `noise_std` the true σ of the label noise (what a learned σ
    is scored against). `raw_inputs` are the inputs before normalisation, where they differ.
    A batch is itself a `Split`.
    """

    inputs: Tensor
    targets: dict[str, Tensor]
    noise_std: dict[str, Tensor] = field(default_factory=dict)
    noise_free: dict[str, Tensor] = field(default_factory=dict)
    raw_inputs: Tensor | None = None

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Split:
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
            {k: once(v) for k, v in self.noise_free.items()},
            None if self.raw_inputs is None else once(self.raw_inputs),
        )

    def to(self, device: torch.device | str) -> Split:
        return self._map(lambda t: t.to(device))

    def take(self, index: Tensor | slice) -> Split:
        """The samples at `index`."""
        return self._map(lambda t: t[index])

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
            source = self.take(perm.to(self.inputs.device))
        for start in range(0, len(self), batch_size):
            yield source.take(slice(start, start + batch_size))

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


def task_specs(
    selected: Sequence[str],
    available: Mapping[str, tuple[TaskKind, int]],
    losses: Mapping[str, Sequence[str]],
) -> tuple[TaskSpec, ...]:
    """Specs of the `selected` tasks, each with its losses from the `dataset.losses` setting.

    `available` maps every task the data set can make to (kind, out_features).
    """
    unknown = sorted(set(losses) - set(available))
    if unknown:
        raise ConfigError(
            f"dataset.losses names {unknown}, which this data set does not have: "
            f"its tasks are {list(available)}"
        )
    specs = []
    for name in selected:
        kind, out_features = available[name]
        names = tuple(losses.get(name, ()))
        check_losses(name, kind, names)
        hetero = any(LOSSES[n].heteroscedastic for n in names)
        specs.append(TaskSpec(name, kind, out_features, names, hetero))
    return tuple(specs)
