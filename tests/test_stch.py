"""Smooth Tchebycheff scalarization: its forms by hand, its weights as the total's derivatives,
the max it tends to as μ → 0, the nadir's scale invariance, and the warm-up in a real run."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import StopAt, make_config, through_disk

from mtltrain.build import build_job
from mtltrain.data.base import Split
from mtltrain.errors import ConfigError, Interrupted
from mtltrain.loop._callbacks import Callback
from mtltrain.loop._trainer import train_alone
from mtltrain.losses import LossTerm, gaussian_nll, mse
from mtltrain.step import Step
from mtltrain.weighting.stch import SmoothTchebycheff

TERMS = tuple(LossTerm(n, n, "mse", "regression", False, mse) for n in ("a", "b"))
NLL = LossTerm("y", "y", "gaussian_nll", "regression", True, gaussian_nll)


def observed(strategy: SmoothTchebycheff, losses: list[float]) -> SmoothTchebycheff:
    strategy.observe(Step(1, 0, Split(torch.zeros(1), {}), {}, torch.tensor(losses)))
    return strategy


def after_warmup(nadir: list[float], **settings) -> SmoothTchebycheff:
    strategy = SmoothTchebycheff(TERMS, warmup_epochs=1, **settings)
    strategy.on_epoch_end(0, torch.tensor(nadir))
    return strategy


def finite_differences(strategy: SmoothTchebycheff, losses: list[float]) -> torch.Tensor:
    """d total / d L_k by central differences in float64, independent of autograd."""
    copy = SmoothTchebycheff(TERMS, **strategy_settings(strategy)).double()
    copy.load_state_dict(strategy.state_dict())
    at, h = torch.tensor(losses, dtype=torch.float64), 1e-6
    steps = torch.eye(len(losses), dtype=torch.float64) * h
    total = lambda v: float(copy.contributions(v).sum())  # noqa: E731
    return torch.tensor(
        [(total(at + e) - total(at - e)) / (2 * h) for e in steps], dtype=torch.float64
    )


def strategy_settings(s: SmoothTchebycheff) -> dict:
    return {"mu": s.mu, "form": s.form, "warmup_epochs": s.warmup_epochs}


def test_the_warm_up_is_the_sum_of_log_losses():
    strategy = observed(SmoothTchebycheff(TERMS, warmup_epochs=2), [2.0, 4.0])
    parts = strategy.contributions(torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(parts, torch.tensor([math.log(2.0), math.log(4.0)]))
    torch.testing.assert_close(strategy.weights(), torch.tensor([0.5, 0.25]))


def test_the_nadir_is_the_last_warm_up_epochs_mean_losses():
    strategy = SmoothTchebycheff(TERMS, warmup_epochs=2)
    strategy.on_epoch_end(0, torch.tensor([3.0, 5.0]))
    assert strategy.nadir.tolist() == [0.0, 0.0]  # the first of two warm-up epochs: not yet
    strategy.on_epoch_end(1, torch.tensor([0.0, 5.0]))  # a zero mean loss: no nadir, warm on
    assert strategy.nadir.tolist() == [0.0, 0.0]
    strategy.on_epoch_end(2, torch.tensor([2.0, 0.5]))
    assert strategy.nadir.tolist() == [2.0, 0.5]
    strategy.on_epoch_end(3, torch.tensor([9.0, 9.0]))  # set once
    assert strategy.nadir.tolist() == [2.0, 0.5]


def test_the_normalised_form_by_hand():
    # f = log(L/n) = [log ½, log 2]; p = softmax(f) = [½, 2]/2.5 = [0.2, 0.8]
    # total = K·μ·log(½ + 2) = 2·log 2.5; w_k = K·p_k/L_k = [0.4, 1.6]
    strategy = observed(after_warmup([2.0, 0.5]), [1.0, 1.0])
    parts = strategy.contributions(torch.tensor([1.0, 1.0]))
    assert parts.sum().item() == pytest.approx(2 * math.log(2.5), rel=1e-6)
    torch.testing.assert_close(parts, 2 * math.log(2.5) * torch.tensor([0.2, 0.8]))
    torch.testing.assert_close(strategy.weights(), torch.tensor([0.4, 1.6]))
    assert strategy.report()["nadir"].tolist() == [2.0, 0.5]


def test_the_plain_form_by_hand():
    # λ(L − z)/μ = [1·(1 − 0), 2·(1.5 − 1)]/0.5 = [2, 2]: p = [½, ½]
    # total = μ·log(2e²) = 0.5·(2 + log 2); w = λ·p = [0.5, 1.0]
    strategy = SmoothTchebycheff(TERMS, mu=0.5, form="plain", preference=[1.0, 2.0], ideal=[0, 1])
    observed(strategy, [1.0, 1.5])
    total = strategy.contributions(torch.tensor([1.0, 1.5])).sum().item()
    assert total == pytest.approx(0.5 * (2 + math.log(2)), rel=1e-6)
    torch.testing.assert_close(strategy.weights(), torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize(
    "strategy",
    [
        after_warmup([2.0, 0.5], mu=0.3),
        SmoothTchebycheff(TERMS, mu=0.7, form="plain", preference=[1.0, 3.0]),
        SmoothTchebycheff(TERMS, warmup_epochs=3),
    ],
    ids=["normalised", "plain", "warm-up"],
)
def test_weights_are_the_derivatives_of_the_total(strategy):
    losses = [0.7, 1.9]
    observed(strategy, losses)
    torch.testing.assert_close(
        strategy.weights().double(), finite_differences(strategy, losses), rtol=1e-5, atol=0
    )


def test_as_mu_goes_to_zero_the_total_is_the_max():
    # the smooth max lies in [max, max + μ·log K]: normalised, K·max_k log(L_k/n_k)
    losses, nadir = torch.tensor([3.0, 1.0]), [2.0, 0.5]  # log(L/n) = [log 1.5, log 2]
    hard = 2 * math.log(2.0)
    for mu in (1.0, 0.1, 0.01):
        total = after_warmup(nadir, mu=mu).contributions(losses).sum().item()
        assert hard - 1e-6 <= total <= hard + 2 * mu * math.log(2) + 1e-6
    cold = observed(after_warmup(nadir, mu=1e-3), [3.0, 1.0]).weights()
    torch.testing.assert_close(cold, torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)  # the worst


def test_scaling_a_loss_and_its_nadir_leaves_the_weighted_gradient_unchanged():
    """A task measured in other units (L → c·L, warm-up means → c·n, ∇L → c·∇L): the total
    is the same, and its weight is 1/c, so w·∇L is too."""
    plain = observed(after_warmup([2.0, 0.5]), [1.5, 0.8])
    scaled = observed(after_warmup([2.0 * 1000, 0.5]), [1.5 * 1000, 0.8])
    total = lambda s, v: s.contributions(torch.tensor(v)).sum().item()  # noqa: E731
    assert total(scaled, [1500.0, 0.8]) == pytest.approx(total(plain, [1.5, 0.8]), rel=1e-6)
    torch.testing.assert_close(scaled.weights() * torch.tensor([1000.0, 1.0]), plain.weights())


def test_settings_out_of_range_are_refused_with_one_line():
    with pytest.raises(ConfigError, match=r"weighting.mu=0 is not allowed"):
        SmoothTchebycheff(TERMS, mu=0)
    with pytest.raises(ConfigError, match=r"weighting.warmup_epochs=0 is not allowed"):
        SmoothTchebycheff(TERMS, warmup_epochs=0)
    with pytest.raises(ConfigError, match=r"weighting.ideal=\[1, 0\] is not allowed"):
        SmoothTchebycheff(TERMS, ideal=[1, 0])
    with pytest.raises(ConfigError, match=r"term y \(gaussian_nll\) can be negative"):
        SmoothTchebycheff((NLL,))
    SmoothTchebycheff((NLL,), form="plain")  # raw losses: any sign


def test_a_run_that_ends_within_its_warm_up_is_warned_once(caplog):
    """epochs ≤ warmup_epochs: the normalised total is never trained on (allowed: a short trial
    run), and one warning line says so; one epoch more, or the plain form, is not warned of."""
    with caplog.at_level("WARNING", logger="mtltrain.build"):
        build_job(make_config(["weighting=stch", "weighting.warmup_epochs=2", "trainer.epochs=2"]))
    (warned,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warned.getMessage().startswith(
        "trainer.epochs=2 ≤ weighting.warmup_epochs=2: the run never leaves STCH's warm-up"
    )
    assert "\n" not in warned.getMessage()
    assert SmoothTchebycheff(TERMS, warmup_epochs=2).run_warnings(3) == []
    assert SmoothTchebycheff(TERMS, form="plain", warmup_epochs=2).run_warnings(1) == []


class EpochLosses(Callback):
    """Each epoch's term losses, and the strategy's nadir at each step."""

    def __init__(self) -> None:
        self.losses: dict[int, list[torch.Tensor]] = {}
        self.nadirs: dict[int, torch.Tensor] = {}

    def on_step_end(self, job, step) -> None:
        self.losses.setdefault(step.epoch, []).append(step.losses.detach())
        self.nadirs[step.epoch] = job.strategy.nadir.clone()


def test_a_run_normalises_by_its_first_epochs_mean_losses_and_resumes_bit_identically():
    seen = EpochLosses()
    small = ["weighting=stch", "weighting.warmup_epochs=1", "dataset.n_train=64",
             "trainer.batch_size=16", "trainer.epochs=3", "trainer.deterministic=true"]  # fmt: skip
    alone = build_job(make_config(small), extra_callbacks=[seen])
    train_alone(alone)
    assert seen.nadirs[0].tolist() == [0.0, 0.0]  # the warm-up epoch
    torch.testing.assert_close(seen.nadirs[1], torch.stack(seen.losses[0]).mean(0))
    stopped = build_job(make_config(small), extra_callbacks=[StopAt(6)])  # mid epoch 2
    with pytest.raises(Interrupted):
        train_alone(stopped)
    assert stopped.strategy.nadir.gt(0).all()
    resumed = build_job(make_config(small))
    resumed.load_state_dict(through_disk(stopped.state_dict()))
    train_alone(resumed)
    for a, b in zip(alone.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(alone.strategy.nadir, resumed.strategy.nadir)
