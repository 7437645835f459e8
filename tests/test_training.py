"""Training in-process: σ recovery, determinism, the task function's return value."""

import json

import pytest
from conftest import make_config

from mtltrain import train
from mtltrain.errors import ConfigError

TINY = ["trainer.epochs=2", "dataset.n_train=64", "dataset.n_test=32"]


def test_sigma_recovery_on_two_slope(tmp_path):
    """The learned σ of a regression task converges to its residual RMSE, i.e. the noise σ."""
    cfg = make_config(
        [
            "dataset.n_train=3000", "trainer.epochs=80", "trainer.batch_size=64",
            "trainer.optimizer.lr=2e-3", "trainer.eval_every=80", "seed=1",
        ]
    )  # fmt: skip
    train.run(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    sigma = results["weighting"]["sigma"]
    for task, true in (("y1", 3.0), ("y2", 0.5)):
        assert sigma[task] == pytest.approx(true, rel=0.10)
        assert sigma[task] == pytest.approx(results["metrics"][f"train/{task}/rmse"], rel=0.03)
    assert results["true_sigma"] == {"y1": 3.0, "y2": 0.5}


def test_same_seed_same_run(tmp_path):
    a = train.run(make_config(TINY), tmp_path / "a")
    b = train.run(make_config(TINY), tmp_path / "b")
    c = train.run(make_config([*TINY, "seed=1"]), tmp_path / "c")
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert a == b and ra["metrics"] == rb["metrics"] and ra["weighting"] == rb["weighting"]
    assert a != c


def test_objective_is_returned_and_validated(tmp_path):
    value = train.run(make_config([*TINY, "objective=test/y2/mse"]), tmp_path / "a")
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert value == results["metrics"]["test/y2/mse"] == results["objective"]["value"]
    default = train.run(make_config(TINY), tmp_path / "b")
    assert (
        default == json.loads((tmp_path / "b/results.json").read_text())["metrics"]["test/y1/rmse"]
    )
    with pytest.raises(ConfigError, match=r"objective='test/y3/rmse'.*test/y1/rmse"):
        train.run(make_config([*TINY, "objective=test/y3/rmse"]), tmp_path / "c")


def test_fixed_weighting_runs_and_reports_weights(tmp_path):
    train.run(make_config([*TINY, "weighting=fixed", "weighting.weights=[2.0,0.5]"]), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["weighting"] == {"weight": {"y1": 2.0, "y2": 0.5}}


def test_sin_hetero_trains(tmp_path):
    cfg = make_config(["dataset=sin_hetero", "dataset.n_train=200", "dataset.n_test=50",
                       "trainer.epochs=1", "trainer.batch_size=20"])  # fmt: skip
    train.run(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["metrics"]) >= {"test/y/rmse", "train/y/rmse"}
    assert 0.1 < results["true_sigma"]["y"] < 0.6


@pytest.mark.slow
def test_source_two_slope_run_learns_the_residual_rmse(tmp_path):
    """BACKGROUND §5A as published: 300 samples, batch 16, Adam 3e-4, 1500 epochs."""
    train.run(make_config(["weighting.form=unit"]), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    for task, true in (("y1", 3.0), ("y2", 0.5)):
        sigma = results["weighting"]["sigma"][task]
        assert sigma == pytest.approx(results["metrics"][f"train/{task}/rmse"], rel=0.03)
        assert sigma == pytest.approx(true, rel=0.15)  # 300 samples: the noise itself varies
