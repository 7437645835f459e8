import itertools

import pytest
from conftest import make_config

from mtltrain.config._compose import compose_checked, config_dir
from mtltrain.errors import ConfigError

GROUPS = ("dataset", "model", "trainer", "weighting")


def options(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def test_defaults():
    cfg = make_config()
    assert cfg.dataset._target_.endswith("two_slope.build")
    assert cfg.weighting._target_.endswith("UncertaintyWeighting")
    assert cfg.trainer.epochs == 1500 and cfg.trainer.batch_size == 16
    assert cfg.trainer.optimizer.lr == 3e-4 and cfg.trainer.device == "auto"
    assert cfg.dataset.seed == cfg.seed == 0


def test_model_and_trainer_follow_the_dataset():
    cfg = make_config(["dataset=mnist_mtl", "seed=3"])
    assert cfg.model.encoder._target_.endswith("MnistEncoder")
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.optimizer.lr) == (10, 256, 1e-4)
    assert make_config(["seed=3"]).dataset.seed == 3


# every data set × model × trainer, and every strategy with each data set (a strategy's config
# does not depend on the model or trainer chosen)
COMBINATIONS = [
    *itertools.product(options("dataset"), options("model"), options("trainer"), ["fixed"]),
    *((d, d, d, w) for d in options("dataset") for w in options("weighting")),
]


@pytest.mark.parametrize("choice", COMBINATIONS, ids=lambda c: "-".join(c))
def test_every_combination_composes(choice):
    cfg = make_config([f"{g}={c}" for g, c in zip(GROUPS, choice, strict=True)])
    for group in GROUPS:
        assert "_target_" in cfg[group] or group == "trainer"
    assert cfg.trainer.optimizer._target_ == "torch.optim.Adam"


def test_there_is_something_to_combine():
    assert set(options("dataset")) >= {"two_slope", "mnist_mtl", "sin_hetero"}
    assert set(options("weighting")) >= {"fixed", "uncertainty"}
    assert set(options("model")) >= set(options("dataset"))
    assert set(options("trainer")) >= set(options("dataset"))


def test_unknown_choice_lists_the_options():
    with pytest.raises(ConfigError) as err:
        make_config(["weighting=nope"])
    message = str(err.value)
    assert "nope" in message and "fixed" in message and "uncertainty" in message


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_passes_the_checks(experiment):
    cfg = compose_checked([f"experiment={experiment}"])
    data_set = "two_slope" if experiment.startswith("two_slope") else "mnist_mtl"
    assert cfg.dataset._target_.endswith(f"{data_set}.build")
    if "seg" in experiment:  # one task, two loss terms (docs/theory.md §5D)
        assert list(cfg.dataset.tasks) == ["seg"]
        assert list(cfg.dataset.losses.seg) == ["cross_entropy", "dice"]


def test_source_experiments_use_the_source_loss_forms():
    assert compose_checked(["experiment=two_slope_source"]).weighting.form == "unit"
    mnist = compose_checked(["experiment=mnist_source"]).weighting
    assert mnist.form == "half" and list(mnist.init_log_var) == [0.2, 1.0]
    seg = compose_checked(["experiment=mnist_seg_fixed"]).weighting.weights
    assert dict(seg) == {"seg_cross_entropy": 0.8, "seg_dice": 0.2}


def test_an_import_error_in_a_users_target_shows_its_cause(tmp_path, monkeypatch):
    package = tmp_path / "mytab"
    package.mkdir()
    (package / "__init__.py").write_text("import pandas_that_is_not_installed\n")
    (package / "data.py").write_text("def build(**settings): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"mytab.data.build cannot be loaded: Module.*"
                       r"No module named 'pandas_that_is_not_installed'"):  # fmt: skip
        make_config(["dataset._target_=mytab.data.build"])
