"""SegNet as MTAN's code builds it (Liu et al. 2019; VGG-16-like), for dense prediction, and
its per-pixel task heads.

The encoder has one level per width: 3×3 conv + batch norm + ReLU layers (two at the first
two levels, three deeper), then a 2×2 max-pool. The decoder mirrors it, deepest level first:
a ×2 upsampling, then as many conv layers, the first going down to the next level's width;
the last level ends at `widths[0]` channels at the input's resolution. Convolutions start
Xavier-normal with zero bias, batch norm at weight 1, bias 0, as in MTAN's code.

One difference from MTAN's code: it upsamples with max-unpooling (each pooled value goes back to
the position its max came from, zeros elsewhere), which needs the pooling indices carried from
each encoder level to its decoder level. Here every stage maps one feature map to the next, so
that architectures can split the network (`stages()`); the decoder upsamples by nearest
neighbour instead (each value copied to its 2×2 block). The input's sides must be divisible by
2^levels (288×384 and 128×256 are, for up to 5 levels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from mtltrain.constraints import Width

SEGNET_WIDTHS = (64, 128, 256, 512, 512)  # MTAN's SegNet


def conv_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 convolution (padding 1), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def layers_at(level: int) -> int:
    """Conv layers per encoder (and decoder) level: 2 at the first two levels, 3 deeper."""
    return 2 if level < 2 else 3


class SegNet(nn.Sequential):
    """`widths` (one per level) → encoder stages, then decoder stages; output: `widths[0]`
    channels at the input's resolution. `stages()`: [encoder level 0, …, decoder level 0]."""

    def __init__(self, widths: Sequence[Width] = SEGNET_WIDTHS, in_channels: int = 3) -> None:
        if not widths or min(widths) < 1:
            raise ValueError(f"SegNet takes at least one positive width, not {list(widths)}")
        widths = list(widths)
        encoder = []
        for level, width in enumerate(widths):
            before = in_channels if level == 0 else widths[level - 1]
            convs = [conv_layer(before, width)]
            convs += [conv_layer(width, width) for _ in range(layers_at(level) - 1)]
            encoder.append(nn.Sequential(*convs, nn.MaxPool2d(2)))
        decoder = []
        for level in reversed(range(len(widths))):
            width, after = widths[level], widths[max(level - 1, 0)]
            convs = [conv_layer(width, after)]
            convs += [conv_layer(after, after) for _ in range(layers_at(level) - 1)]
            decoder.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *convs))
        super().__init__(*encoder, *decoder)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MTAN's initialisation: convolutions Xavier-normal with zero bias (batch norm: 1, 0)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def stages(self) -> list[nn.Module]:
        """The encoder's levels, then the decoder's; applied in order they are the forward."""
        return list(self.children())


class DenseHead(nn.Module):
    """MTAN's prediction layer: 3×3 conv (`in_channels` → `in_channels`, no activation), then
    1×1 conv to `out_features` channels per pixel; `unit`: each pixel's vector divided by its
    length (surface normals)."""

    def __init__(self, in_channels: int, out_features: int, unit: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.Conv2d(in_channels, out_features, 1),
        )
        self.unit = unit
        for module in self.layers:
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, z: Tensor) -> Tensor:
        out = self.layers(z)
        return F.normalize(out, dim=1) if self.unit else out
