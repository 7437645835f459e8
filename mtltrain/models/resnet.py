"""A ResNet encoder of torchvision's basic blocks: ResNet-18 without its classifier by default,
in any width and depth, with a stem for small images.

Stages: the stem, one stage of `blocks[i]` `torchvision.models.resnet.BasicBlock`s per entry,
`width`·2^i channels, each after the first halving the map (stride 2), then global average
pooling to width·2^(stages − 1) features (512 for ResNet-18). stem="small" (for 64×64 CelebA):
a 3×3 stride-1 convolution, batch norm and ReLU with no max-pool, as Sener & Koltun's ResNet-18
for CelebA begins (FAMO's plain network starts so too, then max-pools), so 64×64 images reach
the last stage at 8×8, not 2×2; stem="imagenet": torchvision's 7×7 stride-2 convolution and
3×3 stride-2 max-pool. The modules
are named as torchvision's (conv1, bn1, layer1…, avgpool), so with stem="imagenet" and the
defaults `torchvision.models.resnet18()`'s state without fc loads into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from mtltrain.constraints import Width, one_of

STEMS = ("small", "imagenet")
Stem = Annotated[str, one_of(STEMS)]


class ResNetEncoder(nn.Module):
    """images (N × in_channels × H × W) → features (N × width·2^(len(blocks) − 1)); applying
    `stages()` in order is its forward pass."""

    def __init__(
        self,
        width: Width = 64,
        blocks: Sequence[Width] = (2, 2, 2, 2),
        stem: Stem = "small",
        in_channels: Width = 3,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem={stem!r}: choose one of {list(STEMS)}")
        if not blocks:
            raise ValueError("blocks: give at least one stage's number of blocks")
        small = stem == "small"
        kernel, stride = (3, 1) if small else (7, 2)
        self.conv1 = nn.Conv2d(
            in_channels, width, kernel, stride=stride, padding=kernel // 2, bias=False
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, stride=2, padding=1)
        channels = width
        for i, count in enumerate(blocks):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(channels, planes, stride, _shortcut(channels, planes, stride))]
            layer += [BasicBlock(planes, planes) for _ in range(count - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            channels = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation of its ResNets' convolutions: Kaiming-normal (fan out)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def layers(self) -> list[nn.Module]:
        """layer1 … layerN, in order."""
        return [m for name, m in self.named_children() if name.startswith("layer")]

    def stages(self) -> list[nn.Module]:
        """stem, layer1 … layerN (feature maps), then the pooling to a feature vector."""
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [stem, *self.layers(), nn.Sequential(self.avgpool, nn.Flatten())]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in self.layers():
            x = layer(x)
        return torch.flatten(self.avgpool(x), 1)


def _shortcut(channels: int, planes: int, stride: int) -> nn.Module | None:
    """The 1×1 convolution and batch norm of a block whose input differs in shape from its
    output (torchvision's downsample), else None (the identity)."""
    if stride == 1 and channels == planes:
        return None
    return nn.Sequential(
        PointwiseStrided(channels, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
    )


class PointwiseStrided(nn.Conv2d):
    """A 1×1 convolution of stride s as the stride-1 one of x[..., ::s, ::s] (the same values):
    torch's CPU backward of a 1×1 stride-2 convolution in channels_last corrupts memory with
    few input channels (2 to 6 aborted a one-thread process on torch 2.14.1; 8 and more did not)."""

    def forward(self, x: Tensor) -> Tensor:
        step_h, step_w = self.stride
        return F.conv2d(x[..., ::step_h, ::step_w], self.weight, self.bias)
