"""Where a step's extra batches come from (`Weighting.extra_batches`: SDMGrad's and MoDo's
independent samples, Auto-Lambda's validation batch).

An epoch counts the steps' own batches: it takes its `batches_per_epoch` steps, each on the next
batch of the epoch's order, whatever a strategy draws besides, so `trainer.epochs` gives every
strategy the same number of updates (as SDMGrad's, MoDo's and Auto-Lambda's code and LibMTL
do: their extra batches come from other shuffles of the training set, and their epoch is a pass
of the main loader). Extra batch j of every step comes from stream j: the batches of its split
(the training set; for "validation" the validation split where one is held out) in a random
order of its own, one pass over that split per epoch, begun again in a new order where the
split has fewer batches than the epoch has steps. So a stream over the training set, like the
step's own batches, sees each sample once per epoch, and the streams are independent of each
other and of the epoch's order. Each order is a function of the run's seed, the epoch, the
stream and the pass, not of a generator's state: a run resumed mid-epoch draws at step b what
the run left alone drew there, with nothing more in its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from mtltrain.data.base import AnySplit, DatasetSplit, MultiTaskData, Split
from mtltrain.weighting.base import BatchSource

STREAMS = 0x5EED_BA7C  # sets these seeds apart from the run's other uses of its seed


def source_split(source: BatchSource, data: MultiTaskData, train: AnySplit) -> AnySplit:
    """The split a stream draws from: `train` (the training batches' split), or for
    "validation" the validation split where one is held out, else `train` (as Auto-Lambda's
    code, whose "validation" batches are another shuffle of the training set)."""
    if source == "validation" and data.validation is not None:
        return data.validation
    return train


def stream_seed(seed: int, epoch: int, stream: int, lap: int) -> int:
    """The seed of stream `stream`'s order in its pass `lap` of epoch `epoch` of a run seeded
    `seed` (63 bits, independent of the other streams')."""
    words = np.random.SeedSequence([STREAMS, seed % 2**63, epoch, stream, lap]).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])


def stream_order(n: int, seed: int) -> Tensor:
    """A random order of range(n), drawn by a generator seeded `seed` (on the host)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def extra_batches(
    split: AnySplit, batch_size: int, seed: int, epoch: int, stream: int, start: int
) -> Iterator[Split]:
    """Stream `stream`'s batches of epoch `epoch` from step number `start` on, without end
    (see the module); a Dataset's loaded as the training batches are, its workers seeded by
    the pass's seed."""
    batches = split.num_batches(batch_size)
    lap, first = divmod(start, batches)
    while True:
        order_seed = stream_seed(seed, epoch, stream, lap)
        order = stream_order(len(split), order_seed)
        if isinstance(split, DatasetSplit):
            yield from split.batches(batch_size, first, order, order_seed % 2**31)
        else:
            order = order.to(split.device)
            for b in range(first, batches):
                yield split.take(order[b * batch_size : (b + 1) * batch_size])
        lap, first = lap + 1, 0
