"""What users hit when they tried the tool: each case reproduced as they met it."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import MTLTRAIN, make_config, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mtltrain import atomic
from mtltrain.build import build_job
from mtltrain.config._compose import config_dir
from mtltrain.errors import ConfigError, OutputError, RunFolderError
from mtltrain.loop import _runtime as runtime
from mtltrain.loop import _stacked as stacked
from mtltrain.loop._runtime import (
    SMALL_STEP_FLOPS,
    CpuSample,
    choose_threads,
    cpu_ticks,
    other_work,
    spare_threads,
)
from mtltrain.loop._stacked import StackedStep
from mtltrain.loop._trainer import train_alone
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.outputs import _run_folder as rundir
from mtltrain.outputs._checkpoints import CheckpointCallback
from mtltrain.outputs._progress import ProgressCallback
from mtltrain.outputs._results import write_json
from mtltrain.run import run

TINY = ["trainer.epochs=2", "dataset.n_train=32", "dataset.n_test=16"]


def strict_json(path: Path) -> dict:
    """results.json, refusing NaN and Infinity (which are not JSON)."""

    def refuse(name: str) -> float:
        raise ValueError(f"{name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


# ---- sweeps ---------------------------------------------------------------------------------


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


def test_a_signal_stops_a_sweep_with_the_command_that_continues_it(tmp_path):
    """SIGTERM in job 0: it checkpoints, no later job starts, exit 143, and the printed
    command (resume_sweep=true) resumes job 0 and runs job 1."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "trainer.epochs=2000", "dataset.n_train=32", "dataset.n_test=16",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    first = subprocess.Popen(
        [MTLTRAIN, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(sweep.glob("0_*/tb")):  # job 0 is training
        assert first.poll() is None and time.monotonic() < deadline, first.stderr
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM
    (line,) = stderr.strip().splitlines()
    assert line.startswith("mtltrain: error: SIGTERM stopped the sweep in job 0_"), line
    assert [rundir.status(j) for j in rundir.jobs_in(sweep)] == ["interrupted"]  # no job 1
    command = shlex.split(line.partition("continue the sweep with: ")[2])
    assert command[0] == "mtltrain" and "resume_sweep=true" in command
    more = run_cli(command[1:], cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert [rundir.status(j) for j in rundir.jobs_in(sweep)] == ["completed", "completed"]


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_sigterm_before_training_is_one_line_too(tmp_path, sweep):
    """SIGTERM while the run sets up (its folder made, training not begun): exit 143 with one
    line, as during training, not a process killed without a word (-15)."""
    folder = tmp_path / "out"
    where = f"hydra.sweep.dir={folder}" if sweep else f"hydra.run.dir={folder}"
    args = [*(["-m", "seed=0,1"] if sweep else []), "trainer.epochs=2000", "dataset.n_train=32",
            "dataset.n_test=16", where]  # fmt: skip
    proc = subprocess.Popen(
        [MTLTRAIN, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(folder.rglob(".hydra")):  # Hydra has made the run's folder
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("mtltrain: error: ") and "SIGTERM" in line, line
    if sweep:  # the command it prints finishes the sweep
        command = shlex.split(line.partition("continue the sweep with: ")[2])
        assert run_cli(command[1:], cwd=tmp_path).returncode == 0
        assert [rundir.status(j) for j in rundir.jobs_in(folder)] == ["completed"] * 2


def test_a_failed_stacked_job_is_one_line_and_the_others_finish(tmp_path):
    """hydra/launcher=vectorized: one job with a setting refused, one whose loss goes NaN."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=vectorized", "trainer.optimizer.lr=1e-3,1e30",
            "weighting.init_log_var=0,1e6", *TINY, f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "HydraConfig" not in proc.stderr and len(lines) == 4, proc.stderr
    jobs = rundir.jobs_in(sweep)
    assert [rundir.status(j) for j in jobs] == ["completed", "failed", "failed", "failed"]
    for job, line in zip(jobs[1:], lines, strict=False):
        assert line.startswith(f"mtltrain: error: job {job.name}: "), line
    assert "weighting.init_log_var=1000000.0 is not allowed" in lines[0]
    assert "non-finite loss" in lines[1]
    assert lines[3].startswith("mtltrain: 3 of 4 jobs did not finish")


def test_a_finished_run_resumed_with_more_epochs_trains_on(tmp_path):
    done = tmp_path / "done"
    assert run_cli([*TINY, f"hydra.run.dir={done}"], cwd=tmp_path).returncode == 0
    steps = strict_json(done / "results.json")["steps"]
    proc = run_cli([f"resume={done}", "trainer.epochs=4"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = strict_json(done / "results.json")
    assert results["status"] == "completed" and results["epochs"] == 4
    assert results["steps"] == 2 * steps


def test_help_says_what_mtltrain_is_how_to_compare_and_what_each_group_chooses(tmp_path):
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    text = proc.stdout
    assert text.startswith("mtltrain: train multi-task networks") and "mtltrain-report" in text
    conf = config_dir()
    groups = sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name != "hydra")
    for group in [*groups, "hydra/launcher", "hydra/sweeper"]:
        assert f"\n  {group} " in text, group  # its line on what it chooses
    for option in (conf / "hydra" / "launcher").glob("*.yaml"):
        assert option.stem in text


def test_an_import_error_in_a_users_target_shows_its_cause(tmp_path, monkeypatch):
    package = tmp_path / "mytab"
    package.mkdir()
    (package / "__init__.py").write_text("import pandas_that_is_not_installed\n")
    (package / "data.py").write_text("def build(**settings): ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"mytab.data.build cannot be loaded: Module.*"
                       r"No module named 'pandas_that_is_not_installed'"):  # fmt: skip
        make_config(["dataset._target_=mytab.data.build"])


# ---- errors outside the tool's own checks ---------------------------------------------------


UNEXPECTED = """
import sys
from mtltrain import cli
from mtltrain.data import two_slope
def build(**settings):
    return [][0]  # an IndexError inside the data set's code: not a check of ours
two_slope.build = build
sys.argv = ["mtltrain", *sys.argv[1:]]
cli.main()
"""


def test_an_unexpected_error_is_one_line_with_a_failed_results_json(tmp_path):
    """`mtltrain`'s main with a data set whose build raises IndexError."""
    proc = subprocess.run(
        [sys.executable, "-c", UNEXPECTED, *TINY, f"hydra.run.dir={tmp_path}/r"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("mtltrain: error: IndexError") and "mtltrain.log" in line
    results = strict_json(tmp_path / "r" / "results.json")
    assert results["status"] == "failed" and "IndexError" in results["error"]
    log = (tmp_path / "r" / "mtltrain.log").read_text()
    assert "Traceback" in log and "IndexError" in log


def test_a_disk_that_fills_during_a_run_is_one_line_and_leaves_no_stray_file(tmp_path, monkeypatch):
    """The checkpoint is the first file a run writes whole; torch's own zip writer is not in
    the way (it would say "unexpected pos"): the bytes are written by write_atomically."""

    fsync = os.fsync

    def checkpoint_finds_no_space(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f".last.pt.{os.getpid()}.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", checkpoint_finds_no_space)
    with pytest.raises(OutputError, match=r"last.pt \(No space left on device: it needs \d+"):
        run(make_config(TINY), tmp_path / "run")
    assert not list(tmp_path.rglob("*.tmp"))
    assert strict_json(tmp_path / "run" / "results.json")["status"] == "failed"


FULL_DISK = """
import shutil, sys
from mtltrain import cli
shutil.disk_usage = lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096)
sys.argv = ["mtltrain", *sys.argv[1:]]
cli.main()
"""


def test_a_full_disk_at_the_start_is_one_line_naming_the_folder_and_the_space(tmp_path):
    """`mtltrain`'s main in a process whose disk reports 4 KiB free: a run and a sweep."""
    run, sweep = f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/s"
    for args in ([*TINY, run], ["-m", *TINY, sweep]):
        proc = subprocess.run(
            [sys.executable, "-c", FULL_DISK, *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
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


def test_a_read_only_folder_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(RunFolderError, match=r"run cannot be written: .* read-only"):
        rundir.check_writable(tmp_path / "run", "hydra.run.dir")
    assert not (tmp_path / "run").exists()


# ---- non-finite steps -----------------------------------------------------------------------


def test_a_run_that_skips_too_much_fails_with_valid_json(tmp_path):
    """The issue's run: 107 of 120 steps skipped, status completed, σ = inf in the JSON."""
    args = ["trainer.optimizer.lr=1e3", "trainer.nonfinite=skip", "trainer.epochs=30",
            "dataset.n_train=64", f"hydra.run.dir={tmp_path}/r"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()
    assert "trainer.max_skipped=0.1" in line and "skipped as non-finite" in line
    assert strict_json(tmp_path / "r" / "results.json")["status"] == "failed"


def test_results_json_has_no_infinity():
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"mtltrain-{os.getpid()}-results.json"
    try:
        write_json(path, {"sigma": {"y1": float("inf"), "y2": 0.5}, "x": [float("nan")]})
        assert strict_json(path) == {"sigma": {"y1": None, "y2": 0.5}, "x": [None]}
    finally:
        path.unlink(missing_ok=True)


# ---- run folders ----------------------------------------------------------------------------


def test_two_runs_on_one_folder_the_second_stops_with_one_line(tmp_path):
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


def finished_run_copied(tmp_path: Path) -> Path:
    """A new run folder holding the last checkpoint of a finished TINY run."""
    done = tmp_path / "done"
    assert run_cli([*TINY, f"hydra.run.dir={done}"], cwd=tmp_path).returncode == 0
    checkpoints = tmp_path / "stopped" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.pt").write_bytes((done / "checkpoints" / "last.pt").read_bytes())
    return checkpoints.parent


def test_resuming_with_another_model_says_what_differs(tmp_path):
    stopped = finished_run_copied(tmp_path)
    proc = run_cli([f"resume={stopped}", "trainer.epochs=3", "model.hidden=[64]"],
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "model.hidden=[512] → [64]" in line and "only trainer.* may change" in line
    assert sorted(p.name for p in stopped.iterdir()) == ["checkpoints"]  # nothing written


# ---- speed a user feels ---------------------------------------------------------------------


@pytest.fixture
def four_cores(monkeypatch) -> list[float]:
    """A machine of 4 usable cores, torch started on 4 threads, and a load reading (cores busy
    with other work) that the test sets in the list returned."""
    load = [0.0]
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.setattr(runtime, "STARTING_THREADS", 4)
    monkeypatch.setattr(stacked, "STARTING_THREADS", 4)
    monkeypatch.setattr(runtime, "busy_cores", lambda: load[0])
    threads = torch.get_num_threads()
    yield load
    torch.set_num_threads(threads)


def big_step() -> float:
    return SMALL_STEP_FLOPS * 10  # a forward pass of 1000 MFLOP


def test_threads_follow_the_size_of_a_step(four_cores):
    assert choose_threads(3, big_step) == (3, "trainer.threads")
    threads, why = choose_threads("auto", lambda: SMALL_STEP_FLOPS / 10)
    assert threads == 1 and "MFLOP" in why
    assert choose_threads("auto", big_step)[0] == 4


def test_auto_leaves_the_cores_other_work_keeps_busy(four_cores):
    """A busy machine: threads waiting for busy cores would hold up every parallel region."""
    for load, threads in [(0.0, 4), (0.4, 4), (1.6, 2), (3.0, 1), (4.0, 1), (9.0, 1)]:
        four_cores[0] = load
        why = f"auto: 1e+03 MFLOP per forward pass, {load:.1f} of 4 cores busy with other work"
        assert choose_threads("auto", big_step) == (threads, why)
    four_cores[0] = 4.0
    threads, why = choose_threads("auto", big_step, steady=True)  # trainer.deterministic
    assert threads == 4 and why.endswith("other work not measured (trainer.deterministic)")
    assert choose_threads(3, big_step) == (3, "trainer.threads")


def test_a_stack_on_a_busy_machine_takes_the_cores_left(four_cores, caplog):
    jobs = [build_job(make_config([*TINY, f"seed={s}"])) for s in (0, 1)]
    for load, threads in [(4.0, 1), (0.0, 4)]:
        four_cores[0] = load
        with caplog.at_level("INFO", logger="mtltrain.loop._stacked"):
            StackedStep(jobs)
        assert torch.get_num_threads() == threads
        line = f"2 jobs stacked, on {threads} CPU thread(s) (auto, {load:.1f} of 4 cores busy"
        assert line in caplog.text


def test_the_load_is_the_cpus_time_not_idle_less_this_process():
    stat = (
        "cpu  60 0 40 100 0 0 0 0 0 0\ncpu0 30 0 10 50 10 0 0 0 0 0\ncpu1 30 0 30 50 0 0 0 0 0 0\n"
    )
    assert cpu_ticks(stat, {0}) == (40, 100)  # idle and iowait are not busy
    assert cpu_ticks(stat, {0, 1}) == (100, 210)
    before = CpuSample(busy_ticks=100, all_ticks=210, wall_s=1.0, own_s=3.0)
    all_busy = CpuSample(busy_ticks=110, all_ticks=220, wall_s=1.05, own_s=3.0)
    assert other_work(before, all_busy, cores=2) == pytest.approx(2.0)
    own_half = all_busy._replace(own_s=3.05)  # this process kept one core busy itself
    assert other_work(before, own_half, cores=2) == pytest.approx(1.0)
    idle = CpuSample(busy_ticks=100, all_ticks=220, wall_s=1.05, own_s=3.05)
    assert other_work(before, idle, cores=2) == 0.0
    assert spare_threads(wanted=8, cores=8, busy=2.6) == 5


def test_the_two_slope_run_takes_one_thread(tmp_path):
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path)
    assert "1 CPU thread (auto:" in proc.stdout


def test_checkpoints_come_by_the_clock_and_at_the_end(monkeypatch, tmp_path):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    written = []
    monkeypatch.setattr(
        checkpoint, "save", lambda path, state: written.append(state["trainer"]["epoch"])
    )

    class Job:
        step, epochs, epoch = 0, 6, 0

        def state_dict(self) -> dict:
            return {"epoch": self.epoch}

    job = Job()
    saver = CheckpointCallback(tmp_path / "last.pt", every=0, interval=60, run_info={})
    saver.on_fit_start(job)
    for epoch, now in zip(range(1, 7), [20, 50, 70, 100, 135, 140], strict=True):
        clock[0], job.epoch = now, epoch
        saver.on_epoch_end(job)
    assert written == [3, 5, 6]  # 70 s ≥ 60 s; 135 − 70 ≥ 60; the end


def test_the_cli_starts_without_torch_and_runs_as_a_module(tmp_path):
    code = "import sys, mtltrain.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "mtltrain", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "mtltrain" in proc.stdout


# ---- what users see -------------------------------------------------------------------------


def tensorboard(run_dir: Path, run: str = "tb") -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / run), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_shows_what_sets_the_run_apart_and_its_last_step(tmp_path):
    args = [*TINY, "weighting=uncertainty", "trainer.log_every=1000", f"hydra.run.dir={tmp_path}/r"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    acc = tensorboard(tmp_path / "r")
    scalars = set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("sigma/y1")] == [4]  # the last step, though 4 < 1000
    assert "lr" not in scalars and "nonfinite_steps" not in scalars  # constant series
    assert "config/text_summary" in acc.Tags()["tensors"]
    hparams = tensorboard(tmp_path / "r", "tb/hparams")  # the HParams entry: its own sub-run
    assert {"test/y1/rmse", "weighting/sigma/y1", "weighting/weight/y2"} <= set(
        hparams.Tags()["scalars"]
    )
    content = hparams.PluginTagToContent("hparams")
    infos = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
    (start,) = (i.session_start_info for i in infos if i.HasField("session_start_info"))
    assert set(start.hparams) == {"dataset", "model", "trainer", "weighting", "seed",
                                  "trainer.epochs", "dataset.n_train", "dataset.n_test",
                                  "trainer.log_every"}  # fmt: skip


def test_the_log_file_holds_the_summary_and_the_error(tmp_path):
    assert run_cli([*TINY, f"hydra.run.dir={tmp_path}/ok"], cwd=tmp_path).returncode == 0
    assert "learned σ" in (tmp_path / "ok" / "mtltrain.log").read_text()
    bad = run_cli([*TINY, "weighting=fixed", "weighting.weights=[1,1,1]",
                   f"hydra.run.dir={tmp_path}/bad"], cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2
    assert "has 3 values but there are 2" in (tmp_path / "bad" / "mtltrain.log").read_text()


def test_a_users_own_config_group_works_for_a_single_run(tmp_path):
    own = tmp_path / "my_configs" / "weighting"
    own.mkdir(parents=True)
    (own / "tenth.yaml").write_text(
        "_target_: mtltrain.weighting.fixed.FixedWeighting\nweights: 0.1\n"
    )
    args = [*TINY, f"hydra.searchpath=[file://{own.parent}]", "weighting=tenth",
            f"hydra.run.dir={tmp_path}/r"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    weights = strict_json(tmp_path / "r" / "results.json")["weighting"]["weight"]
    assert weights == pytest.approx({"y1": 0.1, "y2": 0.1})


def test_one_progress_bar_over_the_run_on_a_terminal_and_none_elsewhere(tmp_path, monkeypatch):
    import io

    from mtltrain.build import build_job

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    job = build_job(make_config([*TINY, "trainer.log_every=1"]))
    train_alone(job)
    shown = screen.getvalue()
    assert "train:" in shown and "0/4 " in shown  # one bar over 2 epochs × 2 steps
    assert "epoch" not in shown  # not one bar per epoch
    (bar,) = (cb.bar for cb in job.callbacks if isinstance(cb, ProgressCallback))
    assert bar.n == bar.total == 4 and "loss=" in bar.postfix
    monkeypatch.undo()
    quiet = run_cli([*TINY, f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""  # not a terminal: no bar at all


def test_a_constant_series_is_logged_where_it_starts_and_at_the_end(tmp_path):
    args = [*TINY, "weighting=fixed", "trainer.log_every=1", f"hydra.run.dir={tmp_path}/r"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    acc = tensorboard(tmp_path / "r")
    assert [e.step for e in acc.Scalars("weight/y1")] == [1, 4]
    assert [e.step for e in acc.Scalars("loss_raw/y1")] == [1, 2, 3, 4]


def test_a_sweep_job_gets_the_same_checks_as_a_single_run(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.optimizer._target_=torch.optim.LBFGS", "seed=0,1",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 1
    for job in rundir.jobs_in(sweep):
        error = strict_json(job / "results.json")["error"]
        assert "needs a closure" in error and "please report" not in error


def test_resuming_with_other_settings_is_refused(tmp_path):
    stopped = finished_run_copied(tmp_path)
    proc = run_cli([f"resume={stopped}", "trainer.epochs=3", "dataset.n_train=64"],
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "dataset.n_train=32 → 64" in line and "only trainer.* may change" in line
    longer = run_cli([f"resume={stopped}", "trainer.epochs=3"], cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
