"""Sweeps on Hydra's parallel launchers (the package's presets of hydra/launcher=joblib and
submitit_local): every job finishes in its own folder with the results it has alone, jobs
share the cores instead of each taking all of them, no progress bars, each summary names its
job; SLURM's warning signal checkpoints and is passed on to submitit, and a requeued job
resumes from its checkpoint."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_config, run_cli, write_fake_mnist
from omegaconf import OmegaConf

from mtltrain import build
from mtltrain.build import build_job
from mtltrain.errors import RunFolderError
from mtltrain.loop._runtime import spare_threads, usable_cores
from mtltrain.outputs._progress import ProgressCallback
from mtltrain.run import run

BIG_STEP = ["dataset=mnist_mtl", "dataset.download=false", "trainer.epochs=1"]  # auto: > 1 thread


def finished_jobs(sweep: Path) -> dict[str, dict]:
    found = {}
    for results in sorted(sweep.glob("*/results.json")):
        r = json.loads(results.read_text())
        assert r["status"] == "completed", r
        found[results.parent.name] = r
    return found


def threads_line(job: Path) -> str:
    return next(x for x in (job / "mtltrain.log").read_text().splitlines() if "CPU thread" in x)


def threads_of(job: Path) -> int:
    return int(re.search(r"(\d+) CPU thread", threads_line(job)).group(1))


def cores_left(job: Path) -> int:
    """The cores a job's run found not busy with other work, as its log line says."""
    busy, cores = re.search(r"([\d.]+) of (\d+) cores busy", threads_line(job)).groups()
    return spare_threads(usable_cores(), int(cores), float(busy))


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> str:
    return f"dataset.root={write_fake_mnist(tmp_path_factory.mktemp('mnist'))}"


def test_joblib_runs_jobs_side_by_side_on_shared_cores(tmp_path, mnist):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    common = [*BIG_STEP, mnist, "seed=0,1"]
    joblib = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *common]
    done = run_cli([*joblib, "hydra.sweep.dir=parallel"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated" not in done.stderr  # Hydra's schema-matching warning, once per job
    alone = run_cli(["-m", *common, "hydra.sweep.dir=alone"], tmp_path)
    assert alone.returncode == 0, alone.stderr[-2000:]
    parallel, sequential = finished_jobs(tmp_path / "parallel"), finished_jobs(tmp_path / "alone")
    assert list(parallel) == list(sequential) and len(parallel) == 2
    for name, r in parallel.items():
        assert r["metrics"] == pytest.approx(sequential[name]["metrics"], rel=1e-5)
        assert threads_of(tmp_path / "parallel" / name) <= max(1, usable_cores() // 2)
    for name in sequential:  # every core that other work (the test's other worker) leaves
        assert threads_of(tmp_path / "alone" / name) == cores_left(tmp_path / "alone" / name)
    for name in parallel:
        assert f"job {name}\n" in done.stdout


def test_jobs_of_a_parallel_launcher_show_no_progress_bar(monkeypatch):
    def progress_shown() -> bool | None:
        job = build_job(make_config(["trainer.progress=true"]))
        return next(cb for cb in job.callbacks if isinstance(cb, ProgressCallback)).show

    assert progress_shown() is None  # alone: on a terminal
    monkeypatch.setattr(build, "parallel_launcher", lambda: OmegaConf.create({"n_jobs": 2}))
    assert progress_shown() is False


def test_submitit_local_gives_each_job_its_cpus_per_task(tmp_path, mnist):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["-m", "hydra/launcher=submitit_local", *BIG_STEP, mnist, "seed=0,1",
            "hydra.sweep.dir=sweep"]  # fmt: skip
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = finished_jobs(tmp_path / "sweep")
    assert len(jobs) == 2
    for name in jobs:
        assert threads_of(tmp_path / "sweep" / name) == 1  # the preset's cpus_per_task
        log = (tmp_path / "sweep" / name / "mtltrain.log").read_text()
        assert "hydra.launcher.cpus_per_task=1" in log
    outputs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    assert all(f"job {name}\n" in outputs for name in jobs)


REQUEUE = """
import os, signal, sys, threading, time
from pathlib import Path
def requeue(signum, frame):  # what submitit does on SLURM's warning: requeue, then exit
    Path("requeued").write_text(str(signum))
    sys.exit(3)
signal.signal(signal.SIGUSR2, requeue)
def warn():  # SLURM's warning, once the job trains
    while not list(Path("sweep").glob("*/tb")):
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGUSR2)
threading.Thread(target=warn, daemon=True).start()
sys.argv = ["mtltrain", *sys.argv[1:]]
from mtltrain.cli import main
main()
"""


def test_slurm_warning_checkpoints_passes_on_to_submitit_and_the_requeued_job_resumes(
    tmp_path, monkeypatch, caplog
):
    """The job a process of its own: it is sent SIGUSR2, and submitit's handler exits it."""
    # 600 epochs of 4 batches: seconds of training, still going when the warning comes
    args = ["-m", "trainer.epochs=600", "dataset.n_train=64", "trainer.checkpoint_interval=0",
            "trainer.progress=false", "hydra.sweep.dir=sweep"]  # fmt: skip
    job = subprocess.run([sys.executable, "-c", REQUEUE, *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert job.returncode == 3, job.stderr[-2000:]
    assert (tmp_path / "requeued").read_text() == str(int(signal.SIGUSR2))
    (folder,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    stopped = json.loads((folder / "results.json").read_text())
    assert stopped["status"] == "interrupted" and "SIGUSR2" in stopped["error"]
    assert (folder / "checkpoints" / "last.pt").exists()
    # SLURM runs the requeued job's function again in the same folder: it resumes there
    cfg = make_config(stopped["overrides"])
    with pytest.raises(RunFolderError):  # what a job that was not requeued does with it
        run(cfg, folder, stopped["overrides"], stopped["choices"])
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    caplog.set_level(logging.INFO, logger="mtltrain.loop._trainer")
    run(cfg, folder, stopped["overrides"], stopped["choices"])
    finished = json.loads((folder / "results.json").read_text())
    assert finished["status"] == "completed" and finished["steps"] == 600 * 4
    assert "resumed at step" in caplog.text
