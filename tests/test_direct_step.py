"""The direct fused Adam(W) step is the optimizer's own step, bit for bit."""

from __future__ import annotations

import inspect

import pytest
import torch

from mtltrain.loop._direct_step import direct_step


def stepped(kind, direct: bool, **settings) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    extra = [torch.randn(2, requires_grad=True)]
    opt = kind([{"params": params}, {"params": extra, "weight_decay": 0.0}], fused=True, **settings)
    step = direct_step(opt) if direct else opt.step
    assert (step != opt.step) == direct  # the direct kernel call, not a fallback to torch's
    for i in range(6):
        for p in [*params, *extra]:
            p.grad = torch.randn_like(p) * (10.0**i)
        if i == 3:  # a step with a parameter without a gradient: torch's own rules
            extra[0].grad = None
        if i == 2:  # a resume replaces the groups and the state: the kept calls are remade
            opt.load_state_dict(opt.state_dict())
        if i == 4:  # a scheduler's new rate for one group: the groups' calls are remade
            opt.param_groups[1]["lr"] *= 0.5
        step()
    return [*params, *extra], opt.state_dict()


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize(
    "settings",
    [{}, {"weight_decay": 0.1}, {"amsgrad": True}, {"maximize": True, "lr": 0.01}],
)
def test_direct_step_equals_the_optimizers_step(kind, settings: dict) -> None:
    ours, our_state = stepped(kind, True, **settings)
    theirs, their_state = stepped(kind, False, **settings)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert our_state["param_groups"] == their_state["param_groups"]
    for k, state in their_state["state"].items():
        for name, value in state.items():
            assert torch.equal(our_state["state"][k][name], value), name


@pytest.mark.skipif(
    "decoupled_weight_decay" not in inspect.signature(torch.optim.Adam).parameters,
    reason="torch's Adam takes decoupled_weight_decay from 2.6 on",
)
def test_adam_with_decoupled_weight_decay_steps_by_adamws_kernel() -> None:
    """Adam(decoupled_weight_decay=True) is AdamW: its own step calls AdamW's kernel, and so
    must the direct step (the kernel is a group's, not the optimizer class's)."""
    settings = {"decoupled_weight_decay": True, "weight_decay": 0.1}
    ours, our_state = stepped(torch.optim.Adam, True, **settings)
    theirs, their_state = stepped(torch.optim.Adam, False, **settings)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    for k, state in their_state["state"].items():
        for name, value in state.items():
            assert torch.equal(our_state["state"][k][name], value), name


def test_other_optimizers_keep_their_own_step() -> None:
    sgd = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    assert direct_step(sgd) == sgd.step
    unfused = torch.optim.Adam([torch.zeros(2, requires_grad=True)], foreach=True)
    assert direct_step(unfused) == unfused.step


def test_the_private_kernels_the_direct_step_calls_are_in_this_torch() -> None:
    """The direct step's one private dependency: a torch without it must fail here, by name."""
    missing = [
        k for k in ("_fused_adam_", "_fused_adamw_") if not callable(getattr(torch, k, None))
    ]
    assert missing == [], (
        f"torch {torch.__version__} has no torch.{', torch.'.join(missing)}: "
        "mtltrain/loop/_direct_step.py must call torch.optim.adam.adam(fused=True) instead"
    )
