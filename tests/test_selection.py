"""The validation split and model selection: a seeded, disjoint hold-out; the best evaluation
by the validation objective, its checkpoint beside last.pt and its test metrics reported."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import StopAt, make_config, through_disk
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.build import build_job
from mtltrain.config._compose import build
from mtltrain.data.base import hold_out
from mtltrain.errors import CheckpointError, ConfigError, Interrupted
from mtltrain.loop._job import evaluate
from mtltrain.loop._selection import Selection
from mtltrain.loop._trainer import train_alone
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.run import run

DIRECTIONS = {"y1/rmse": -1, "y2/rmse": -1}
TINY = ["dataset.n_train=64", "dataset.n_test=32", "trainer.batch_size=16"]


def two_slope(n: int = 50):
    return build(make_config([f"dataset.n_train={n}"]).dataset)


def ids(split) -> set[float]:
    return set(split.inputs[:, 0].tolist())  # two_slope's inputs are distinct draws


@pytest.mark.parametrize(("size", "count"), [(0.2, 10), (7, 7), (7.0, 7)])
def test_the_validation_split_is_a_seeded_disjoint_part_of_the_training_set(size, count):
    data = two_slope()
    split = hold_out(data, size, seed=3)
    assert len(split.validation) == count and len(split.train) == 50 - count
    assert ids(split.validation).isdisjoint(ids(split.train))
    assert ids(split.validation) | ids(split.train) == ids(data.train)
    assert ids(hold_out(data, size, seed=3).validation) == ids(split.validation)
    assert ids(hold_out(data, size, seed=4).validation) != ids(split.validation)
    assert split.test is data.test


def test_no_validation_split_leaves_the_data_as_it_is():
    data = two_slope()
    assert hold_out(data, 0, seed=0) is data and data.splits().keys() == {"test"}


@pytest.mark.parametrize("size", [50, 60, 1.5, 0.001, 2.5])
def test_a_validation_size_that_leaves_nothing_or_is_not_a_count_is_refused(size):
    with pytest.raises(ConfigError, match=rf"trainer.validation={size} is not allowed"):
        hold_out(two_slope(), size, seed=0)


def test_negative_validation_and_unknown_selection_are_refused_with_the_config():
    with pytest.raises(ConfigError, match=r"trainer.validation=-1"):
        make_config(["trainer.validation=-1"])
    with pytest.raises(ConfigError, match=r"trainer.select='first'"):
        make_config(["trainer.select=first"])


def test_the_best_evaluation_is_the_first_with_the_best_value():
    selection = Selection("best", "validation/y/rmse", {"y/rmse": -1})
    values = [3.0, 2.0, math.nan, 2.0, 2.5, 1.0, 1.5]
    for epoch, value in enumerate(values, start=1):
        selection.update(epoch, 10 * epoch, {"validation": {"y/rmse": value}, "test": {}})
        assert selection.improved == (epoch in (1, 2, 6))
    assert selection.chosen["epoch"] == 6 and selection.chosen["value"] == 1.0
    accuracy = Selection("best", "validation/y/accuracy", {"y/accuracy": 1})  # higher is better
    for epoch, value in enumerate([0.5, 0.7, 0.6], start=1):
        accuracy.update(epoch, epoch, {"validation": {"y/accuracy": value}})
    assert accuracy.chosen["epoch"] == 2


def test_select_best_needs_a_validation_metric_with_a_direction():
    with pytest.raises(ConfigError, match=r"trainer.select=best.*objective='test/y1/rmse'"):
        build_job(make_config([*TINY, "trainer.select=best", "objective=test/y1/rmse"]))
    with pytest.raises(ConfigError, match=r"hold out a validation split \(trainer.validation"):
        build_job(make_config([*TINY, "trainer.select=best"]))  # no validation split
    with pytest.raises(ConfigError, match=r"objective='validation/y1/rmse' is not a metric"):
        build_job(make_config([*TINY, "objective=validation/y1/rmse"]))


def test_select_best_by_a_metric_the_data_set_knows_the_truth_of():
    """sin_hetero knows σ(x): its sigma_rel_error (lower is better) is a metric to select by."""
    sets = ["dataset=sin_hetero", "model=sin_hetero", "trainer.validation=16"]
    objective = "objective=validation/y/sigma_rel_error"
    job = build_job(make_config([*TINY, *sets, "trainer.select=best", objective]))
    assert job.selection.direction == -1


def test_the_objective_defaults_to_validation_where_a_split_is_held_out():
    with_split = build_job(make_config([*TINY, "trainer.validation=16"]))
    assert with_split.selection.objective == "validation/y1/rmse"
    assert build_job(make_config(TINY)).selection.objective == "test/y1/rmse"


def scalars(run_dir, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_select_best_reports_the_test_metrics_of_the_best_validation_epoch(tmp_path):
    overrides = [
        *TINY, "trainer.validation=16", "trainer.select=best", "trainer.epochs=8",
        "trainer.optimizer.lr=3e-2", "trainer.deterministic=true", "trainer.eval_every=1",
    ]  # fmt: skip
    value = run(make_config(overrides), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    validation = scalars(tmp_path, "validation/y1/rmse")
    assert len(validation) == 8
    best_step = min(validation, key=lambda s: (validation[s], s))
    assert results["selected"] == {"by": "best", "epoch": best_step // 3, "step": best_step}
    assert value == results["objective"]["value"] == results["metrics"]["validation/y1/rmse"]
    assert value == pytest.approx(validation[best_step], rel=1e-6)
    for tag in ("test/y1/rmse", "test/y2/rmse"):
        assert results["metrics"][tag] == pytest.approx(scalars(tmp_path, tag)[best_step], rel=1e-6)
    assert (tmp_path / "checkpoints/last.pt").is_file()
    best = checkpoint.load(tmp_path / "checkpoints/best.pt")
    assert best["selected"]["step"] == best_step
    job = build_job(make_config(overrides))
    job.model.load_state_dict(best["model"])
    job.strategy.load_state_dict(best["weighting"])
    again = evaluate(job.model, job.data.validation, job.data.tasks, 64)
    assert again["y1/rmse"] == pytest.approx(value, rel=1e-6)
    train = evaluate(job.model, job.data.train, job.data.tasks, 64)
    assert results["metrics"]["train/y1/rmse"] == pytest.approx(train["y1/rmse"], rel=1e-6)
    sigma = job.strategy.report()["sigma"].tolist()  # what the selected strategy learned
    assert list(results["weighting"]["sigma"].values()) == pytest.approx(sigma, rel=1e-6)
    assert best_step < max(validation)  # at this learning rate the last epoch is not the best
    last = checkpoint.load(tmp_path / "checkpoints/last.pt")["trainer"]["model"]
    assert any(not torch.equal(last[k], best["model"][k]) for k in last)


def test_a_checkpoint_from_before_the_split_existed_is_not_refused_for_it():
    saved = {"trainer": {"epochs": 2}}
    assert checkpoint.changed_settings(saved, {"trainer": {"validation": 0, "epochs": 2}}) == ""


def test_a_resume_may_not_change_the_objective_it_selects_by():
    saved = Selection("best", "validation/y1/rmse", DIRECTIONS).state_dict()
    with pytest.raises(CheckpointError, match=r"objective='validation/y2/rmse'.*'validation/y1"):
        Selection("best", "validation/y2/rmse", DIRECTIONS).load_state_dict(saved)


def test_a_resume_may_not_change_the_validation_split_or_the_selection():
    saved = {"trainer": {"validation": 0, "select": "last", "epochs": 2}}
    assert "trainer.validation=0 → 0.1" in checkpoint.changed_settings(
        saved, {"trainer": {"validation": 0.1, "select": "last", "epochs": 2}}
    )
    assert "trainer.select" in checkpoint.changed_settings(
        saved, {"trainer": {"validation": 0, "select": "best", "epochs": 2}}
    )
    assert (
        checkpoint.changed_settings(
            saved, {"trainer": {"validation": 0, "select": "last", "epochs": 9}}
        )
        == ""
    )


def test_a_resumed_run_keeps_its_best_evaluation():
    """Stopped in epoch 7 after its best (epoch 5), resumed: the same selection as at once."""
    cfg = make_config(
        [
            *TINY, "trainer.validation=16", "trainer.select=best", "trainer.eval_every=1",
            "trainer.optimizer.lr=3e-2", "trainer.deterministic=true", "trainer.epochs=8",
        ]
    )  # fmt: skip
    alone = build_job(cfg)
    train_alone(alone)
    stopped = build_job(cfg, extra_callbacks=[StopAt(19)])
    with pytest.raises(Interrupted):
        train_alone(stopped)
    assert stopped.selection.chosen["epoch"] < 7
    resumed = build_job(cfg)
    resumed.load_state_dict(through_disk(stopped.state_dict()))
    train_alone(resumed)
    a, b = dict(alone.selection.chosen), dict(resumed.selection.chosen)
    for one, other in zip(a.pop("states"), b.pop("states"), strict=True):
        assert all(torch.equal(one[k], other[k]) for k in one)
    assert a == b
    for mine, theirs in zip(alone.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(mine, theirs)  # both ended in the selected state
