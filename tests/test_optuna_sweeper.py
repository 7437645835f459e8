"""hydra/sweeper=mtltrain_optuna (hydra_plugins/mtltrain_optuna_sweeper): Hydra's sweep syntax
as Optuna distributions, a study kept in SQLite and continued by the same command, failed
trials told FAIL while the study goes on, pruned trials told PRUNED (in SQLite and in memory),
and the direction taken from the objective."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import optuna
import pytest
from conftest import run_cli
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.mtltrain_optuna_sweeper._search_space import (
    as_override,
    grid,
    search_space,
)
from mtltrain.config._compose import config_dir
from mtltrain.config._schema import direction as direction_of
from mtltrain.errors import ConfigError

TINY = ["dataset=two_slope", "dataset.n_train=32", "dataset.n_test=16", "trainer.epochs=2",
        "trainer.validation=0.1", "objective=validation/y1/rmse",
        "trainer.eval_every=1", "trainer.progress=false"]  # fmt: skip
OPTUNA = ["-m", "hydra/sweeper=mtltrain_optuna", "hydra/sweeper/sampler=random",
          "hydra.sweeper.sampler.seed=0"]  # fmt: skip
# prunes every trial at its first evaluation (an RMSE is > 0)
PRUNE_ALL = ["hydra/sweeper/pruner=none",
             "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
             "+hydra.sweeper.pruner.upper=0.0"]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lr=tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 0.1, log=True)),
        ("x=interval(0, 1)", FloatDistribution(0.0, 1.0)),  # Hydra reads interval ends as floats
        ("n=int(interval(1, 8))", IntDistribution(1, 8)),
        ("n=tag(log, int(interval(16, 256)))", IntDistribution(16, 256, log=True)),
        ("n=range(1, 4)", IntDistribution(1, 3)),  # stop left out, as Hydra's range
        ("n=range(2, 11, 3)", IntDistribution(2, 8, step=3)),  # 2, 5, 8
        ("n=range(10, 0, -4)", IntDistribution(2, 10, step=4)),  # 10, 6, 2
        ("f=range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("w=choice(fixed, uncertainty)", CategoricalDistribution(["fixed", "uncertainty"])),
        ("w=fixed,uncertainty", CategoricalDistribution(["fixed", "uncertainty"])),
    ],
)
def test_a_sweep_override_is_the_distribution_written_by_hand(override, expected):
    space, fixed = search_space([override, "seed=3"])
    assert space == {override.partition("=")[0]: expected} and fixed == ["seed=3"]


@pytest.mark.parametrize("override", ["n=range(1, 4)", "n=range(2, 11, 3)", "n=range(10, 0, -4)"])
def test_a_range_samples_the_values_the_basic_sweeper_takes(override):
    (d,) = search_space([override])[0].values()
    swept = OverridesParser.create().parse_override(override).sweep_iterator()
    assert set(range(d.low, d.high + 1, d.step)) == set(swept)


def test_the_command_line_wins_over_params_and_a_shuffled_range_is_a_choice():
    space, fixed = search_space(["a=choice(1,2)", "b=shuffle(range(3))", "a=5"])
    assert fixed == ["a=5"] and sorted(space["b"].choices) == [0, 1, 2]


def test_a_swept_value_in_params_is_checked_as_on_the_command_line():
    with pytest.raises(ConfigError, match=r"a log-scale interval needs low > 0"):
        search_space(["lr=tag(log, interval(0, 1))"])


def test_the_grid_lists_choices_and_ranges_and_refuses_an_interval():
    space, _ = search_space(["w=choice(a,b)", "n=range(1,4)", "f=range(0.1,0.5,0.1)"])
    assert grid(space) == {"w": ["a", "b"], "n": [1, 2, 3], "f": [0.1, 0.2, 0.3, 0.4]}
    with pytest.raises(ConfigError, match="lr sweeps an interval"):
        grid(search_space(["lr=interval(0.1, 1)"])[0])


@pytest.mark.parametrize(
    ("value", "text"),
    [("fixed", "w=fixed"), ("a,b", "w='a,b'"), ("it's", "w='it\\'s'"), (True, "w=true"),
     (None, "w=null"), (1e-05, "w=1e-05"), (math.nan, "w=nan")],
)  # fmt: skip
def test_a_sampled_value_goes_back_as_an_override_hydra_parses_to_it(value, text):
    assert as_override("w", value) == text
    parsed = OverridesParser.create().parse_override(text).value()
    assert parsed == value or (math.isnan(value) and math.isnan(parsed))


@pytest.mark.parametrize(
    "preset",
    sorted((Path(config_dir()) / "hydra" / "sweeper").glob("*/*.yaml")),
    ids=lambda p: f"{p.parent.name}={p.stem}",
)
def test_every_sampler_and_pruner_preset_builds_with_this_optuna(preset):
    built = instantiate(OmegaConf.load(preset))
    if isinstance(built, functools.partial):  # the grid sampler, which takes the search space
        built = built({"x": [1, 2]})
    kind = (
        optuna.samplers.BaseSampler
        if preset.parent.name == "sampler"
        else optuna.pruners.BasePruner
    )
    assert isinstance(built, kind)


@pytest.mark.parametrize(
    ("objective", "direction"),
    [("validation/y1/rmse", "minimize"), ("validation/cls/accuracy", "maximize"),
     ("test/seg/iou", "maximize")],
)  # fmt: skip
def test_the_direction_follows_the_objective(objective, direction):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "config",
            ["hydra/sweeper=mtltrain_optuna", f"objective={objective}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweeper.direction == direction


def test_a_metric_of_ones_own_is_tuned_in_the_direction_given():
    """The preset knows the built-in metrics' directions only; the message says how to give
    one, and the direction given is taken."""
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.direction=maximize or minimize"):
        direction_of("validation/price/within_ten_percent")
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "config",
            ["hydra/sweeper=mtltrain_optuna", "objective=validation/price/within_ten_percent",
             "hydra.sweeper.direction=maximize"],
            return_hydra_config=True,
        )  # fmt: skip
    assert cfg.hydra.sweeper.direction == "maximize"


def test_an_objective_on_a_metric_of_ones_own_without_a_direction_is_one_line(tmp_path):
    metric = "+dataset.metrics.y1=[rmse,{_target_:torchmetrics.regression.MeanAbsoluteError}]"
    done = run_cli(["-m", "hydra/sweeper=mtltrain_optuna", "hydra.sweeper.n_trials=1", metric,
                    "trainer.validation=16", "objective=validation/y1/mean_absolute_error"],
                   tmp_path)  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(
        "mtltrain: error: objective=validation/y1/mean_absolute_error is not allowed with "
        "hydra/sweeper=mtltrain_optuna"
    )
    assert done.stderr.strip().endswith("hydra.sweeper.direction=maximize or minimize")


def results_of(sweep, number: int) -> dict:
    (found,) = sweep.glob(f"{number}_*/results.json")
    return json.loads(found.read_text())


def test_a_sqlite_study_is_continued_by_the_same_command(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [*OPTUNA, *TINY, "trainer.optimizer.lr=tag(log, interval(1e-3, 1e-1))",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=3"]  # fmt: skip
    first = run_cli([*args, "hydra.sweep.dir=first"], tmp_path)
    assert first.returncode == 0, first.stderr
    study = optuna.load_study(study_name="mtltrain", storage=storage)
    assert study.direction.name == "MINIMIZE"  # an RMSE
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:  # each trial's job is numbered as the trial
        results = results_of(tmp_path / "first", trial.number)
        assert trial.value == results["objective"]["value"]
        lr = trial.params["trainer.optimizer.lr"]
        assert f"trainer.optimizer.lr={lr!r}" in results["overrides"]
        assert 1e-3 <= lr <= 1e-1
    again = run_cli([*args, "hydra.sweep.dir=second", "hydra.sweeper.n_trials=1"], tmp_path)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="mtltrain", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]  # counted on
    assert study.trials[3].value == results_of(tmp_path / "second", 3)["objective"]["value"]
    best = (tmp_path / "second" / "optimization_results.yaml").read_text()
    assert f"best_trial: {study.best_trial.number}" in best


def test_a_stored_study_of_the_other_direction_is_refused_in_one_line(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="mtltrain", storage=storage, direction="maximize")
    done = run_cli([*OPTUNA, *TINY, f"hydra.sweeper.storage={storage}"], tmp_path)
    assert done.returncode != 0
    assert done.stderr.startswith("mtltrain: error: hydra.sweeper.direction=minimize is not")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("multirun/*/*/*/results.json"))  # no trial ran


def test_the_search_space_may_be_given_in_the_sweepers_params(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["-m", "hydra/sweeper=mtltrain_optuna", "hydra/sweeper/sampler=grid", *TINY,
            "+hydra.sweeper.params.trainer.optimizer.lr='choice(0.01,0.02)'", "seed=3",
            f"hydra.sweeper.storage={storage}"]  # fmt: skip
    assert run_cli(args, tmp_path).returncode == 0
    study = optuna.load_study(study_name="mtltrain", storage=storage)
    assert sorted(t.params["trainer.optimizer.lr"] for t in study.trials) == [0.01, 0.02]
    for trial in study.trials:
        sweep = next(tmp_path.glob("multirun/*/*"))
        assert "seed=3" in results_of(sweep, trial.number)["overrides"]


def test_a_failed_trial_is_told_fail_and_the_study_goes_on(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["-m", "hydra/sweeper=mtltrain_optuna", "hydra/sweeper/sampler=grid", *TINY,
            "trainer.optimizer.lr=choice(0.01,nan)",
            f"hydra.sweeper.storage={storage}"]  # fmt: skip
    done = run_cli(args, tmp_path)
    study = optuna.load_study(study_name="mtltrain", storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]  # the grid, once
    assert done.returncode == 1 and "1 of 2 jobs did not finish" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2  # the failed job's line, and that one
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert math.isnan(failed.params["trainer.optimizer.lr"])
    sweep = next(p.parent for p in tmp_path.glob("multirun/*/*/optimization_results.yaml"))
    assert results_of(sweep, failed.number)["status"] == "failed"  # the run refused lr=nan


def test_failures_above_the_rate_stop_the_study_in_one_line(tmp_path):
    args = [*OPTUNA, *TINY, "trainer.optimizer.lr=nan", "hydra.sweeper.max_failure_rate=0.5",
            "hydra.sweeper.n_trials=3"]  # fmt: skip
    done = run_cli(args, tmp_path)
    assert done.returncode != 0
    assert "mtltrain: error: 1 of 1 trials of a batch failed, more than" in done.stderr
    assert len(list(tmp_path.glob("multirun/*/*/*/results.json"))) == 1  # it stopped there


def test_a_pruned_trial_is_told_pruned_and_its_folder_says_so(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [*OPTUNA, *TINY, f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=1"]
    kept = run_cli([*args, "hydra/sweeper/pruner=none", "hydra.sweep.dir=kept"], tmp_path)
    assert kept.returncode == 0, kept.stderr
    pruned = run_cli([*args, *PRUNE_ALL, "hydra.sweep.dir=pruned"], tmp_path)
    assert pruned.returncode == 0, pruned.stderr  # pruning is how a trial should end
    assert "trial 1 pruned after epoch 1: validation/y1/rmse=" in pruned.stdout
    study = optuna.load_study(study_name="mtltrain", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    assert list(study.trials[0].intermediate_values) == [1, 2]  # each epoch's evaluation
    (reported,) = study.trials[1].intermediate_values.values()
    assert study.trials[1].value == reported  # Optuna's value of a pruned trial: its last one
    results = results_of(tmp_path / "pruned", 1)
    assert results["status"] == "pruned" and "trial 1 pruned after epoch 1" in results["error"]


def test_a_study_in_memory_prunes_the_trials_run_in_its_process(tmp_path):
    done = run_cli([*OPTUNA, *TINY, *PRUNE_ALL, "hydra.sweeper.n_trials=1"], tmp_path)
    (folder,) = tmp_path.glob("multirun/*/*/0_*")
    assert json.loads((folder / "results.json").read_text())["status"] == "pruned"
    assert done.returncode != 0  # the study has no finished trial, so no best one
    assert done.stderr.strip().splitlines() == [
        "mtltrain: error: no trial of the Optuna study finished, so it has no best one: each "
        "trial's error is above and in its folder's results.json (mtltrain-report <sweep "
        "folder> lists them)"
    ]


def test_the_optuna_preset_refuses_an_objective_without_a_direction(tmp_path):
    done = run_cli(["-m", "hydra/sweeper=mtltrain_optuna", "hydra.sweeper.n_trials=1",
                    "trainer.epochs=1"], tmp_path)  # fmt: skip
    assert done.returncode == 2  # the check's own line, not OmegaConf's wrapper of it
    line = done.stderr.strip()
    assert line.startswith("mtltrain: error: objective=None is not allowed with hydra/sweeper")
    assert "hydra.sweeper.direction=maximize" in line and len(line.splitlines()) == 1
