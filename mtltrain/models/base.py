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

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

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
    without one (a pooling, a flattening) emits those of the stage before it."""
    channels: list[int] = []
    for stage in stages:
        own = (
            getattr(module, name)
            for module in reversed(list(stage.modules()))
            for name in ("out_channels", "out_features", "num_features")
            if isinstance(getattr(module, name, None), int)
        )
        found = next(own, channels[-1] if channels else None)
        if found is None:
            raise ConfigError(
                f"the stage {type(stage).__name__} has no layer that sets its channels (a "
                "convolution, linear layer or norm): a Staged backbone's first stage needs one"
            )
        channels.append(found)
    return channels
