"""Run folders: which folders a new run or sweep may use (not one in use, a finished sweep
only to continue it, one on a disk with room), which sweep a resumed sweep continues, and what
a run's folder holds."""

import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import MTLTRAIN, run_cli, snapshot, strict_json
from omegaconf import OmegaConf

from mtltrain.errors import RunFolderError
from mtltrain.outputs import _run_folder as rundir

TINY = ["trainer.epochs=2", "dataset.n_train=32", "dataset.n_test=16"]


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


# ---- a sweep's folder ------------------------------------------------------------------------


def test_a_sweep_with_a_slash_in_a_value_finds_its_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "weighting=fixed", "weighting.weights=[1,1],[1,1,1]", "objective=test/y1/rmse",
            "trainer.epochs=1", "dataset.n_train=32", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    jobs = rundir.jobs_in(sweep)
    assert len(jobs) == 2 and all(job.parent == sweep for job in jobs)  # no nested folders
    assert "1 of 2 jobs did not finish: 1_" in proc.stderr.strip().splitlines()[-1]
    assert [rundir.status(j) for j in jobs] == ["completed", "failed"]


def test_a_finished_sweep_folder_is_refused_or_continued(tmp_path):
    sweep = tmp_path / "sweep"
    base = ["-m", *TINY, f"hydra.sweep.dir={sweep}"]
    assert run_cli([*base, "seed=0"], cwd=tmp_path).returncode == 0
    before = snapshot(sweep)
    again = run_cli([*base, "seed=0,1"], cwd=tmp_path)
    assert again.returncode == 2
    (line,) = again.stderr.strip().splitlines()
    assert "already holds a sweep" in line and "resume_sweep=true" in line
    assert snapshot(sweep) == before  # nothing touched
    more = run_cli([*base, "seed=0,1", "resume_sweep=true"], cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    jobs = rundir.jobs_in(sweep)
    assert [rundir.status(j) for j in jobs] == ["completed", "completed"]
    (kept,) = (k for k in before if k.endswith("results.json"))
    assert snapshot(sweep)[kept] == before[kept]  # the finished job was kept as it was
    new = strict_json(jobs[1] / "results.json")["overrides"]
    assert not any("resume_sweep" in o for o in new)  # how the sweep ran, not a setting


# ---- a run's folder ----------------------------------------------------------------------------


def test_two_runs_on_one_folder_the_second_stops_with_one_line(tmp_path):
    """The first run a process of its own (run_cli would block): it holds the folder while the
    second starts, and then takes SIGTERM."""
    folder = tmp_path / "run"
    first = subprocess.Popen(
        [MTLTRAIN, "trainer.epochs=3000", f"hydra.run.dir={folder}"], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (folder / "tb").exists():  # it is past its checks and training
        assert first.poll() is None and time.monotonic() < deadline, first.stderr
        time.sleep(0.05)
    second = run_cli([*TINY, f"hydra.run.dir={folder}"], cwd=tmp_path)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert "in use by another mtltrain run" in line
    assert first.returncode == 128 + signal.SIGTERM
    assert strict_json(folder / "results.json")["status"] == "interrupted"  # the first's


def test_the_log_file_holds_the_summary_and_the_error(tmp_path):
    assert run_cli([*TINY, f"hydra.run.dir={tmp_path}/ok"], cwd=tmp_path).returncode == 0
    assert "learned σ" in (tmp_path / "ok" / "mtltrain.log").read_text()
    bad = run_cli([*TINY, "weighting=fixed", "weighting.weights=[1,1,1]",
                   f"hydra.run.dir={tmp_path}/bad"], cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2
    assert "has 3 values but there are 2" in (tmp_path / "bad" / "mtltrain.log").read_text()


# ---- the folder's disk -----------------------------------------------------------------------


def test_a_read_only_folder_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(RunFolderError, match=r"run cannot be written: .* read-only"):
        rundir.check_writable(tmp_path / "run", "hydra.run.dir")
    assert not (tmp_path / "run").exists()


def test_a_full_disk_at_the_start_is_one_line_naming_the_folder_and_the_space(
    tmp_path, monkeypatch
):
    """A disk that reports 4 KiB free: a run and a sweep."""
    full = shutil.disk_usage(tmp_path)._replace(free=4096)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    run, sweep = f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/s"
    for args in ([*TINY, run], ["-m", *TINY, sweep]):
        proc = run_cli(args, cwd=tmp_path)
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert str(tmp_path) in line and "4 KiB free" in line and "16.0 MiB" in line, line
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_a_real_full_disk_at_the_start_is_one_line(tmp_path):
    """The same on a full tmpfs, where this machine lets a test mount one (root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the test above covers the check)")
    try:
        (disk / "filler").write_bytes(b"\0" * 60_000)
        proc = run_cli([*TINY, f"hydra.run.dir={disk}/run"], cwd=tmp_path)
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert f"hydra.run.dir={disk}/run is on a disk with" in line and "MiB" in line
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)
