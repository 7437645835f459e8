"""The shape every data set returns: per split in-memory tensors (`Split`, the fast path) or a
`torch.utils.data.Dataset` loaded batch by batch (`DatasetSplit`), and one `TaskSpec` per task."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, default_collate, get_worker_info

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

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def head(self, n: int) -> Split:
        """The first `n` samples (all where fewer)."""
        return self.take(slice(0, n))

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
        """Consecutive batches, from batch number `start` on; each is a view, not a copy (of
        each tensor split once: the same views as slicing it per batch, at a third of the
        cost of a small model's batch)."""
        rest = self.take(slice(start * batch_size, None))
        pieces: dict[int, tuple[Tensor, ...]] = {}
        rest.map(lambda t: pieces.setdefault(id(t), t.split(batch_size))[0])
        for i in range(rest.num_batches(batch_size)):
            yield rest.map(lambda t, i=i: pieces[id(t)][i])

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


@dataclass
class DatasetSplit:
    """A split whose samples a `torch.utils.data.Dataset` makes one at a time, each item
    `(input, {task: target})`, loaded in batches by a `DataLoader`: `num_workers` worker
    processes, pinned memory where `pin_memory`; `transform` applied to each item's input.

    Batches come as `Split`s on the host (float64 tensors as float32). It holds no tensors,
    so `map` (placing data on a device) leaves it as it is: its batches are moved as loaded.
    """

    dataset: Dataset
    transform: Callable[[Any], Any] | None = None
    num_workers: int = 0
    pin_memory: bool = False
    noise_std: dict[str, Tensor] = field(default_factory=dict)  # unknown for a Dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def map(self, fn: Callable[[Tensor], Tensor]) -> DatasetSplit:
        return self

    def tensors(self) -> list[Tensor]:
        return []

    def take(self, index: Tensor | slice) -> DatasetSplit:
        """The samples at `index` (a `Subset` of the data set)."""
        rows = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        return dataclasses.replace(self, dataset=Subset(self.dataset, list(rows)))

    def with_transform(self, transform: Callable[[Any], Any] | None) -> DatasetSplit:
        """The split with `transform` applied to each input after its own transform."""
        if transform is None:
            return self
        return dataclasses.replace(self, transform=_then(self.transform, transform))

    def loaded_by(self, num_workers: int, pin_memory: bool) -> DatasetSplit:
        return dataclasses.replace(self, num_workers=num_workers, pin_memory=pin_memory)

    def order(self, generator: torch.Generator) -> Tensor:
        """A random order of the samples drawn from `generator` (on the host)."""
        return torch.randperm(len(self), generator=generator, device=generator.device).cpu()

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def head(self, n: int) -> Split:
        """The first `n` samples (all where fewer), loaded as one batch in this process."""
        first = dataclasses.replace(self.take(slice(0, n)), num_workers=0)
        return next(first.batches(max(1, min(n, len(self)))))

    def batches(
        self,
        batch_size: int,
        start: int = 0,
        order: Tensor | None = None,
        seed: int = 0,
    ) -> Iterator[Split]:
        """Consecutive batches in `order` (default: the data set's), from batch number `start`
        on; in worker processes each item is loaded and transformed with the random generators
        seeded by `seed` and its index (`_Items`), in this process with the run's own."""
        indices = (order if order is not None else torch.arange(len(self))).tolist()
        loader = DataLoader(
            _Items(self.dataset, self.transform, seed),
            batch_size=batch_size,
            sampler=indices[start * batch_size :],
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=_collate,
            generator=torch.Generator().manual_seed(seed),
        )
        for inputs, targets in loader:
            yield Split(inputs, targets)


class _Items(Dataset):
    """A data set's items with `transform` applied to each input. In a worker process each
    item draws from torch's, Python's and NumPy's generators seeded by `seed` and the item's
    index: the same draws whichever worker loads it, and where a resumed epoch starts."""

    def __init__(
        self, dataset: Dataset, transform: Callable[[Any], Any] | None, seed: int = 0
    ) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if get_worker_info() is not None:
            seed = (self.seed * 1_000_003 + index) % 2**32
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
        item = self.dataset[index]
        if not (
            isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Mapping)
        ):
            raise ConfigError(_not_an_item(item))
        x, targets = item
        return (x if self.transform is None else self.transform(x)), targets


class _Then:
    """`second(first(x))`; picklable, for worker processes."""

    def __init__(self, first: Callable[[Any], Any], second: Callable[[Any], Any]) -> None:
        self.first, self.second = first, second

    def __call__(self, x: Any) -> Any:
        return self.second(self.first(x))


def _then(first: Callable[[Any], Any] | None, second: Callable[[Any], Any]) -> Callable:
    return second if first is None else _Then(first, second)


def _collate(items: list[tuple[Any, Any]]) -> tuple[Tensor, dict[str, Tensor]]:
    """Items `(input, {task: target})` stacked into a batch; float64 becomes float32."""
    inputs, targets = default_collate(items)
    single = {k: v.float() if v.dtype == torch.float64 else v for k, v in targets.items()}
    return (inputs.float() if inputs.dtype == torch.float64 else inputs), single


def _not_an_item(item: Any) -> str:
    kind = type(item).__name__
    if isinstance(item, (tuple, list)):
        kind = f"({', '.join(type(part).__name__ for part in item)})"
    return (
        f"dataset: an item of a torch Dataset is not allowed as {kind}: give "
        "(input, {task: target}) with tensors"
    )


AnySplit = Split | DatasetSplit


def as_split(split: Split | DatasetSplit | Dataset) -> AnySplit:
    """A split as given, a `Dataset` as a `DatasetSplit`."""
    return split if isinstance(split, (Split, DatasetSplit)) else DatasetSplit(split)


@dataclass
class MultiTaskData:
    """A data set split into train (for training), test (for evaluation) and, where some of
    the training set is held out for model selection, validation. Each split is a `Split` of
    tensors or a `torch.utils.data.Dataset` (kept as a `DatasetSplit`)."""

    tasks: tuple[TaskSpec, ...]
    train: AnySplit
    test: AnySplit
    validation: AnySplit | None = None

    def __post_init__(self) -> None:
        self.train, self.test = as_split(self.train), as_split(self.test)
        if self.validation is not None:
            self.validation = as_split(self.validation)

    def in_memory(self) -> bool:
        """Whether every split is tensors (no `DatasetSplit`)."""
        return all(isinstance(s, Split) for s in (self.train, *self.splits().values()))

    def map(self, fn: Callable[[Tensor], Tensor]) -> MultiTaskData:
        """`fn` applied to every tensor of every split."""
        return self.map_splits(lambda split: split.map(fn))

    def map_splits(self, fn: Callable[[Any], AnySplit]) -> MultiTaskData:
        """`fn` applied to every split."""
        held_out = None if self.validation is None else fn(self.validation)
        return MultiTaskData(self.tasks, fn(self.train), fn(self.test), held_out)

    def splits(self) -> dict[str, AnySplit]:
        """The splits that are evaluated, by name: validation (where held out), then test."""
        return {**({"validation": self.validation} if self.validation else {}), "test": self.test}

    def nbytes(self) -> int:
        """Memory the data set's tensors take."""
        splits = (self.train, *self.splits().values())
        return sum(t.nbytes for split in splits for t in split.tensors())


def hold_out(data: MultiTaskData, size: float, seed: int) -> MultiTaskData:
    """`data` with a validation split drawn from its training set: `size` is a fraction in
    (0, 1) or a count (0: none), the samples drawn by a generator seeded with `seed`. A data
    set with a validation split of its own (qm9's dataset.n_val) refuses another."""
    if size and data.validation is not None:
        raise ConfigError(
            f"trainer.validation={size} is not allowed: the data set has a validation split of "
            "its own, which this would replace; leave trainer.validation=0 (or size that split "
            "with the data set's settings)"
        )
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
