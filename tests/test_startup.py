"""What a run's process loads and draws: a short eager run imports no compiler stack
(torch._dynamo, inductor, triton), no matplotlib and no torchvision, and draws figures only
on request; `mtltrain.lean_torch` keeps torch's results while it does so."""

import importlib
import json
import subprocess
import sys
import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.lean_torch import (
    backward,
    defer_dynamo_import,
    flop_counter,
    mse_loss,
    unwrapped_step,
)

NOT_LOADED = ("torch._dynamo", "torch._inductor", "triton", "matplotlib", "torchvision")
# a 1-epoch two-slope run, then the modules of NOT_LOADED that its process holds
RUN_THEN_MODULES = """
import json, sys
from mtltrain.cli import main
sys.argv = ["mtltrain", "trainer.epochs=1", "hydra.run.dir=run"]
try:
    main()
finally:
    print(json.dumps([m for m in {names} if m in sys.modules]))
"""


def test_a_short_run_loads_no_compiler_no_matplotlib_and_draws_no_figures(tmp_path):
    script = RUN_THEN_MODULES.format(names=list(NOT_LOADED))
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []
    run = tmp_path / "run"
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    assert not (run / "figures").exists()
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == [] and "loss/total" in events.Tags()["scalars"]


def fused_adam(seed: int) -> tuple[torch.optim.Adam, list[torch.nn.Parameter]]:
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(4))]
    for p in params:
        p.grad = torch.randn_like(p)
    return torch.optim.Adam(params, lr=0.1, fused=True), params


def test_the_unwrapped_step_is_torch_s_step_bit_for_bit():
    ours, mine = fused_adam(0)
    theirs, reference = fused_adam(0)
    for _ in range(2):
        unwrapped_step(ours)
        theirs.step()
    assert all(torch.equal(a, b) for a, b in zip(mine, reference, strict=True))
    assert torch.equal(ours.state[mine[0]]["exp_avg_sq"], theirs.state[reference[0]]["exp_avg_sq"])


def test_the_unwrapped_step_leaves_an_lr_scheduler_its_count():
    """A scheduler wraps the instance's step to see that it ran before its own step: that
    wrapper is kept, so the scheduler does not warn."""
    optimizer, _ = fused_adam(0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    unwrapped_step(optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_a_deferred_method_runs_as_it_is_until_dynamo_is_imported(monkeypatch):
    def double(x):
        return 2 * x

    marked = torch._disable_dynamo(double)
    defer_dynamo_import((marked,))
    defer_dynamo_import((marked,))  # idempotent
    deferred = double.__dynamo_disable
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "torch._dynamo", raising=False)
        assert marked(3) == 6
        assert "torch._dynamo" not in sys.modules and double.__dynamo_disable is deferred
    importlib.import_module("torch._dynamo")  # as torch.compile would

    assert marked(4) == 8
    assert double.__dynamo_disable is not deferred  # torch's own mark now


def test_the_flop_counter_counts_a_product():
    """2·m·n·k FLOPs for an m×k by k×n product."""
    counter = flop_counter()
    with counter:
        torch.randn(5, 3) @ torch.randn(3, 7)
    assert counter.get_total_flops() == 2 * 5 * 7 * 3


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_lean_mse_and_backward_are_torch_s_bit_for_bit(reduction):
    torch.manual_seed(0)
    prediction, target = torch.randn(12, 3, requires_grad=True), torch.randn(12, 3)
    theirs = torch.nn.functional.mse_loss(prediction, target, reduction=reduction)
    ours = mse_loss(prediction, target, reduction)
    assert torch.equal(ours, theirs)
    theirs.sum().backward()
    want, prediction.grad = prediction.grad, None
    backward(ours.sum())
    assert torch.equal(prediction.grad, want)
    with pytest.raises(ValueError, match="is not a valid value for reduction"):
        mse_loss(prediction, target, "max")


def test_the_lean_backward_inside_a_functorch_transform_is_refused_as_torch_refuses_it():
    """torch.autograd.backward's own line, not an engine error that names another cause."""
    weight = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="backward\\(\\) called inside a functorch transform"):
        torch.func.vmap(lambda x: backward((x * weight).sum()))(torch.randn(4, 3))
