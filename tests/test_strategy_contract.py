"""The contract every weighting strategy keeps, checked for each config in conf/weighting/:
a new strategy gets these tests by adding its config.

On a small problem (three regression tasks on the shared tanh MLP of §5C), at every step:
the contributions sum to the total and are finite; the gradients the engine wrote equal a hand
computation from per-task gradients taken one task at a time (Σ_k w_k·∇L_k with the weights
the strategy reports; task heads unweighted under a gradient-based strategy); a loss-based
strategy's weights are the derivatives of its total at the step's losses (autograd checked
against finite differences in float64). And a run stopped mid-epoch, its state saved and
loaded into a fresh trainer, ends bit-identical to the run left alone.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from conftest import StopAt, make_config, through_disk
from hard_gradients import unresolved_cases
from omegaconf import OmegaConf

from mtltrain.build import build_job
from mtltrain.config._compose import config_dir
from mtltrain.errors import Interrupted
from mtltrain.loop._callbacks import Callback
from mtltrain.loop._engine import engine_for
from mtltrain.loop._trainer import train_alone
from mtltrain.losses import compute_losses

STRATEGIES = sorted(p.stem for p in (config_dir() / "weighting").glob("*.yaml"))
SMALL = [
    "dataset=two_slope",
    "model=sin_hetero",
    "+dataset.tasks.y3={slope:0.5,intercept:-1.0,noise_std:1.0}",
    "+dataset.losses.y3=[mse]",
    "dataset.n_train=64",
    "dataset.n_test=32",
    "trainer.batch_size=16",
    "trainer.epochs=4",
    "trainer.optimizer.lr=1e-2",
    "trainer.deterministic=true",
]


def small(strategy: str, *more: str):
    """The small problem's config under `strategy`, with `more` trainer settings (`key=value`)
    merged in: a fresh copy of `composed`'s."""
    return OmegaConf.merge(composed(strategy), OmegaConf.from_dotlist(list(more)))


@functools.cache
def composed(strategy: str):
    """`mtltrain <SMALL> weighting=<strategy>`'s config, composed and checked once per process
    (the compose costs more than a test's training)."""
    return make_config([*SMALL, f"weighting={strategy}"])


GRADIENT_BASED = [s for s in STRATEGIES if build_job(small(s)).strategy.level is not None]


class Probe(Callback):
    """Records, after each backward pass and before the update, the step and what the engine
    wrote: every parameter's gradient and the strategy's weights."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def allows_update(self, job, step) -> bool:
        grads = {id(p): p.grad.clone() for p in job.model.parameters()}
        strategy = job.strategy
        self.seen.append((step, grads, strategy.weights().clone(), self.hand(job, step)))
        if strategy.level is None:
            self.check_derivatives(strategy, step.losses.detach())
        return True

    @staticmethod
    def check_derivatives(strategy, losses) -> None:
        """A loss-based strategy's weights are the derivatives of its total at the step's
        losses (autograd, and autograd against finite differences, in float64)."""
        strategy_64 = copy.deepcopy(strategy).double()
        at = losses.double().requires_grad_()
        (derivatives,) = torch.autograd.grad(strategy_64.contributions(at).sum(), at)
        torch.testing.assert_close(derivatives, strategy.weights().double(), rtol=1e-5, atol=0)
        assert torch.autograd.gradcheck(lambda v: strategy_64.contributions(v).sum(), (at,))

    @staticmethod
    def hand(job, step) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """The step's losses again, and the gradient of every model parameter of each term's
        loss (of its contribution under a gradient-based strategy: what it aggregates), one
        backward pass per term, independent of the engine's batched pass."""
        outputs, _ = job.model(step.batch.inputs)
        losses = compute_losses(job.terms, outputs, step.batch.targets)
        strategy = job.strategy
        rows = losses if strategy.level is None else strategy.contributions(losses)
        params = list(job.model.parameters())
        per_term = [
            torch.autograd.grad(row, params, retain_graph=True, allow_unused=True) for row in rows
        ]
        return losses.detach(), per_term


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_step_keeps_the_contract(strategy):
    probe = Probe()
    job = build_job(small(strategy), extra_callbacks=[probe])
    job.epochs = 3  # DWA's weights move from the third epoch on
    train_alone(job)
    model, engine_level = job.model, job.strategy.level
    shared = {id(p) for p in model.shared_parameters()}
    # a direction that is not a weighted sum of this step's rows (masks, moving averages) is
    # checked by its strategy's own tests; here only that it is finite
    weighted = engine_level is None or job.strategy.weighted_rows
    for step, grads, weights, (losses, per_term) in probe.seen:
        torch.testing.assert_close(step.losses.detach(), losses, rtol=0, atol=0)
        assert torch.isfinite(step.parts).all() and torch.isfinite(step.total)
        torch.testing.assert_close(step.parts.sum(), step.total)
        for i, p in enumerate(model.parameters()):
            assert torch.isfinite(grads[id(p)]).all()
            rows = [g[i] if g[i] is not None else torch.zeros_like(p) for g in per_term]
            if id(p) in shared and not weighted:
                continue
            # a gradient-based strategy weighs the shared part only; heads get their own
            w = weights if engine_level is None or id(p) in shared else torch.ones_like(weights)
            expected = sum(wk * row for wk, row in zip(w, rows, strict=True))
            torch.testing.assert_close(grads[id(p)], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_skipped_steps_leave_the_strategy_and_model_finite(strategy, monkeypatch):
    """Under trainer.nonfinite=skip, batches with NaN targets are skipped (their loss, weights
    or gradients are NaN) and leave nothing non-finite behind: the run trains on."""
    from mtltrain.data import two_slope

    build = two_slope.build

    def poisoned(**kwargs):
        data = build(**kwargs)
        data.train.targets["y1"][:2] = torch.nan  # some batch of every epoch
        return data

    monkeypatch.setattr(two_slope, "build", poisoned)
    job = build_job(small(strategy, "trainer.nonfinite=skip", "trainer.max_skipped=1"))
    train_alone(job)
    assert 4 <= job.skipped_steps <= 8 and job.step == 16
    assert all(torch.isfinite(p).all() for p in job.model.parameters())
    for quantity, value in job.strategy.report().items():
        assert torch.isfinite(value).all(), quantity
    assert all(math.isfinite(v) for v in job.test_metrics.values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_resumed_run_continues_bit_identically(strategy):
    alone = build_job(small(strategy))
    train_alone(alone)
    stopped = build_job(small(strategy), extra_callbacks=[StopAt(10)])  # mid epoch 3
    with pytest.raises(Interrupted):
        train_alone(stopped)
    resumed = build_job(small(strategy))
    resumed.load_state_dict(through_disk(stopped.state_dict()))
    assert resumed.step == 10
    train_alone(resumed)
    for a, b in zip(alone.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    state, again = alone.strategy.state_dict(), resumed.strategy.state_dict()
    assert list(state) == list(again)
    for name, value in state.items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=0, equal_nan=True, msg=name)
    assert alone.test_metrics == resumed.test_metrics


@pytest.mark.parametrize("strategy", GRADIENT_BASED)
def test_an_infinite_gradient_of_finite_losses_gives_a_nan_total(strategy):
    """A loss of 0 whose gradient is infinite (√ at 0): the engine's total says so."""
    job = build_job(small(strategy))
    batch = next(job.train_split.batches(16))
    _, features = job.forward(batch.inputs)
    corner = features[0, 0]
    losses = torch.stack(
        [torch.sqrt(corner - corner.detach()), features.pow(2).mean(), features.abs().mean()]
    )
    parts, total = engine_for(job.strategy, job.model)(losses, features)
    assert total.isnan() and parts.shape == (3,)


@pytest.mark.parametrize("strategy", GRADIENT_BASED)
def test_gradients_a_gramian_cannot_resolve_give_a_finite_direction(strategy):
    """Opposite up to 1e-9, a row of 1e-12 beside rows of 1, every row zero: no crash, a
    finite direction, and none at all from zero gradients (on a fresh strategy: DB-MTL
    remembers earlier ones)."""
    for case, g in unresolved_cases():
        if len(g) != 3:
            continue
        aggregator = build_job(small(strategy)).strategy
        direction, weights = aggregator.aggregate(torch.from_numpy(g).float(), torch.ones(3))
        assert torch.isfinite(direction).all() and torch.isfinite(weights).all(), case
        if not g.any():
            assert not direction.any(), case


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_select_best_ends_in_the_selected_state(strategy):
    """trainer.select=best keeps the model and strategy states of the best evaluation (extra
    state too: generators, histories) and ends training in them."""
    cfg = small(strategy, "trainer.validation=16", "trainer.select=best", "trainer.eval_every=1")
    job = build_job(cfg)
    train_alone(job)
    chosen = job.selection.chosen
    model, weighting = chosen["states"]
    for name, value in job.model.state_dict().items():
        assert torch.equal(value.cpu(), model[name]), name
    assert list(job.strategy.state_dict()) == list(weighting)
