"""The MultiLeNet encoder of Sener & Koltun (NeurIPS 2018) for MultiMNIST.

conv 10@5×5, pool, ReLU, conv 20@5×5, dropout, pool, ReLU, fc 320→50, ReLU (its heads: fc 50→50,
ReLU, dropout, fc 50→10, an `MLP` with `dropout` in conf/model/multi_mnist.yaml). Dropout is the
standard kind (p = 0.5): nn.Dropout2d draws a mask per example and channel and scales what it
keeps by 1/(1 − p), so evaluation needs no correction. The paper's code drew the encoder's
channel mask once for the whole batch (the heads' per value), reused the masks in every task's
pass, and rescaled none, which leaves its evaluation-time activations twice their training-time
mean.
"""

from __future__ import annotations

from torch import nn

from mtltrain.constraints import DropoutRate


class MultiLeNetEncoder(nn.Sequential):
    """1×28×28 → 50 features, shared by the tasks."""

    def __init__(self, dropout: DropoutRate = 0.5) -> None:
        super().__init__(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),  # 10×12×12
            nn.Conv2d(10, 20, 5), nn.Dropout2d(dropout), nn.MaxPool2d(2), nn.ReLU(),  # 20×4×4
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
        )  # fmt: skip

    def stages(self) -> list[nn.Module]:
        """Its two conv blocks and its fc layer: 10×12×12, 20×4×4, 50 (`Staged`)."""
        layers = list(self)
        return [nn.Sequential(*layers[a:b]) for a, b in ((0, 3), (3, 7), (7, None))]
