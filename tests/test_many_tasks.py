"""The engine at many tasks: each head's own view of the features gives, from one backward
pass, the Jacobian the passes one term at a time give (float64, at the parameters and at the
representation), and `weighting.every` reuses the weights between recomputations (the shared
layers get Σ w_k·∇L_k with the last weights, the heads their own gradients), resumes
bit-identically and refuses a bad value in one line."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import StopAt, make_config, run_cli, through_disk
from torch import nn

from mtltrain import create_strategy
from mtltrain.build import build_job
from mtltrain.errors import Interrupted
from mtltrain.loop._engine import TaskJacobian, engine_for, engine_over
from mtltrain.loop._trainer import train_alone
from mtltrain.models import MultiTaskModel
from mtltrain.tasks import TaskSpec

NAMES = ["a", "b", "c", "d"]


def tiny_model() -> MultiTaskModel:
    torch.manual_seed(0)
    tasks = [TaskSpec(n, "regression", 1, ("mse",)) for n in NAMES]
    encoder = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh())
    return MultiTaskModel(tasks, functools.partial(nn.Linear, 6), encoder).double()


def batch(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    return x, {n: torch.randn(7, 1, generator=gen, dtype=torch.float64) for n in NAMES}


def losses_of(model, x, y, direct: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    outputs, features = model(x)
    losses = torch.stack([((outputs[n] - y[n]) ** 2).mean() for n in NAMES])
    return (losses + direct * features.pow(2).mean() if direct else losses), features


def step(strategy, model, views: bool, x, y, direct: float = 0.0) -> list[torch.Tensor]:
    """Every parameter's gradient after the engine's pass (with the heads' views, or one pass
    per term), and the weights."""
    if views:
        engine = engine_for(strategy, model)
    else:
        model.split_features = False
        engine = engine_over(strategy, model.shared_parameters(), list(model.parameters()))
    for p in model.parameters():
        p.grad = None
    engine(*losses_of(model, x, y, direct))
    return [p.grad.clone() for p in model.parameters()] + [strategy.weights()]


def per_term_gradients(model, x, y) -> list[list[torch.Tensor]]:
    losses, _ = losses_of(model, x, y)
    params = list(model.parameters())
    return [list(torch.autograd.grad(loss, params, retain_graph=True)) for loss in losses]


@pytest.mark.parametrize("name", ["mgda", "upgrad", "cagrad"])
@pytest.mark.parametrize("representation", [False, True])
def test_the_heads_views_give_the_per_term_gradients(name, representation, monkeypatch):
    strategy = create_strategy(name, NAMES, representation=representation).double()
    model, x, y = tiny_model(), *batch(0)
    expected = step(copy.deepcopy(strategy), model, False, x, y)

    def refused(*args):
        raise AssertionError("the views were not used")

    with monkeypatch.context() as patch:
        patch.setattr(TaskJacobian, "jacobian_per_term", refused)
        got = step(strategy, model, True, x, y)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_losses_that_reach_the_features_directly_take_the_per_term_passes():
    strategy = create_strategy("mgda", NAMES).double()
    model, x, y = tiny_model(), *batch(1)
    expected = step(copy.deepcopy(strategy), model, False, x, y, direct=0.3)
    got = step(strategy, model, True, x, y, direct=0.3)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_every_reuses_the_weights_between_recomputations():
    """every=3: steps 0 and 3 solve MGDA (as every=1 does on the same model), steps 1, 2
    and 4 reuse the weights; the shared layers get Σ w_k·∇L_k, each head its own ∇L_k."""
    strategy = create_strategy("mgda", NAMES, every=3).double()
    model = tiny_model()
    engine = engine_for(strategy, model)
    shared = {id(p) for p in model.shared_parameters()}
    every_step = create_strategy("mgda", NAMES).double()
    last = None
    for number in range(5):
        x, y = batch(number)
        fresh = step(copy.deepcopy(every_step), copy.deepcopy(model), True, x, y)
        rows = per_term_gradients(model, x, y)
        for p in model.parameters():
            p.grad = None
        engine(*losses_of(model, x, y))
        weights = strategy.weights()
        if number % 3 == 0:
            torch.testing.assert_close(weights, fresh[-1], rtol=0, atol=0)
        else:
            torch.testing.assert_close(weights, last, rtol=0, atol=0)
        assert int(strategy.report()["weight_age"]) == number % 3
        for i, p in enumerate(model.parameters()):
            w = weights if id(p) in shared else torch.ones(len(NAMES), dtype=torch.float64)
            expected = sum(wk * row[i] for wk, row in zip(w, rows, strict=True))
            torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-14)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        last = weights


def test_every_recomputes_after_a_step_whose_weights_were_not_finite():
    """A recomputation that gives no finite weights (a skipped step) is taken again on the next
    step, which solves MGDA, instead of reusing for n − 1 steps weights no step computed."""
    strategy = create_strategy("mgda", NAMES, every=3).double()
    model = tiny_model()
    engine = engine_for(strategy, model)
    losses, features = losses_of(model, *batch(0))
    _, total = engine(losses * torch.tensor([1.0, torch.inf, 1.0, 1.0]).double(), features)
    assert total.isnan()
    x, y = batch(1)
    fresh = step(create_strategy("mgda", NAMES).double(), copy.deepcopy(model), True, x, y)
    engine(*losses_of(model, x, y))
    torch.testing.assert_close(strategy.weights(), fresh[-1], rtol=0, atol=0)
    assert int(strategy.report()["weight_age"]) == 0


def test_a_strategy_with_extra_batches_takes_the_steps_jacobian_from_the_views(monkeypatch):
    """SDMGrad's extra batches run through the same model before the step's batch, so the
    heads' views the engine reads are the step's: no pass per term for its Jacobian."""
    passes = []
    per_term = TaskJacobian.jacobian_per_term
    monkeypatch.setattr(
        TaskJacobian, "jacobian_per_term", lambda *a: passes.append(1) or per_term(*a)
    )
    job = build_job(make_config([*SMALL[:5], "trainer.epochs=1", "weighting=sdmgrad"]))
    train_alone(job)
    assert int(job.step) > 0 and passes == []


SMALL = [
    "dataset=two_slope",
    "model=sin_hetero",
    "dataset.n_train=64",
    "dataset.n_test=32",
    "trainer.batch_size=16",
    "trainer.epochs=3",
    "trainer.deterministic=true",
    "weighting=upgrad",
    "weighting.every=3",
]


def test_every_resumes_bit_identically():
    alone = build_job(make_config(SMALL))
    train_alone(alone)
    stopped = build_job(make_config(SMALL), extra_callbacks=[StopAt(5)])  # mid-cycle
    with pytest.raises(Interrupted):
        train_alone(stopped)
    resumed = build_job(make_config(SMALL))
    resumed.load_state_dict(through_disk(stopped.state_dict()))
    assert int(resumed.strategy.weight_age) == 5
    train_alone(resumed)
    for a, b in zip(alone.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert int(alone.strategy.weight_age) == int(resumed.strategy.weight_age) == 12


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["weighting=mgda", "weighting.every=0"], "weighting.every=0 is not allowed"),
        (["weighting=db_mtl", "weighting.every=2"], "weighting.every is not a setting"),
        (
            ["weighting=imtl", "weighting.variant=loss", "weighting.every=2"],
            "weighting.every=2 is not allowed for IMTL",
        ),
    ],
)
def test_a_bad_every_is_refused_in_one_line(overrides, says, tmp_path):
    done = run_cli([*overrides, "trainer.epochs=1", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and says in lines[0], done.stderr
