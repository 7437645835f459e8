"""The shape every data set returns: in-memory tensors per split and one `TaskSpec` per task."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtltrain.errors import ConfigError
from mtltrain.losses import LOSSES, check_losses
from mtltrain.tasks import LossChoice, MetricChoice, TaskKind, TaskSpec


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

    def map(self, fn: Callable[[Tensor], Tensor]) -> Split:
        """`fn` applied to every tensor; one shared between fields (a reconstruction target
        is the input) is mapped once and stays shared."""
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

    def tensors(self) -> list[Tensor]:
        """Every distinct tensor of the split."""
        out: dict[int, Tensor] = {}
        self.map(lambda t: out.setdefault(id(t), t))
        return list(out.values())

    def take(self, index: Tensor | slice) -> Split:
        """The samples at `index`."""
        return self.map(lambda t: t[index])

    def order(self, generator: torch.Generator) -> Tensor:
        """A random order of the samples drawn from `generator`, on the split's device."""
        perm = torch.randperm(len(self), generator=generator, device=generator.device)
        return perm.to(self.inputs.device)

    def shuffled(self, generator: torch.Generator) -> Split:
        """The split gathered once in a random order drawn from `generator`."""
        return self.take(self.order(generator))

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Split]:
        """Consecutive batches, from batch number `start` on; each is a view, not a copy."""
        for first in range(start * batch_size, len(self), batch_size):
            yield self.take(slice(first, first + batch_size))

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


@dataclass
class MultiTaskData:
    """A data set split into train (for training), test (for evaluation) and, where some of
    the training set is held out for model selection, validation."""

    tasks: tuple[TaskSpec, ...]
    train: Split
    test: Split
    validation: Split | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> MultiTaskData:
        """`fn` applied to every tensor of every split."""
        held_out = None if self.validation is None else self.validation.map(fn)
        return MultiTaskData(self.tasks, self.train.map(fn), self.test.map(fn), held_out)

    def splits(self) -> dict[str, Split]:
        """The splits that are evaluated, by name: validation (where held out), then test."""
        return {**({"validation": self.validation} if self.validation else {}), "test": self.test}

    def nbytes(self) -> int:
        """Memory the data set's tensors take."""
        splits = (self.train, *self.splits().values())
        return sum(t.nbytes for split in splits for t in split.tensors())


def hold_out(data: MultiTaskData, size: float, seed: int) -> MultiTaskData:
    """`data` with a validation split drawn from its training set: `size` is a fraction in
    (0, 1) or a count (0: none), the samples drawn by a generator seeded with `seed`."""
    kept, held = held_out(len(data.train), size, seed)
    if len(held) == 0:
        return data
    return MultiTaskData(data.tasks, data.train.take(kept), data.test, data.train.take(held))


def held_out(n: int, size: float, seed: int) -> tuple[Tensor, Tensor]:
    """The indices of `n` training samples that train and those held out for validation
    (`size` as in `hold_out`), each in ascending order."""
    count = validation_count(size, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[count:].sort().values, order[:count].sort().values


def validation_count(size: float, n: int) -> int:
    """How many of `n` training samples `trainer.validation=size` holds out."""
    fraction = isinstance(size, float) and 0 < size < 1
    count = round(size * n) if fraction else size
    whole = not fraction and float(size).is_integer() and size >= 0
    if not ((fraction and count > 0) or whole) or not 0 <= count < n:
        raise ConfigError(
            f"trainer.validation={size} is not allowed: give a fraction in (0, 1) or a count of "
            f"the {n} training samples (0: no validation split), leaving at least one to train on"
        )
    return int(count)


def check_tasks(tasks: Sequence[str], available: Mapping[str, object]) -> None:
    """`dataset.tasks` must name distinct tasks among the data set's `available`, at least one."""
    if not tasks or any(t not in available for t in tasks) or len(set(tasks)) != len(tasks):
        raise ConfigError(
            f"dataset.tasks={list(tasks)} is not allowed: choose distinct tasks among "
            f"{list(available)}"
        )


def task_specs(
    selected: Sequence[str],
    available: Mapping[str, tuple[TaskKind, int]],
    losses: Mapping[str, Sequence[LossChoice]],
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
) -> tuple[TaskSpec, ...]:
    """Specs of the `selected` tasks, each with its losses from the `dataset.losses` setting
    and its metrics from `dataset.metrics` (a task it leaves out: its kind's built-ins).

    `available` maps every task the data set can make to (kind, out_features).
    """
    # here, not at the top: mtltrain.metrics imports mtltrain.distributed, which imports Split
    from mtltrain.metrics import check_metrics

    metrics = metrics or {}
    for key, given in (("losses", losses), ("metrics", metrics)):
        unknown = sorted(set(given) - set(available))
        if unknown:
            raise ConfigError(
                f"dataset.{key} names {unknown}, which this data set does not have: "
                f"its tasks are {list(available)}"
            )
    specs = []
    for name in selected:
        kind, out_features = available[name]
        chosen = tuple(losses.get(name, ()))
        check_losses(name, kind, chosen)
        hetero = any(isinstance(n, str) and LOSSES[n].heteroscedastic for n in chosen)
        scored = tuple(metrics.get(name, ()))
        check_metrics(name, kind, hetero, scored)
        specs.append(TaskSpec(name, kind, out_features, chosen, hetero, scored))
    return tuple(specs)
