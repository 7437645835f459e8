"""The MNIST encoder and decoder of docs/theory.md §5B.

Padding is "same" where the source's shapes need it, so the bottleneck is 2×2×8 and the
reconstruction 28×28.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtltrain.constraints import Width


def _relu() -> nn.ReLU:
    """ReLU in place: the layer before it (a convolution or a pooling) keeps its input, not its
    output, for its backward pass, so the activation overwrites that output (the same values, no
    new buffer; measured: 3% off a §5B training step on one CPU thread)."""
    return nn.ReLU(inplace=True)


class MaxPool2x2(nn.MaxPool2d):
    """2×2 max-pooling. Without autograd (evaluation) it is two elementwise maxima, of row
    pairs, then of column pairs: no indices to write, the same values (a maximum is exact, NaN
    kept), about half the time of `max_pool2d` in channels-last. With autograd it is
    `max_pool2d`, whose indices send each window's gradient to its first maximum."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():  # not x.requires_grad: False inside vmap, recorded or not
            return super().forward(x)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # a last odd row/column
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _same_pad_2x2() -> nn.ZeroPad2d:
    """Keras' "same" padding for a 2×2 kernel: one extra row and column at the bottom/right."""
    return nn.ZeroPad2d((0, 1, 0, 1))


class MnistEncoder(nn.Sequential):
    """conv16 3×3, conv16 3×3, pool, conv16 2×2, conv8 2×2, pool, conv8 2×2/2, pool → 8×2×2.

    Each ReLU before a pooling runs after it: max-pooling and ReLU commute exactly (max(0, ·)
    is monotone; every gradient is the same too: a window whose maximum is not positive passes
    none either way), and so the ReLU and its backward pass touch a quarter of the values
    (measured: about 2% off a §5B training step on one CPU thread).
    """

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 3, padding=1), _relu(),  # 28×28
            nn.Conv2d(16, 16, 3, padding=1),
            MaxPool2x2(), _relu(),  # 14×14
            _same_pad_2x2(), nn.Conv2d(16, 16, 2), _relu(),
            _same_pad_2x2(), nn.Conv2d(16, 8, 2),
            MaxPool2x2(), _relu(),  # 7×7
            _same_pad_2x2(), nn.Conv2d(8, 8, 2, stride=2),  # 4×4
            MaxPool2x2(), _relu(),  # 2×2
        )  # fmt: skip

    def stages(self) -> list[nn.Module]:
        """Its layers up to each pooling: 16×14×14, 8×7×7, 8×2×2 (`Staged`)."""
        layers = list(self)
        return [nn.Sequential(*layers[a:b]) for a, b in ((0, 5), (5, 12), (12, None))]


class MnistDecoder(nn.Sequential):
    """convT 3×3/3, convT 3×3/2, convT 3×3, convT·2×2/2: 8×2×2 → channels×28×28.

    `hidden` are the widths of the first three layers, (8, 4, 2) in §5B. `out_features` =
    channels·784: 784 for a reconstruction (with `tanh`, as in §5B), 2·784 for the logits of
    a two-class segmentation (`tanh=False`).
    """

    def __init__(
        self,
        out_features: int = 28 * 28,
        tanh: bool = True,
        hidden: Sequence[Width] = (8, 4, 2),
    ) -> None:
        channels, rest = divmod(out_features, 28 * 28)
        if rest or not channels:
            raise ValueError(f"MnistDecoder emits channels×28×28 values, not {out_features}")
        if len(hidden) != 3 or min(hidden) < 1:
            raise ValueError(f"MnistDecoder takes three positive hidden widths, not {hidden}")
        a, b, c = hidden
        super().__init__(
            nn.ConvTranspose2d(8, a, 3, stride=3), _relu(),  # 6×6
            nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1), _relu(),  # 12
            nn.ConvTranspose2d(b, c, 3), _relu(),  # 14×14
            nn.ConvTranspose2d(c, channels, 2, stride=2),  # 28×28
            *([nn.Tanh()] if tanh else []),
        )  # fmt: skip
