"""CR-MOGM: with α = 0 it is its inner strategy step for step; with α > 0 its weights are the
moving average of the inner strategy's (against a float64 average of an independent inner
strategy's weights on the hard cases, and two steps by hand); the inner strategy is chosen and
set by config, one that cannot be wrapped is refused in one line before the run folder is made,
and the inner strategy's state is saved and resumed with the wrapper's."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import make_config, mse_terms, run_cli, through_disk
from hard_gradients import assert_same_point, hard_cases

from mtltrain.build import build_job
from mtltrain.errors import ConfigError
from mtltrain.loop._trainer import train_alone
from mtltrain.own_loop import create_strategy
from mtltrain.weighting.cagrad import CAGrad
from mtltrain.weighting.cr_mogm import CRMOGM
from mtltrain.weighting.graddrop import GradDrop
from mtltrain.weighting.mgda import MGDA
from mtltrain.weighting.nash_mtl import NashMTL
from mtltrain.weighting.pcgrad import PCGrad
from mtltrain.weighting.upgrad import UPGrad

CASES = hard_cases()
IDS = [name for name, _ in CASES]
INNERS = {
    "cagrad": CAGrad,
    "nash_mtl": NashMTL,
    "pcgrad": functools.partial(PCGrad, seed=3),
    "upgrad": UPGrad,
}
SMALL = [
    "dataset=two_slope",
    "model=sin_hetero",
    "dataset.n_train=32",
    "dataset.n_test=16",
    "trainer.batch_size=16",
    "trainer.epochs=1",
    "weighting=cr_mogm",
]


def steps_of(g: np.ndarray) -> list[torch.Tensor]:
    rng = np.random.default_rng(len(g))
    return [
        torch.from_numpy(s) for s in (g, 0.5 * g + 0.3 * rng.normal(size=g.shape), g[::-1].copy())
    ]


def checked_steps(inner, g: np.ndarray) -> None:
    """On the steps of `g`: α = 0 gives the inner strategy's directions and weights exactly;
    α = 0.7 the float64 moving average of the weights of an independent inner strategy."""
    losses = torch.arange(1.0, len(g) + 1).double()
    alone = inner(mse_terms(len(g))).double()
    zero = CRMOGM(mse_terms(len(g)), inner, alpha=0.0).double()
    averaged = CRMOGM(mse_terms(len(g)), inner, alpha=0.7).double()
    average = None
    for rows in steps_of(g):
        d, w = alone.aggregate(rows, losses)
        d_zero, w_zero = zero.aggregate(rows, losses)
        assert torch.equal(d_zero, d) and torch.equal(w_zero, w)
        w = w.numpy()
        average = w if average is None else 0.7 * average + 0.3 * w
        d_avg, w_avg = averaged.aggregate(rows, losses)
        np.testing.assert_allclose(w_avg.numpy(), average, rtol=1e-12, atol=1e-15)
        assert_same_point(d_avg.numpy(), average @ rows.numpy(), g)
        np.testing.assert_array_equal(averaged.report()["inner_weight"].numpy(), w)


@pytest.mark.parametrize(("case", "g"), CASES, ids=IDS)
def test_with_alpha_0_it_is_mgda_and_else_the_average_of_its_weights(case, g):
    checked_steps(MGDA, g)


@pytest.mark.parametrize("inner", INNERS, ids=list(INNERS))
def test_so_it_is_with_other_inner_strategies(inner):
    for case in ("K=3 random", "K=4 conflicting"):
        checked_steps(INNERS[inner], dict(CASES)[case])


def test_two_steps_by_hand():
    """MGDA on g = (1, 0), (0, 2) weighs them (0.8, 0.2) (α ∝ 1/‖g‖²), then on (2, 0), (0, 1)
    (0.2, 0.8); with α = 0.5 the average is (0.8, 0.2), then (0.5, 0.5): d = (1, 0.5)."""
    strategy = CRMOGM(mse_terms(2), MGDA, alpha=0.5).double()
    d, w = strategy.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).double(), torch.ones(2))
    torch.testing.assert_close(w, torch.tensor([0.8, 0.2]).double())
    torch.testing.assert_close(d, torch.tensor([0.8, 0.4]).double())
    d, w = strategy.aggregate(torch.tensor([[2.0, 0.0], [0.0, 1.0]]).double(), torch.ones(2))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5]).double())
    torch.testing.assert_close(d, torch.tensor([1.0, 0.5]).double())


def test_a_skipped_step_leaves_the_average_alone():
    strategy = CRMOGM(mse_terms(2), MGDA, alpha=0.5).double()
    strategy.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).double(), torch.ones(2))
    d, w = strategy.aggregate(torch.full((2, 2), torch.nan).double(), torch.ones(2))
    assert d.isnan().all() and w.isnan().all()
    torch.testing.assert_close(strategy.weights(), torch.tensor([0.8, 0.2]).double())


def test_the_inner_strategy_is_chosen_and_set_by_config_and_its_state_resumes():
    job = build_job(make_config([*SMALL, "weighting.inner=pcgrad", "seed=5"]))
    assert isinstance(job.strategy.inner, PCGrad)
    cagrad = build_job(
        make_config([*SMALL, "weighting.inner=cagrad", "+weighting.inner_settings.c=0.9"])
    )
    assert cagrad.strategy.inner.c == 0.9 and cagrad.strategy.level == "parameters"
    generator = job.strategy.inner.generator
    torch.randperm(5, generator=generator)  # the inner strategy's draws move on
    again = build_job(make_config([*SMALL, "weighting.inner=pcgrad", "seed=5"]))
    again.strategy.load_state_dict(through_disk(job.strategy.state_dict()))
    assert torch.equal(again.strategy.inner.generator.get_state(), generator.get_state())
    wrapped = create_strategy("cr_mogm", ["a", "b"], inner="nash_mtl", alpha=0.5)
    assert isinstance(wrapped.inner, NashMTL) and wrapped.alpha == 0.5


@pytest.mark.parametrize(("inner", "setting"), [("sdmgrad", "lr=0.01"), ("modo", "rho=0.1")])
def test_an_inner_strategy_with_extra_batches_gets_them(inner, setting):
    """With α = 0 the wrapper trains as its inner strategy alone: the same extra batches
    drawn, their Jacobians handed on (without them SDMGrad and MoDo fall back to the step's
    own Gramian, and the runs part; SDMGrad's step size keeps w off a vertex here)."""
    seeded = [*SMALL, "trainer.deterministic=true", "seed=2"]
    inner_setting = f"+weighting.inner_settings.{setting}"
    wrapped = build_job(
        make_config([*seeded, f"weighting.inner={inner}", inner_setting, "weighting.alpha=0"])
    )
    alone = build_job(make_config([*seeded, f"weighting={inner}", f"weighting.{setting}"]))
    assert wrapped.strategy.extra_batches == alone.strategy.extra_batches == ("train", "train")
    train_alone(wrapped)
    train_alone(alone)
    assert wrapped.step == alone.step == 2
    for a, b in zip(wrapped.model.parameters(), alone.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(wrapped.strategy.inner.weight, alone.strategy.weight)


@pytest.mark.parametrize(("inner", "every"), [("mgda", 3)])
def test_with_alpha_0_a_run_is_its_inner_strategys_with_every(inner, every):
    """α = 0 trains as the inner strategy alone where that recomputes its weights every n
    steps (λ̄ is reused between)."""
    common = [*SMALL[:-1], "trainer.epochs=2"]
    setting = [f"weighting.every={every}"] if every > 1 else []
    alone = build_job(make_config([*common, f"weighting={inner}", *setting]))
    wrapped = build_job(
        make_config([*common, "weighting=cr_mogm", f"weighting.inner={inner}", "weighting.alpha=0",
                     *(f"+weighting.inner_settings.{s[10:]}" for s in setting)])
    )  # fmt: skip
    for job in (alone, wrapped):
        train_alone(job)
    for a, b in zip(alone.model.parameters(), wrapped.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(wrapped.strategy.weights(), alone.strategy.weights())


@pytest.mark.parametrize(
    ("inner", "words"),
    [
        ("graddrop", "weighting.inner=graddrop is not allowed: CRMOGM averages"),
        ("fixed", "weighting.inner=fixed is not allowed"),
        ("cr_mogm", "weighting.inner=cr_mogm is not allowed"),
        ("mgdaa", "weighting.inner=mgdaa is not an option: choose one of aligned_mtl"),
        ("null", "weighting.inner=None is not an option: choose one of aligned_mtl"),
    ],
)
def test_an_inner_strategy_it_cannot_wrap_is_refused_in_one_line(inner, words, tmp_path):
    done = run_cli([*SMALL, f"weighting.inner={inner}"], tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert words in line and "mgda" in line and "upgrad" in line
    assert not any(tmp_path.rglob("config.yaml"))  # refused before the run folder is made


def test_an_inner_strategy_that_is_loss_based_with_its_settings_is_refused_up_front(tmp_path):
    """imtl_l is IMTL (whose class CR-MOGM can wrap) with variant=loss: its weights e^s are
    learned with the model, not computed from the step's task gradients; refused by the config
    check (nothing written), and not among the inner strategies the line offers."""
    done = run_cli([*SMALL, "weighting.inner=imtl_l"], tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "weighting.inner=imtl_l is not allowed: CRMOGM averages" in line
    choices = line.split("choose one of ")[1].split(", ")
    assert "imtl" in choices and "imtl_l" not in choices
    assert not any(tmp_path.iterdir())  # no run folder
    with pytest.raises(ConfigError, match=r"^weighting.inner=imtl with weighting.inner_settings="
                       r"\{'variant': 'loss'\} is not allowed: CRMOGM averages"):  # fmt: skip
        make_config([*SMALL, "weighting.inner=imtl", "+weighting.inner_settings.variant=loss"])


def test_a_bad_setting_of_the_inner_strategy_or_of_alpha_is_refused():
    """Named as the user sets it: weighting.inner_settings.<setting>."""
    with pytest.raises(ConfigError, match=r"^weighting.inner_settings.bogus is not a setting"):
        make_config([*SMALL, "+weighting.inner_settings.bogus=1"])
    with pytest.raises(ConfigError, match=r"^weighting.inner_settings.c=-1 is not allowed"):
        make_config([*SMALL, "weighting.inner=cagrad", "+weighting.inner_settings.c=-1"])
    with pytest.raises(ConfigError, match=r"weighting.alpha=1 is not allowed"):
        make_config([*SMALL, "weighting.alpha=1"])
    with pytest.raises(ConfigError, match="GradDrop is not allowed"):
        CRMOGM(mse_terms(2), GradDrop)
