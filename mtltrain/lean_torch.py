"""torch for an eager run without its compiler stack: torch._dynamo (1.7 s of CPU at import,
most of a short run's start beside `import torch` itself) and triton (0.1 s of CPU, more of
wall time: it loads its compiler library).

torch marks some methods as never traced by a compiler: the optimizer's `add_param_group`,
`zero_grad`, `state_dict` and `load_state_dict`, and `__torch_dispatch__` of the mode that
counts FLOPs. Each imports torch._dynamo at its first call to build that mark, and
`Optimizer.step` imports it for a graph break at every call. Until torch._dynamo is imported
nothing can be tracing, so those marks change nothing: `defer_dynamo_import` lets the methods
run as they are until then (once it is imported, by `torch.compile` or anything else, torch's
own mark is built at their next call), and `unwrapped_step` steps an optimizer by its own
method under `torch.no_grad`, without the wrappers. `flop_counter` imports torch's FLOP
counter without triton where triton is not loaded yet: triton is there to count the FLOPs of
user-written triton kernels, which an eager run has none of.

Two per-step calls without the Python torch wraps them in (on a small model that Python costs
more than the arithmetic): `backward` (the autograd engine, as `Tensor.backward()` calls it) and
`mse_loss` (the kernel, as `F.mse_loss` calls it). Each gives torch's own result bit for bit and
defers to torch's function where a tensor subclass or a mode overrides torch's functions.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.autograd.graph import _engine_run_backward
from torch.overrides import has_torch_function_unary, has_torch_function_variadic

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

# the attribute torch._disable_dynamo's wrapper caches its compiler-disabled function in
_CACHE = "__dynamo_disable"


def defer_dynamo_import(
    methods: tuple[Callable[..., Any], ...] | None = None,
) -> None:
    """`methods` (wrappers of `torch._disable_dynamo`; default: the optimizer's that a run
    calls) run as they are while torch._dynamo is not imported; idempotent."""
    optimizer = torch.optim.Optimizer
    default = (
        optimizer.add_param_group,
        optimizer.zero_grad,
        optimizer.state_dict,
        optimizer.load_state_dict,
    )
    for wrapper in default if methods is None else methods:
        _defer(wrapper)


def _defer(wrapper: Callable[..., Any]) -> None:
    fn = getattr(wrapper, "__wrapped__", None)
    if fn is None or getattr(fn, _CACHE, None) is not None:
        return  # another torch, or marked already

    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" in sys.modules:  # torch's own mark from now on
            vars(fn).pop(_CACHE, None)
            return wrapper(*args, **kwargs)
        return fn(*args, **kwargs)

    setattr(fn, _CACHE, call)


def unwrapped_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()` by its class's own method under `torch.no_grad`, without torch's
    wrappers (step hooks, a profiler label, the graph breaks that import torch._dynamo), for
    an optimizer whose groups are not `differentiable`; where its step is wrapped on the
    instance (an lr scheduler counts its calls), `optimizer.step()` itself."""
    if "step" in vars(optimizer) or any(g.get("differentiable") for g in optimizer.param_groups):
        optimizer.step()
        return
    with torch.no_grad():
        inspect.unwrap(type(optimizer).step)(optimizer)


def backward(total: torch.Tensor) -> None:
    """`total.backward()` of a 0-d `total`: the engine called directly, without
    `torch.autograd.backward`'s argument handling (two thirds of a small graph's backward
    call). Its 1 is made anew each call: a gradient may be handed on as that very tensor.
    Inside a functorch transform (vmap, grad) `total.backward()` itself, which refuses it."""
    if has_torch_function_unary(total) or torch._C._are_functorch_transforms_active():
        total.backward()
        return
    one = torch.ones_like(total, memory_format=torch.preserve_format)
    _engine_run_backward(
        (total,), (one,), False, False, (), allow_unreachable=True, accumulate_grad=True
    )


def mse_loss(prediction: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """`F.mse_loss(prediction, target, reduction=reduction)` ("mean", "sum" or "none"): where
    the shapes are equal (F.mse_loss broadcasts, and warns, where they are not), its kernel
    directly, without its Python checks (two thirds of its cost on a small batch)."""
    enum = _REDUCTIONS.get(reduction)
    if (
        enum is None  # F.mse_loss says why
        or prediction.shape != target.shape
        or has_torch_function_variadic(prediction, target)
    ):
        return F.mse_loss(prediction, target, reduction=reduction)
    return torch._C._nn.mse_loss(prediction, target, enum)


# torch's enum of reductions, as `torch.nn._reduction.get_enum` gives it
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def flop_counter() -> FlopCounterMode:
    """torch's `FlopCounterMode(display=False)`, its module imported without triton where
    triton is not loaded yet, its dispatch deferring torch._dynamo (`defer_dynamo_import`)."""
    if "torch.utils.flop_counter" not in sys.modules and "triton" not in sys.modules:
        with _absent("triton.runtime.jit"), _quiet("torch.utils.flop_counter"):
            importlib.import_module("torch.utils.flop_counter")
    from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

    defer_dynamo_import((_FlopCounterMode.__dict__["__torch_dispatch__"],))
    return FlopCounterMode(display=False)


@contextlib.contextmanager
def _absent(module: str) -> Iterator[None]:
    """`import <module>` raises ImportError within (None in sys.modules, as Python documents)."""
    sys.modules[module] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules[module]


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The logger's warnings dropped within ("triton not found" on a CUDA build of torch)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
