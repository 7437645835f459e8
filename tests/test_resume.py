"""Nothing lost: exact resume after SIGKILL, SIGINT and SIGTERM (of a run, of a sweep, before
training); resuming a finished run, and refusing other settings; checkpoints by the clock and
written atomically; non-finite losses stop the run or are skipped and counted.

The runs that are sent a signal are processes of their own (`start`, `subprocess.Popen`), as a
signal must come from outside; the others run in this process (`run_cli`)."""

import errno
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import MTLTRAIN, make_config, run_cli, strict_json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain import atomic
from mtltrain.build import build_job
from mtltrain.data import two_slope
from mtltrain.errors import OutputError, TrainingError
from mtltrain.loop._nonfinite import NonfiniteGuard, NonfiniteWatch, nonfinite_error
from mtltrain.loop._trainer import train_alone
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.outputs import _run_folder as rundir
from mtltrain.outputs._checkpoints import CheckpointCallback
from mtltrain.outputs._event_writer import TensorBoardLog
from mtltrain.outputs._results import write_json
from mtltrain.run import run
from mtltrain.weighting import uncertainty

# one worker builds the costly module-scoped `reference` for all the tests that use it
SHARES_REFERENCE = pytest.mark.xdist_group("resume")

# ~1500 steps, a checkpoint every epoch: long enough to be stopped in the middle
RUN = [
    "trainer.epochs=80",
    "trainer.deterministic=true",
    "trainer.log_every=7",
    "trainer.checkpoint_every=1",
    "trainer.eval_every=3",
    "dataset.n_train=300",
]
TWO_EPOCHS = ["trainer.epochs=2", "dataset.n_train=32", "dataset.n_test=16"]
# RUN on 4 batches an epoch: for the tests that stop it at its first checkpoint and resume it
# in full, where what is checked is not the length of the run
RUN_OF_4_BATCHES = [*(o for o in RUN if not o.startswith("dataset.n_train=")), "dataset.n_train=64"]


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def curve(run_dir, tag="sigma/y1"):
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, left alone."""
    root = tmp_path_factory.mktemp("reference")
    proc = run_cli([*RUN, f"hydra.run.dir={root}/run"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def start(run_dir, cwd, overrides=RUN):
    """The run as a process of its own: the tests send it signals."""
    return subprocess.Popen(
        [MTLTRAIN, *overrides, f"hydra.run.dir={run_dir}"], cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_checkpoint(proc, run_dir, timeout=120):
    deadline = time.monotonic() + timeout
    while not rundir.checkpoint_file(run_dir).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def assert_same_run(run_dir, reference):
    got, want = results(run_dir), results(reference)
    assert got["status"] == "completed" and got["steps"] == want["steps"]
    assert got["metrics"] == want["metrics"]  # exactly, on CPU in deterministic mode
    assert got["weighting"] == want["weighting"]
    # TensorBoard continues from the checkpoint's step: the same points, none twice
    assert curve(run_dir) == curve(reference)
    assert curve(run_dir, "test/y1/rmse") == curve(reference, "test/y1/rmse")


def finished(run_dir):
    return (run_dir / "results.json").exists() and results(run_dir)["status"] == "completed"


def stop_mid_run(tmp_path, reference, signum):
    """Send `signum` to a fresh run at a random instant between its first checkpoint and
    about two thirds of the reference's training time. A run that got done first (a burst
    of speed) is started again with a shorter fuse. Returns its folder, exit code, stderr."""
    fuse = 0.6 * results(reference)["train_time_s"]
    for attempt in range(3):
        run_dir = tmp_path / f"run-{attempt}"
        proc = start(run_dir, tmp_path)
        wait_for_checkpoint(proc, run_dir)
        time.sleep(random.uniform(0.0, fuse))
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        if not finished(run_dir):
            return run_dir, proc.returncode, stderr
        fuse /= 3
    pytest.fail("the run ended every time before the signal reached it")


@SHARES_REFERENCE
def test_sigkill_at_a_random_step_then_resume_is_exact(tmp_path, reference):
    run_dir, returncode, _ = stop_mid_run(tmp_path, reference, signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    stopped_at = checkpoint.load(rundir.checkpoint_file(run_dir))["trainer"]["position"]["step"]
    resumed = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {stopped_at}" in resumed.stdout
    assert_same_run(run_dir, reference)


@SHARES_REFERENCE
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_checkpoint_then_resume_is_exact(tmp_path, reference, signum):
    run_dir, returncode, stderr = stop_mid_run(tmp_path, reference, signum)
    assert returncode == 128 + signum
    (line,) = stderr.strip().splitlines()
    assert f"stopped by {signal.Signals(signum).name}" in line
    assert f"mtltrain resume={run_dir}" in line
    assert results(run_dir)["status"] == "interrupted"
    state = checkpoint.load(rundir.checkpoint_file(run_dir))["trainer"]["position"]
    assert 0 < state["step"] < results(reference)["steps"]
    resumed = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference)


def test_resume_takes_a_checkpoint_file_and_extra_overrides(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, tmp_path, RUN_OF_4_BATCHES)
    wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    ckpt = rundir.checkpoint_file(run_dir)
    resumed = run_cli([f"resume={ckpt}", "trainer.epochs=90"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    done = results(run_dir)
    assert done["epochs"] == 90 and "trainer.epochs=90" in done["overrides"]


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, tmp_path)
    wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    before = rundir.checkpoint_file(run_dir).read_bytes()
    resumed = run_cli([f"resume={run_dir}", "trainer.epochs=1"], cwd=tmp_path)
    assert resumed.returncode == 2
    (line,) = resumed.stderr.strip().splitlines()
    assert "trainer.epochs=1 is not allowed" in line and "resume with trainer.epochs above" in line
    assert rundir.checkpoint_file(run_dir).read_bytes() == before  # the checkpoint is untouched


def test_a_signal_stops_a_sweep_with_the_command_that_continues_it(tmp_path):
    """SIGTERM in job 0: it checkpoints, no later job starts, exit 143, and the printed
    command (resume_sweep=true) resumes job 0 and runs job 1. A process of its own: it is sent
    SIGTERM."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "trainer.epochs=500", "dataset.n_train=32", "dataset.n_test=16",
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
    line, as during training, not a process killed without a word (-15). A process of its own:
    it is sent SIGTERM."""
    folder = tmp_path / "out"
    where = f"hydra.sweep.dir={folder}" if sweep else f"hydra.run.dir={folder}"
    args = [*(["-m", "seed=0,1"] if sweep else []), "trainer.epochs=500", "dataset.n_train=32",
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


# ---- resuming a finished run -----------------------------------------------------------------


def test_a_finished_run_resumed_with_more_epochs_trains_on(tmp_path):
    done = tmp_path / "done"
    assert run_cli([*TWO_EPOCHS, f"hydra.run.dir={done}"], cwd=tmp_path).returncode == 0
    steps = strict_json(done / "results.json")["steps"]
    proc = run_cli([f"resume={done}", "trainer.epochs=4"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = strict_json(done / "results.json")
    assert results["status"] == "completed" and results["epochs"] == 4
    assert results["steps"] == 2 * steps


def finished_run_copied(tmp_path: Path) -> Path:
    """A new run folder holding the last checkpoint of a finished TWO_EPOCHS run."""
    done = tmp_path / "done"
    assert run_cli([*TWO_EPOCHS, f"hydra.run.dir={done}"], cwd=tmp_path).returncode == 0
    checkpoints = tmp_path / "stopped" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.pt").write_bytes((done / "checkpoints" / "last.pt").read_bytes())
    return checkpoints.parent


@pytest.mark.parametrize(
    ("setting", "differs"),
    [("model.hidden=[64]", "model.hidden=[512] → [64]"),
     ("dataset.n_train=64", "dataset.n_train=32 → 64")],
)  # fmt: skip
def test_resuming_with_other_settings_is_refused_saying_what_differs(tmp_path, setting, differs):
    stopped = finished_run_copied(tmp_path)
    proc = run_cli([f"resume={stopped}", "trainer.epochs=3", setting], cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert differs in line and "only trainer.* may change" in line
    assert sorted(p.name for p in stopped.iterdir()) == ["checkpoints"]  # nothing written
    longer = run_cli([f"resume={stopped}", "trainer.epochs=3"], cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr


# ---- checkpoints: when, and written atomically --------------------------------------------


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
        run(make_config(TWO_EPOCHS), tmp_path / "run")
    assert not list(tmp_path.rglob("*.tmp"))
    assert strict_json(tmp_path / "run" / "results.json")["status"] == "failed"


def test_a_write_killed_at_its_worst_moments_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    checkpoint.save(path, {"step": 1, "weights": torch.arange(1000.0)})

    def dies_half_way(obj, f):  # the process dies with half the new file written
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(torch, "save", dies_half_way)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(path, {"step": 2})
    assert checkpoint.load(path)["step"] == 1

    def dies_before_rename(src, dst):  # the new file is complete, the rename never happens
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(os, "replace", dies_before_rename)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(path, {"step": 3})
    assert checkpoint.load(path)["step"] == 1
    checkpoint.save(path, {"step": 4})  # and the next write goes through
    assert checkpoint.load(path)["step"] == 4


def test_sigkill_during_checkpoint_writes_never_breaks_the_last_one(tmp_path):
    """A process rewriting a large checkpoint in a loop, killed at random instants."""
    path = tmp_path / "checkpoints" / "last.pt"
    writer = (
        "import sys, torch; from pathlib import Path\n"
        "from mtltrain.outputs import _checkpoint_file as checkpoint\n"
        "path = Path(sys.argv[1]); big = torch.randn(4_000_000); n = 0\n"
        "while True:\n"
        "    n += 1; checkpoint.save(path, {'n': n, 'big': big})\n"
    )
    rng = random.Random(0)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(path)])
        deadline = time.monotonic() + 120
        while not path.exists():
            assert proc.poll() is None, "the writer died before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        state = checkpoint.load(path)
        assert state["n"] >= 1 and state["big"].shape == (4_000_000,)


# ---- non-finite losses --------------------------------------------------------------------

TINY = ["dataset.n_train=64", "dataset.n_test=16", "trainer.epochs=6"]


@pytest.mark.parametrize(
    ("value", "overrides"),
    [
        (math.nan, []),
        (math.inf, []),
        # a weight of 0 does not hide it: 0·Inf and 0·NaN are NaN
        (math.inf, ["weighting=fixed", "weighting.weights=[1.0,0.0]"]),
    ],
    ids=["nan", "inf", "inf-weight-0"],
)
def test_a_non_finite_loss_stops_the_run(tmp_path, monkeypatch, value, overrides):
    """Targets of y2 that are not finite (a data set's fault: its settings must be finite)."""
    build = two_slope.build

    def broken(**kwargs):
        data = build(**kwargs)
        data.train.targets["y2"][:] = value
        return data

    monkeypatch.setattr(two_slope, "build", broken)
    with pytest.raises(TrainingError) as err:
        run(make_config([*overrides, *TINY]), tmp_path / "r")
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    assert "non-finite loss in task y2" in str(err.value) and "at step 1," in str(err.value)
    assert "last good checkpoint: none yet" in str(err.value)
    assert "trainer.nonfinite=skip" in str(err.value)
    assert results(tmp_path / "r")["status"] == "failed"


def test_a_non_finite_weight_stops_the_run_with_one_line(tmp_path, monkeypatch):
    """σ² = e^−1000 makes the weight of a finite loss infinite at the first step (a setting
    the config check refuses: here the strategy starts there as if it had trained there)."""
    monkeypatch.setattr(uncertainty, "initial_log_var", lambda n, init: torch.full((n,), -1e3))
    with pytest.raises(TrainingError) as err:
        run(make_config(TINY), tmp_path / "r")
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    assert "non-finite weight of term y1" in str(err.value) and "at step 1," in str(err.value)
    assert results(tmp_path / "r")["status"] == "failed"


def poisoned(build, rows):
    """two_slope.build with NaN targets of y1 in `rows` of the train split."""

    def wrapped(**kwargs):
        data = build(**kwargs)
        data.train.targets["y1"][rows] = math.nan
        return data

    return wrapped


@pytest.mark.parametrize("watched", [False, True], ids=["checked-each-step", "watched"])
def test_a_non_finite_loss_names_the_last_good_checkpoint(tmp_path, watched):
    """Checked each step (CPU), or watched on the device and read at the next log,
    evaluation or checkpoint (what CUDA does, here forced on the CPU): the same error."""
    cfg = make_config([*TINY, "trainer.nonfinite=stop"])
    ckpt = rundir.checkpoint_file(tmp_path)
    with TensorBoardLog(tmp_path) as tb:
        job = build_job(cfg, tmp_path, [tb])
        if watched:
            (guard,) = (cb for cb in job.callbacks if isinstance(cb, NonfiniteGuard))
            guard.watch = NonfiniteWatch(len(job.terms), torch.device("cpu"))
        job.epochs = 2
        train_alone(job)  # two good epochs, checkpointed
        with torch.no_grad():
            job.model.weights[0][0, 0, 0] = math.nan  # y1's network breaks
        job.epochs = 4
        with pytest.raises(TrainingError) as err:
            train_alone(job)
    message = str(err.value)
    assert "task y1" in message and f"{ckpt} (step 8)" in message and "at step 9," in message
    assert checkpoint.load(ckpt)["trainer"]["position"]["step"] == 8  # still the good one


def test_skip_mode_skips_and_counts_non_finite_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(two_slope, "build", poisoned(two_slope.build, slice(0, 3)))
    skip = ["trainer.nonfinite=skip", "trainer.max_skipped=1", "trainer.log_every=1"]
    value = run(make_config([*TINY, *skip]), tmp_path)
    done = results(tmp_path)
    # rows 0-2 land in some batch of each epoch: at least one skipped step per epoch
    assert 6 <= done["nonfinite_steps"] <= 18 and done["steps"] == 24
    assert math.isfinite(value) and all(
        math.isfinite(v) for v in done["weighting"]["sigma"].values()
    )
    counted = curve(tmp_path, "nonfinite_steps")
    assert counted[-1][1] == done["nonfinite_steps"] and counted[0][1] <= counted[-1][1]


def test_a_total_that_overflows_is_named_in_one_line():
    """Finite weighted losses whose sum overflows: no term to blame, the sum is named."""
    terms = [SimpleNamespace(task="y1", name="y1_mse"), SimpleNamespace(task="y2", name="y2_mse")]
    big = torch.tensor([3e38, 3e38])
    err = nonfinite_error(terms, torch.ones(2), big, step=7, epoch=1, last_checkpoint=None)
    assert "overflow in their sum at step 7" in str(err) and "\n" not in str(err)
    one = nonfinite_error(terms, torch.tensor([1.0, math.inf]), torch.tensor([1.0, math.inf]),
                          step=3, epoch=1, last_checkpoint=None)  # fmt: skip
    assert "non-finite loss in task y2 (term y2_mse: loss inf, weighted inf) at step 3" in str(one)


def test_a_run_that_skips_too_much_fails_with_valid_json(tmp_path):
    """A run that skips most of its steps (lr=1e3: about 107 of 120) fails, with one line and a
    results.json that is valid JSON, instead of completing with σ = inf."""
    args = ["trainer.optimizer.lr=1e3", "trainer.nonfinite=skip", "trainer.epochs=30",
            "dataset.n_train=64", f"hydra.run.dir={tmp_path}/r"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()
    assert "trainer.max_skipped=0.1" in line and "skipped as non-finite" in line
    assert strict_json(tmp_path / "r" / "results.json")["status"] == "failed"


def test_results_json_has_no_infinity(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"sigma": {"y1": float("inf"), "y2": 0.5}, "x": [float("nan")]})
    assert strict_json(path) == {"sigma": {"y1": None, "y2": 0.5}, "x": [None]}
