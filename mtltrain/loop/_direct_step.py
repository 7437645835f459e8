"""A fused Adam or AdamW step without `torch.optim`'s Python around its kernel.

`Optimizer.step()` of a fused Adam spends most of a small model's step outside the kernel
(hooks, grouping by device and dtype, per-group checks). `direct_step(optimizer)` gives a step
that calls the same kernel on the optimizer's own state tensors, one call per set of groups
with equal settings (`by_settings`), so the update and the state are bit for bit the
optimizer's own and its `state_dict()` stays the checkpoint's; it falls back to
`optimizer.step()` for any step it does not cover (a parameter without a gradient, an
optimizer not yet stepped once, another optimizer). The calls, with their lists of state
tensors, are made once and kept while the optimizer's groups, their settings and its state
are those they were made from (`_Plan`).

Besides `mtltrain.lean_torch`, this is the one module that calls torch's private API: the
kernels `torch._fused_adam_` and `torch._fused_adamw_` (KERNELS). torch's public functional
Adam (`torch.optim.adam.adam`, `fused=True`) calls the same kernel but groups the tensors by
device and dtype on every call, which costs the §5A step most of what the direct call saves
(`scripts/bench_step.py`).
`tests/test_direct_step.py` fails by name on a torch without these kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from mtltrain.lean_torch import unwrapped_step

# the fused kernel of each optimizer kind this covers
KERNELS: dict[type, Callable[..., None]] = {
    torch.optim.Adam: torch._fused_adam_,
    torch.optim.AdamW: torch._fused_adamw_,
}


def direct_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """`optimizer.step`, by its fused kernel directly where it is a fused Adam(W) (see the
    module); for any other optimizer `optimizer.step` itself."""
    kernel = KERNELS.get(type(optimizer))
    groups = optimizer.param_groups
    covered = kernel is not None and all(
        g.get("fused") and not g.get("capturable") and not g.get("differentiable")
        and not isinstance(g["lr"], Tensor)
        for g in groups
    )  # fmt: skip
    if not covered:
        return optimizer.step
    return _DirectStep(optimizer, kernel)


class _DirectStep:
    def __init__(self, optimizer: torch.optim.Optimizer, kernel: Callable[..., None]) -> None:
        self.optimizer, self.kernel = optimizer, kernel
        self.plan: _Plan | None = None

    def __call__(self) -> None:
        opt = self.optimizer
        plan = self.plan
        if plan is None or not plan.fits(opt):
            plan = self.plan = _Plan.of(opt, self.kernel)
        grads = [] if plan is None else [p.grad for p in plan.params]
        if plan is None or any(g is None for g in grads):
            unwrapped_step(opt)  # the first step makes the state; a missing gradient: torch's rules
            return
        first = 0
        for call in plan.calls:
            call.count()
            end = first + len(call.params)
            call.kernel(call.params, grads[first:end], *call.state, **call.settings)
            first = end


class _Call:
    """One kernel call: the parameters of groups with equal settings (`by_settings`), their
    state tensors, the kernel (`_kernel`) and its settings; `count` adds 1 to their steps (on
    the CPU one add each, 3× faster than torch's `_foreach_add_` there; elsewhere that one
    call)."""

    def __init__(
        self,
        state: dict[Tensor, Any],
        group: dict[str, Any],
        params: list[Tensor],
        kind: Callable[..., None],
    ) -> None:
        held = [state[p] for p in params]
        self.params, self.kernel = params, _kernel(kind, group)
        self.steps = [s["step"] for s in held]
        max_sq = [s["max_exp_avg_sq"] for s in held] if group["amsgrad"] else []
        exp_avg, exp_avg_sq = [s["exp_avg"] for s in held], [s["exp_avg_sq"] for s in held]
        self.state = (exp_avg, exp_avg_sq, max_sq, self.steps)
        beta1, beta2 = group["betas"]
        self.settings = {
            "amsgrad": group["amsgrad"],
            "lr": group["lr"],
            "beta1": beta1,
            "beta2": beta2,
            "weight_decay": group["weight_decay"],
            "eps": group["eps"],
            "maximize": group["maximize"],
            "grad_scale": None,
            "found_inf": None,
        }
        on_cpu = all(t.device.type == "cpu" for t in self.steps)
        self.one = torch.ones((), dtype=self.steps[0].dtype) if on_cpu and self.steps else None

    def count(self) -> None:
        if self.one is None:
            torch._foreach_add_(self.steps, 1)
            return
        for step in self.steps:
            step.add_(self.one)


def _kernel(kind: Callable[..., None], group: dict[str, Any]) -> Callable[..., None]:
    """A group's kernel: torch's Adam with `decoupled_weight_decay` (torch >= 2.6) decays as
    AdamW, by AdamW's kernel, as its own step chooses; else the optimizer kind's (KERNELS)."""
    decoupled = group.get("decoupled_weight_decay")
    if decoupled is None:
        return kind
    return torch._fused_adamw_ if decoupled else torch._fused_adam_


class _Plan:
    """The kernel calls of an optimizer whose every parameter has its state, made once and
    kept while its groups, their settings and its state dict are the ones it was made from (a
    resumed optimizer's load_state_dict replaces its groups and state; a scheduler changes a
    group's settings)."""

    def __init__(self, opt: torch.optim.Optimizer, kind: Callable[..., None]) -> None:
        self.groups, self.state = opt.param_groups, opt.state
        self.settings = _settings(opt)
        self.calls = [
            _Call(opt.state, g, params, kind) for g, params in by_settings(opt.param_groups)
        ]
        self.params = [p for call in self.calls for p in call.params]

    @classmethod
    def of(cls, opt: torch.optim.Optimizer, kind: Callable[..., None]) -> _Plan | None:
        """The plan (`kind`: the optimizer kind's kernel), or None while some parameter has no
        state yet."""
        if any(p not in opt.state for g in opt.param_groups for p in g["params"]):
            return None
        return cls(opt, kind)

    def fits(self, opt: torch.optim.Optimizer) -> bool:
        return (
            opt.param_groups is self.groups
            and opt.state is self.state
            and self.settings is not None
            and _entries(opt) == self.settings
        )


def _entries(opt: torch.optim.Optimizer) -> list[list[Any]]:
    """Each group's entries: its parameter list (whose items are not changed in place) and
    its settings."""
    return [[*g.values()] for g in opt.param_groups]


def _settings(opt: torch.optim.Optimizer) -> list[list[Any]] | None:
    """`_entries`, to compare with those a plan was made from; None where a setting is a
    tensor, which may change in place (then the plan is made anew each step)."""
    entries = _entries(opt)
    if any(isinstance(v, Tensor) for group in entries for v in group):
        return None
    return entries


def settings_of(group: dict[str, Any]) -> dict[str, Any]:
    """A parameter group's settings: everything but its parameters."""
    return {k: v for k, v in group.items() if k != "params"}


def equal_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two groups' settings are equal; a tensor setting never is (it may change)."""
    return a.keys() == b.keys() and all(
        not isinstance(v, Tensor) and not isinstance(b[k], Tensor) and b[k] == v
        for k, v in a.items()
    )


def by_settings(groups: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], list[Tensor]]]:
    """The parameters of groups with equal settings together (one kernel call each)."""
    merged: list[tuple[dict[str, Any], list[Tensor]]] = []
    for group in groups:
        settings = settings_of(group)
        same = next((params for s, params in merged if equal_settings(s, settings)), None)
        if same is None:
            merged.append((settings, list(group["params"])))
        else:
            same.extend(group["params"])
    return merged
