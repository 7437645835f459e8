"""The one protocol every model follows, so that strategies and the engine never see a class.

A model maps a batch of inputs to its outputs and its shared representation:
`model(x) -> (outputs, features)`, outputs `{task: Tensor | MeanLogVar}`, features the last tensor
every task head reads (a tuple of tensors where heads read several). It names its parameters:
`shared_parameters()`, which every task's loss depends on, in the order their layers are
registered (the forward order of a sequential encoder; GradNorm takes the last weight of them),
and `task_parameters(task)`, the tensors `task`'s outputs depend on besides the shared ones (a
model that stacks the tasks' networks into one tensor names that tensor for each task; the
task's gradient reaches only its slice). A model without shared layers returns its input as
features and no shared parameters; strategies that need a shared part check
`has_shared_part` and refuse such a model in one line.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mtltrain.errors import ConfigError
from mtltrain.losses import MeanLogVar

Outputs = dict[str, Tensor | MeanLogVar]
Features = Tensor | tuple[Tensor, ...]


class MultiTaskNet(Protocol):
    """What the trainer, the engine and the strategies may use of a model."""

    training: bool

    def __call__(self, x: Tensor) -> tuple[Outputs, Features]: ...

    def shared_parameters(self) -> list[nn.Parameter]: ...

    def task_parameters(self, task: str) -> list[nn.Parameter]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


@runtime_checkable
class HeadInputs(Protocol):
    """A model whose task heads read the features it returns (one tensor) and nothing else of
    the shared part. With `split_features` on, in training with a graph, each head reads a
    view of them of its own (`head_inputs`, {task: view}, same values and graph): one backward
    pass of the tasks' losses can then stop at the views and give each task's gradient of the
    features (the engine's, for gradient-based strategies)."""

    split_features: bool
    head_inputs: dict[str, Tensor]


@runtime_checkable
class Staged(Protocol):
    """A backbone that architectures can split (MTAN, cross-stitch, PLE): applying `stages()`
    in order is its forward pass, each stage a module from one feature map to the next."""

    def stages(self) -> list[nn.Module]: ...


def has_shared_part(model: MultiTaskNet) -> bool:
    """Whether the model has shared layers (and so a representation that depends on them)."""
    return len(model.shared_parameters()) > 0


def predict(model: MultiTaskNet, x: Tensor) -> Outputs:
    """The model's outputs alone, for evaluation and figures."""
    return model(x)[0]


def stages_of(encoder: nn.Module, architecture: str) -> list[nn.Module]:
    """`encoder`'s stages (`Staged`), or a one-line ConfigError saying `architecture` needs them."""
    if not isinstance(encoder, Staged):
        raise ConfigError(
            f"architecture {architecture} is not allowed with the encoder "
            f"{type(encoder).__name__}: it needs a backbone that splits into stages (a "
            "`stages() -> list[nn.Module]` method, mtltrain.models.base.Staged)"
        )
    return list(encoder.stages())


def stage_channels(stages: Sequence[nn.Module]) -> list[int]:
    """The channels (features) each stage emits: those of its last layer that sets them (a
    convolution's out_channels, a linear layer's out_features, a norm's num_features); a stage
    with no such layer (a pooling, a flatten) keeps the channels of the stage before."""
    channels: list[int] = []
    for stage in stages:
        found = next(
            (
                getattr(module, name)
                for module in reversed(list(stage.modules()))
                for name in ("out_channels", "out_features", "num_features")
                if isinstance(getattr(module, name, None), int)
            ),
            channels[-1] if channels else None,
        )
        if found is None:
            raise ConfigError(
                f"the first stage {type(stage).__name__} has no layer that sets its channels (a "
                "convolution, linear layer or norm): a Staged backbone's first stage needs one"
            )
        channels.append(found)
    return channels


def independent_copies(backbone: nn.Module, n: int) -> list[nn.Module]:
    """`n` copies of a backbone (MoE experts, cross-stitch columns): the backbone as built, then
    n − 1 deep copies, each re-initialised on its own by every module's `reset_parameters()`,
    innermost first: PyTorch's initialisation of each layer, then a container's own scheme
    where it has one (SegNet's Xavier, the ResNet's Kaiming), as the backbone was built; a
    parameter no reset reaches would start identical in every copy: a one-line ConfigError."""
    copies = [backbone]
    for _ in range(n - 1):
        twin = copy.deepcopy(backbone)
        for module in reversed(list(twin.modules())):
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        for (name, new), old in zip(twin.named_parameters(), backbone.parameters(), strict=True):
            if torch.equal(new, old) and not _constant(old):
                raise ConfigError(
                    f"architecture: the backbone {type(backbone).__name__}'s parameter {name} "
                    "is not re-initialised by any layer's reset_parameters(), so every copy "
                    "of it would start with the same values; give that layer a "
                    "reset_parameters() or choose architecture=hps"
                )
        copies.append(twin)
    return copies


def _constant(values: Tensor) -> bool:
    """Whether every entry of `values` is the same (a bias of zeros, a norm's ones): such a
    tensor starts the same in every copy by design."""
    return bool((values == values.flatten()[0]).all()) if values.numel() > 0 else True
