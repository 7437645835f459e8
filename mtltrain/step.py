"""One training step as the strategies and the callbacks see it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mtltrain.data.base import Split
from mtltrain.distributed import ONE_PROCESS, Ranks
from mtltrain.models.base import Outputs


@dataclass
class Step:
    """A step of the loop: `number` counts from 1 over the run, `epoch` from 0; `outputs` are
    detached; `losses` are the term losses in term order, with their graph until the backward
    pass. After the backward pass `parts` holds each term's detached contribution to `total`,
    which is NaN where the step's combined gradient was not finite.

    Under torchrun `batch` and `outputs` are this rank's shard (`share` of the global batch)
    and `losses` the global batch's; `ranks.sum` adds a shard's sums (or its part of a
    gradient) up over the ranks."""

    number: int
    epoch: int
    batch: Split
    outputs: Outputs
    losses: Tensor
    parts: Tensor | None = None
    total: Tensor | None = None
    share: float = 1.0
    ranks: Ranks = ONE_PROCESS
