import json
from pathlib import Path

import pytest
from conftest import make_config, run_cli
from omegaconf import OmegaConf

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


# Every data set and every trainer composes, each beside the data set it belongs to (a trainer
# of a data set's name with that data set, the others with the default one). The other groups'
# options are composed one by one where they are tested: every model in
# test_models.test_every_model_follows_the_protocol, every strategy in test_strategy_contract,
# every architecture in test_architecture_contract. The groups share nothing but the data set's
# name, so their product would add compositions, not checks.
GROUP_OPTIONS = [(g, o) for g in ("dataset", "trainer") for o in options(g)]


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=lambda c: str(c))
def test_every_option_composes(group, option):
    data_set = option if option in options("dataset") else "two_slope"
    cfg = make_config([f"dataset={data_set}", f"{group}={option}"])
    for name in GROUPS:
        assert "_target_" in cfg[name] or name == "trainer"
    assert cfg.trainer.optimizer._target_ == "torch.optim.Adam"
    assert cfg.dataset._target_ == make_config([f"dataset={data_set}"]).dataset._target_


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


def write_user_project(root: Path) -> Path:
    """A user's folder: their package (a data set's build function) and their configs, with a
    data set that has no trainer config of its own name."""
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "data.py").write_text(
        "from mtltrain.data import two_slope\n\n\ndef build(**settings):\n"
        "    return two_slope.build(**settings)\n"
    )
    (root / "conf" / "dataset").mkdir(parents=True)
    (root / "conf" / "dataset" / "mine.yaml").write_text(
        "_target_: mypkg.data.build\n"
        "tasks: {y1: {slope: 1.0, intercept: 0.0, noise_std: 1.0}}\n"
        "losses: {y1: [mse]}\nn_train: 24\nn_test: 8\nseed: ${seed}\n"
    )
    (root / "conf" / "trainer").mkdir()
    (root / "conf" / "trainer" / "quick.yaml").write_text("epochs: 2\nbatch_size: 8\n")
    return root / "conf"


def test_a_data_set_without_a_trainer_of_its_name_takes_the_default_one(tmp_path, monkeypatch):
    conf = write_user_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    search = f"hydra.searchpath=[file://{conf}]"
    cfg = make_config([search, "dataset=mine", "model=two_slope"])
    default = OmegaConf.load(config_dir() / "trainer" / "default.yaml")
    assert cfg.trainer.epochs == default.epochs and cfg.trainer.batch_size == default.batch_size
    quick = make_config([search, "dataset=mine", "model=two_slope", "trainer=quick"]).trainer
    assert (quick.epochs, quick.batch_size, quick.eval_every) == (2, 8, default.eval_every)
    assert "hydra" not in cfg


def test_a_users_folder_runs_with_config_dir_and_its_own_package(tmp_path):
    write_user_project(tmp_path)
    args = ["--config-dir", "conf", "dataset=mine", "model=two_slope", "trainer=quick"]
    done = run_cli([*args, "hydra.run.dir=run", "trainer.progress=false"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 2
    assert results["choices"]["trainer"] == "quick"
    done = run_cli([*args[:-1], "hydra.run.dir=alone", "trainer.epochs=1"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert alone["choices"]["trainer"] == "default"  # mine has no trainer of its name


@pytest.mark.parametrize(
    ("choice", "said"),
    [
        ("trainer=quik", "trainer=quik is not an option: did you mean trainer=quick?"),
        ("model=mine", "model=mine is not an option"),
    ],
)
def test_a_trainer_or_model_that_is_no_option_is_refused(tmp_path, choice, said):
    write_user_project(tmp_path)
    args = ["--config-dir", "conf", "dataset=mine", "model=two_slope", choice, "hydra.run.dir=run"]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode != 0 and said in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_the_model_defaults_to_the_data_sets_name(tmp_path):
    write_user_project(tmp_path)
    done = run_cli(["--config-dir", "conf", "dataset=mine", "hydra.run.dir=run"], cwd=tmp_path)
    assert done.returncode != 0
    assert "model=mine is not an option" in done.stderr
    assert "the model defaults to the data set's name" in done.stderr


def test_a_run_from_a_users_config_dir_resumes_without_the_flag(tmp_path):
    write_user_project(tmp_path)
    args = ["--config-dir", "conf", "dataset=mine", "model=two_slope", "trainer=quick"]
    assert run_cli([*args, "hydra.run.dir=run", "trainer.progress=false"], tmp_path).returncode == 0
    done = run_cli(["resume=run", "trainer.epochs=3", "trainer.progress=false"], tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 3


def test_a_run_from_a_relative_search_path_resumes_from_another_folder(tmp_path):
    (tmp_path / "proj" / "conf" / "trainer").mkdir(parents=True)
    (tmp_path / "proj" / "conf" / "trainer" / "quick.yaml").write_text("epochs: 2\nbatch_size: 8\n")
    args = ["hydra.searchpath=[file://conf]", "trainer=quick", "dataset.n_train=16",
            "dataset.n_test=8", "logger=[]", "hydra.run.dir=run"]  # fmt: skip
    assert run_cli(args, tmp_path / "proj").returncode == 0
    done = run_cli(["resume=proj/run", "trainer.epochs=3"], tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "proj" / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 3
