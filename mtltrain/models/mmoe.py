"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task mixing them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from mtltrain.constraints import Width
from mtltrain.models.experts import SharedExperts, SoftmaxGate
from mtltrain.models.multitask import HeadFactory
from mtltrain.tasks import TaskSpec


class MMoE(SharedExperts):
    """y_k = head_k(Σ_i g_k(x)_i·E_i(x)), g_k(x) = softmax(W_k·flatten(x) + b_k).

    The experts E_1..E_n are `experts` copies of the backbone (`encoder`): the backbone as
    built, the others re-initialised independently (`independent_copies`). Each task's gate
    reads the input flattened (`input_shape`: one input's shape, needed where the backbone
    does not start with a Linear that tells it).

    Shared: the experts. Task-specific: the task's gate and head. Features: the tuple of the n
    experts' outputs E_i(x), which the gates mix and the heads read.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        encoder: nn.Module,
        head: HeadFactory,
        heads: Mapping[str, HeadFactory] | None = None,
        experts: Width = 4,
        input_shape: Sequence[Width] | None = None,
    ) -> None:
        super().__init__(
            tasks, encoder, head, heads, experts, lambda width: SoftmaxGate(width, experts),
            input_shape,
        )  # fmt: skip
