"""MTAN, the multi-task attention network (Liu, Johns & Davison, CVPR 2019).

A shared backbone (`Staged`: stages s_1 … s_J) runs once; each task has, at every stage j, an
attention module that reads the shared stage output s_j and the task's previous attended
feature t_{j−1} (resized to s_j's resolution: max-pooled where the stage downsamples,
bilinearly upsampled where it upsamples, as in an encoder-decoder such as SegNet):

    a_j = sigmoid(BN(conv1×1(ReLU(BN(conv1×1([s_j ; t_{j−1}]))))))   (t_0: none, [s_1] alone)
    t_j = ReLU(BN(conv3×3(a_j ⊙ s_j)))

and the task's head reads t_J (in the shape of the backbone's output). A stage whose output is
a vector [N, C] is attended as a 1×1 map. Shared: the backbone's parameters; a task's own: its
attention modules and its head. Features (for representation-level strategies): the tuple of
the shared stage outputs (s_1, …, s_J), every tensor the task parts read, each as they read it
(a view of its own, which the backbone's next stage does not read): so the tuple is a cut of
the graph, a loss's gradient at s_j is what flows into the task parts there, and the backward
pass from all of them gives the backbone's whole gradient, no path counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtltrain.models.base import Outputs, stage_channels, stages_of
from mtltrain.models.multitask import HeadFactory, task_head
from mtltrain.tasks import TaskSpec


def as_map(x: Tensor) -> Tensor:
    """A feature map [N, C, H, W] as it is; a vector [N, C] as a 1×1 map."""
    return x if x.dim() == 4 else x.reshape(*x.shape[:2], 1, 1)


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """`x` at spatial `size`: max-pooled where it is larger, bilinearly upsampled where smaller."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_max_pool2d(x, size)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Attention(nn.Module):
    """One task's attention at one stage: t = ReLU(BN(conv3×3(a ⊙ s))), with the mask
    a = sigmoid(BN(conv1×1(ReLU(BN(conv1×1([s ; resized previous]))))))."""

    def __init__(self, channels: int, previous_channels: int = 0) -> None:
        super().__init__()
        self.mask = nn.Sequential(
            nn.Conv2d(channels + previous_channels, channels, 1), nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )  # fmt: skip
        self.out = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()
        )

    def forward(self, shared: Tensor, previous: Tensor | None) -> Tensor:
        if previous is not None:
            read = torch.cat([shared, resize(previous, shared.shape[-2:])], 1)
        else:
            read = shared
        return self.out(self.mask(read) * shared)


class MTAN(nn.Module):
    """The shared `encoder`'s stages, each task's attention modules on them, and its head on
    its last attended feature (Liu et al. 2019). Heads are built as `MultiTaskModel` builds
    them (`heads[task]` or `head`)."""

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        encoder: nn.Module,
        head: HeadFactory,
        heads: Mapping[str, HeadFactory] | None = None,
    ) -> None:
        super().__init__()
        heads = heads or {}
        self.encoder = encoder
        # the encoder's own modules, in a plain list: not registered twice
        self.backbone_stages = stages_of(encoder, "mtan")
        channels = stage_channels(self.backbone_stages)
        self.attention = nn.ModuleDict(
            {
                t.name: nn.ModuleList(
                    Attention(c, channels[j - 1] if j else 0) for j, c in enumerate(channels)
                )
                for t in tasks
            }
        )
        self.heads = nn.ModuleDict({t.name: task_head(t, heads.get(t.name, head)) for t in tasks})

    def forward(self, x: Tensor) -> tuple[Outputs, tuple[Tensor, ...]]:
        shared = []  # each as the task parts read it: a view of its own (see the module's text)
        for stage in self.backbone_stages:
            x = stage(x)
            shared.append(x.view_as(x))
        outputs: Outputs = {}
        for name, modules in self.attention.items():
            attended = None
            for module, s in zip(modules, shared, strict=True):
                attended = module(as_map(s), attended)
            outputs[name] = self.heads[name](attended.reshape(shared[-1].shape))
        return outputs, tuple(shared)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters, in forward order."""
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """`task`'s attention modules and head."""
        return [*self.attention[task].parameters(), *self.heads[task].parameters()]
