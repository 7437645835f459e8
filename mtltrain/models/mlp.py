"""Fully connected networks, used as encoders and heads."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Sequential):
    """in_features → hidden… → out_features, with `activation` after every hidden layer.

    `activate_output` also puts it after the last layer (for an encoder whose output is a
    representation); `flatten` first flattens all but the batch dimension (for heads on maps).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (),
        activation: str = "relu",
        activate_output: bool = False,
        flatten: bool = False,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: choose one of {list(ACTIVATIONS)}")
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = [nn.Flatten()] if flatten else []
        for i, (a, b) in enumerate(pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2 or activate_output:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
