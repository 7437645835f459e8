"""Fully connected networks: encoders and heads, and one separate network per task."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from mtltrain.constraints import DropoutRate, Width, one_of
from mtltrain.losses import MeanLogVar
from mtltrain.models.base import Outputs
from mtltrain.tasks import TaskSpec

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
Activation = Annotated[str, one_of(ACTIVATIONS)]


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r}: choose one of {list(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """in_features → hidden… → out_features, with `activation` after every hidden layer.

    `activate_output` also puts it after the last layer (for an encoder whose output is a
    representation); `flatten` first flattens all but the batch dimension (for heads on maps);
    `dropout` > 0 puts nn.Dropout after every hidden layer's activation.
    """

    def __init__(
        self,
        in_features: Width,
        out_features: Width,
        hidden: Sequence[Width] = (),
        activation: Activation = "relu",
        activate_output: bool = False,
        flatten: bool = False,
        dropout: DropoutRate = 0.0,
    ) -> None:
        make_activation(activation)  # a bad name fails here, before any layer is built
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = [nn.Flatten()] if flatten else []
        for i, (a, b) in enumerate(pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2 or activate_output:
                layers.append(make_activation(activation))
            if i < len(sizes) - 2 and dropout > 0:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class SeparateMLPs(nn.Module):
    """One MLP per task, in_features → hidden… → the task's outputs, with no shared layers.

    The tasks' networks have their own parameters but the same layer sizes, so their weights
    are stacked and every layer of every network runs as one batched matrix product
    (torch.baddbmm): the same function as separate nn.Linear stacks, at a fraction of the
    per-layer overhead that dominates small networks. Each layer is initialised like
    nn.Linear. A task with fewer outputs than the widest uses the first of them. Nothing is
    shared: the features are the input, and each task's parameters are its slice of the
    stacked tensors (`task_parameters` names the tensors; a task's gradient touches its slice).
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        in_features: Width,
        hidden: Sequence[Width] = (),
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        self.activation = make_activation(activation)
        self.tasks = tuple(tasks)
        self.widths = [t.out_features * (2 if t.heteroscedastic else 1) for t in tasks]
        sizes = [in_features, *hidden, max(self.widths)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in pairwise(sizes):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter(_uniform((len(tasks), fan_in, fan_out), bound)))
            self.biases.append(nn.Parameter(_uniform((len(tasks), 1, fan_out), bound)))

    def forward(self, x: Tensor) -> tuple[Outputs, Tensor]:
        h = x.flatten(1).expand(len(self.tasks), -1, -1)
        h = self.layers(h, _listed(self.weights), _listed(self.biases), torch.baddbmm)
        return self.outputs(h), x

    def forward_stacked(self, state: Mapping[str, Tensor], x: Tensor) -> tuple[Outputs, Tensor]:
        """N copies at once (`mtltrain.loop._stacked`): `state` holds each tensor stacked over the
        copies, x is [N, batch, …]: the copies' tasks' networks run as one batched product."""
        n, k = x.shape[0], len(self.tasks)
        h = x.flatten(2).unsqueeze(1).expand(-1, k, -1, -1).flatten(0, 1)
        weights = [state[f"weights.{i}"].flatten(0, 1) for i in range(len(self.weights))]
        biases = [state[f"biases.{i}"].flatten(0, 1) for i in range(len(self.biases))]
        h = self.layers(h, weights, biases, BatchedAffine.apply)
        return self.outputs(h.unflatten(0, (n, k)).transpose(0, 1)), x

    def layers(
        self,
        h: Tensor,
        weights: Sequence[Tensor],
        biases: Sequence[Tensor],
        product: Callable[[Tensor, Tensor, Tensor], Tensor],
    ) -> Tensor:
        """[networks, batch, in] through the stacked layers, each `product(bias, h, weight)`
        (an activation that may run in place, on the product it follows: one pass over memory
        fewer)."""
        last = len(weights) - 1
        in_place = IN_PLACE.get(type(self.activation))
        for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            h = product(bias, h, weight)
            if i < last:
                h = self.activation(h) if in_place is None else in_place(h)
        return h

    def outputs(self, h: Tensor) -> Outputs:
        """Each task's outputs from its network's row of `h` ([tasks, …, widest])."""
        outputs: Outputs = {}
        widest = h.shape[-1]
        for task, width, rows in zip(self.tasks, self.widths, h.unbind(0), strict=True):
            out = rows if width == widest else rows[..., :width]
            outputs[task.name] = MeanLogVar.split(out, dim=-1) if task.heteroscedastic else out
        return outputs

    def shared_parameters(self) -> list[nn.Parameter]:
        """None: every parameter belongs to one task's network."""
        return []

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [*self.weights, *self.biases]


# activations whose backward reads their result only, so they may overwrite their input: the
# product before them (BatchedAffine) keeps no copy of its result
IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_}


class BatchedAffine(torch.autograd.Function):
    """torch.baddbmm(bias, h, weight), with torch's own backward except for a layer of one
    output ([…, in, 1] weights, the §5A networks' last layer): there its two products are
    matrix-vector ones, which oneMKL runs an order of magnitude slower as batched products
    than their transposes. The same numbers are computed otherwise: h's gradient, a product
    over one term, is the elementwise product grad × weightᵀ, and the weight's, hᵀ·grad, is
    taken as (gradᵀ·h)ᵀ (the same sums over the batch, bit-identical on this machine's oneMKL:
    tests/test_models.py checks both against torch's). The stacked forward uses it; a job
    alone keeps torch.baddbmm: at one job's small products this Function's Python costs more
    than its backward saves."""

    generate_vmap_rule = True

    @staticmethod
    def forward(bias: Tensor, h: Tensor, weight: Tensor) -> Tensor:
        return torch.baddbmm(bias, h, weight)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
        bias, h, weight = inputs
        # in the product's dtype: under autocast (trainer.precision=bf16) baddbmm multiplies
        # bf16 copies, as its own backward does (autograd casts the gradients back)
        ctx.save_for_backward(h.to(output.dtype), weight.to(output.dtype))
        ctx.bias_shape = bias.shape

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        needs_bias, needs_h, needs_weight = ctx.needs_input_grad
        one_output = weight.shape[-1] == 1
        grad_bias = grad.sum_to_size(ctx.bias_shape) if needs_bias else None
        grad_h = grad_weight = None
        if needs_h:
            grad_h = grad * weight.mT if one_output else grad.bmm(weight.mT)
        if needs_weight:
            grad_weight = grad.mT.bmm(h).mT if one_output else h.mT.bmm(grad)
        return grad_bias, grad_h, grad_weight


def _listed(params: nn.ParameterList) -> list[Tensor]:
    """The list's parameters in order, read from its registry (iterating a ParameterList goes
    through its __getitem__ and __getattr__ per item: 12 µs of a §5A step of ~300)."""
    return [*params._parameters.values()]


def _uniform(shape: tuple[int, ...], bound: float) -> Tensor:
    return torch.empty(shape).uniform_(-bound, bound)
