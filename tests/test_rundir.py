"""Run folders: which folders a new run may use, and which sweep a resumed sweep continues."""

import pytest
from omegaconf import OmegaConf

from mtltrain.errors import RunFolderError
from mtltrain.outputs import _run_folder as rundir


def test_a_folder_a_run_left_before_its_first_checkpoint_is_named_so(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "mtltrain.log").write_text("started\n")
    with pytest.raises(RunFolderError, match="stopped before its first checkpoint"):
        rundir.check_fresh(tmp_path)


@pytest.mark.parametrize("name", ["results.json", "mtltrain.log", "notes.txt"])
def test_a_users_file_is_their_own_even_when_named_as_a_runs(tmp_path, name):
    (tmp_path / name).write_text("mine\n")
    with pytest.raises(RunFolderError, match=rf"holds files of its own \({name}\)"):
        rundir.check_fresh(tmp_path)
    assert (tmp_path / name).read_text() == "mine\n"


def test_an_empty_folder_and_hydras_own_files_are_fresh(tmp_path):
    rundir.check_fresh(tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "mtltrain.log").write_text("")
    rundir.check_fresh(tmp_path, hydra_files=[".hydra", "mtltrain.log"])


def _saved_sweep(folder, overrides):
    OmegaConf.save({"hydra": {"overrides": {"task": overrides}}}, folder / "multirun.yaml")


@pytest.mark.parametrize(
    "now",
    [
        ["seed=0,1", "weighting=fixed,uncertainty"],
        ["seed=0,1,2", "weighting=fixed,uncertainty"],  # a sweep extended with seeds
        ["seed=range(0,2)", "weighting=fixed,uncertainty"],
        ["seed=0,1", "weighting=fixed,uncertainty", "resume_sweep=true"],
    ],
)
def test_resume_sweep_continues_the_same_settings_with_as_many_values_or_more(tmp_path, now):
    _saved_sweep(tmp_path, ["seed=0,1", "weighting=fixed,uncertainty"])
    rundir.check_same_sweep(tmp_path, now)


@pytest.mark.parametrize(
    "now",
    [
        ["seed=0", "weighting=fixed,uncertainty"],  # a value fewer
        ["seed=0,1"],  # a setting fewer
        ["seed=0,1", "weighting=fixed,uncertainty", "trainer.epochs=3"],  # one more
    ],
)
def test_resume_sweep_refuses_another_sweep(tmp_path, now):
    _saved_sweep(tmp_path, ["seed=0,1", "weighting=fixed,uncertainty"])
    with pytest.raises(RunFolderError, match="weighting=fixed,uncertainty"):
        rundir.check_same_sweep(tmp_path, now)


def test_a_glob_sweep_is_compared_as_written(tmp_path):
    _saved_sweep(tmp_path, ["weighting=glob(*)"])
    rundir.check_same_sweep(tmp_path, ["weighting=glob(*)"])
    with pytest.raises(RunFolderError, match=r"glob\(\*\)"):
        rundir.check_same_sweep(tmp_path, ["weighting=glob(u*)"])
