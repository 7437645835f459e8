"""Data-parallel training under torchrun (gloo, 2 processes on the CPU) equals one process on
the same global batch: one step of loss- and gradient-based strategies (at the parameters and
at the representation), the state every rank holds, and whole runs through the CLI, including
a run stopped by SIGTERM on one rank and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ddp_steps
import pytest
import torch
from conftest import kept_process_state, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

import mtltrain.torchrun
from mtltrain.errors import ConfigError, RankLost, RunFolderError
from mtltrain.interrupts import StopSignals
from mtltrain.outputs._run_folder import follower_arguments, resume_command
from mtltrain.processes import rank

# one worker builds the costly module-scoped `steps` for all the tests that use it (and one
# `stopped_and_resumed` for its two); the other tests (each a torchrun of its own) are free to
# go to any worker
SHARES_STEPS = pytest.mark.xdist_group("distributed")

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-6
# <strategy>:<global batch>: 15 splits 7 / 8; 1 leaves rank 0 an empty shard
CASES = ["fixed:15", "uncertainty:15", "mgda:15", "mgda_ub:15", "pcgrad:15", "nash_mtl:15",
         "graddrop:15", "gradnorm:15", "famo:15", "dtp:15", "uncertainty:1",
         "mgda_ub:1"]  # fmt: skip


def torchrun(
    *args: str, cwd: Path, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 <args>`: processes of their own, as torchrun's
    ranks are."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True)


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> tuple[dict, dict, dict]:
    """The states after one step: rank 0's and rank 1's under torchrun, and one process's."""
    folder = tmp_path_factory.mktemp("ddp_steps")
    script = str(HERE / "ddp_steps.py")
    done = torchrun(script, str(folder / "two"), *CASES, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    with kept_process_state():  # one process: this one (no interpreter to start)
        ddp_steps.main(str(folder / "one"), *CASES)
    load = lambda name: torch.load(folder / name, weights_only=True)  # noqa: E731
    return load("two.rank0.pt"), load("two.rank1.pt"), load("one.rank0.pt")


@SHARES_STEPS
@pytest.mark.parametrize("case", CASES)
def test_one_step_on_two_ranks_equals_one_process_on_the_global_batch(steps, case):
    rank0, _, alone = (s[case] for s in steps)
    assert rank0.keys() == alone.keys()
    differ = [k for k in alone if not close(rank0[k], alone[k])]
    assert not differ, {k: (rank0[k], alone[k]) for k in differ[:3]}
    # the step moved the model: the comparison is not of two untouched initialisations
    assert any(k.startswith("grad.") and rank0[k].abs().sum() > 0 for k in rank0)


@SHARES_STEPS
def test_models_that_drift_apart_on_two_ranks_stop_the_run(steps):
    rank0, rank1, alone = steps
    assert bool(rank0["drift"]) and bool(rank1["drift"]) and "drift" not in alone


@SHARES_STEPS
@pytest.mark.parametrize("case", CASES)
def test_every_rank_holds_the_same_model_and_strategy_state(steps, case):
    rank0, rank1, _ = (s[case] for s in steps)
    same = lambda k: torch.equal(rank0[k], rank1[k]) or bool(rank0[k].isnan().all())  # noqa: E731
    assert all(same(k) for k in rank0 if not k.startswith("grad.")), case


def results_of(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def assert_same_run(a: dict, b: dict) -> None:
    assert a["status"] == b["status"] == "completed" and a["steps"] == b["steps"]
    assert a["metrics"].keys() == b["metrics"].keys()
    for k, v in a["metrics"].items():
        assert v == pytest.approx(b["metrics"][k], rel=TOLERANCE, abs=TOLERANCE), k
    for q, per in a["weighting"].items():
        assert per == pytest.approx(b["weighting"][q], rel=TOLERANCE, abs=TOLERANCE), q


RUN = ["weighting=uncertainty", "model=sin_hetero", "trainer.deterministic=true",
       "trainer.progress=false", "trainer.validation=0.1"]  # fmt: skip


@pytest.mark.slow
def test_a_gradient_based_run_under_torchrun_ends_where_one_process_does(tmp_path):
    """As the default suite's run (`stopped_and_resumed`), whole, with per-task gradients."""
    args = [*RUN, "weighting=mgda_ub", "trainer.epochs=3", "trainer.validation=1"]
    done, two, one = the_same_run_in_two_processes_and_one(args, tmp_path)
    assert (two["processes"], one["processes"]) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # rank 1 wrote nothing
    assert done.stdout.count("learned σ") == 1  # one summary, rank 0's
    assert len(list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_torchmetrics_metrics_under_torchrun_equal_one_process(tmp_path):
    """torchmetrics gathers its states over the ranks itself: a rank order statistic
    (Spearman's, list states) and a mean (MAE) equal one process's, an empty shard included."""
    metrics = (
        "+dataset.metrics.y=[rmse,{_target_:torchmetrics.regression.SpearmanCorrCoef},"
        "{_target_:torchmetrics.regression.MeanAbsoluteError}]"
    )
    args = [*RUN, "dataset=sin_hetero", "dataset.losses.y=[mse]", metrics, "trainer.epochs=2",
            "dataset.n_train=200", "dataset.n_test=101", "trainer.validation=1"]  # fmt: skip
    _, two, _ = the_same_run_in_two_processes_and_one(args, tmp_path)
    assert "test/y/spearman_corr_coef" in two["metrics"]


def the_same_run_in_two_processes_and_one(args, tmp_path):
    """`args` run under torchrun (2 processes, folder two/) and alone (one/); asserts the runs
    end the same (`assert_same_run`); returns torchrun's process and both results."""
    done = torchrun("-m", "mtltrain", *args, "hydra.run.dir=two", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = run_cli([*args, "hydra.run.dir=one"], tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    two, one = results_of(tmp_path / "two"), results_of(tmp_path / "one")
    assert_same_run(two, one)
    return done, two, one


def worker_of_rank(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the torchrun worker with RANK=`rank`."""
    for _ in range(600):
        for pid in _descendants(launcher.pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no worker of rank {rank}")


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


# one validation sample: rank 0's shard of it is empty, and still takes part. 30 epochs (570
# steps): SIGTERM comes 0.5 s into training, near step 70 on a busy 2-core machine
EPOCHS, EVAL_EVERY = 30, 10
STOPPED = [*RUN, f"trainer.epochs={EPOCHS}", f"trainer.eval_every={EVAL_EVERY}",
           "trainer.checkpoint_interval=0", "trainer.validation=1"]  # fmt: skip
TRAIN, BATCHES = 299, 19  # training samples (of 300), batches of 16 an epoch (the last: 11)


@dataclass
class StoppedAndResumed:
    """A run under torchrun stopped by SIGTERM on rank 1 (in `folder`/two), what it left, its
    resume under torchrun, and the same run alone (`folder`/one)."""

    folder: Path
    stopped: dict
    log: str
    checkpoint: dict
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory) -> StoppedAndResumed:
    """One torchrun launch stopped and one resumed, shared by the tests that read them."""
    if not Path("/proc/self/task").exists():
        pytest.skip("finds workers through /proc")
    folder = tmp_path_factory.mktemp("stopped")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "mtltrain", *STOPPED, "hydra.run.dir=two"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as launcher:  # fmt: skip
        rank1 = worker_of_rank(launcher, 1)
        while not (folder / "two" / "tb").exists() and launcher.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)  # into training
        os.kill(rank1, signal.SIGTERM)
        launcher.communicate(timeout=240)
    assert launcher.returncode != 0
    stopped = results_of(folder / "two")
    log = (folder / "two" / "mtltrain.log").read_text()
    checkpoint = torch.load(folder / "two" / "checkpoints" / "last.pt", weights_only=False)
    resumed = torchrun("-m", "mtltrain", "resume=two", cwd=folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    alone = run_cli([*STOPPED, "hydra.run.dir=one"], folder)
    assert alone.returncode == 0, alone.stderr[-3000:]
    return StoppedAndResumed(folder, stopped, log, checkpoint, resumed)


SHARES_STOPPED = pytest.mark.xdist_group("distributed_stopped")


@SHARES_STOPPED
def test_sigterm_on_one_rank_checkpoints_once_and_the_run_resumes_under_torchrun(
    stopped_and_resumed,
):
    run = stopped_and_resumed
    assert run.stopped["status"] == "interrupted" and "SIGTERM" in run.stopped["error"]
    assert run.log.count("stopped by SIGTERM") == 1, run.log
    position, running = run.checkpoint["trainer"]["position"], run.checkpoint["trainer"]["running"]
    assert 0 < position["step"] < EPOCHS * BATCHES, position
    # the running train metrics count every rank's samples since the last evaluation
    since = (position["epoch"] % EVAL_EVERY) * TRAIN + min(position["batch"] * 16, TRAIN)
    assert running["counts"]["y1"] == since, (running["counts"], position)
    assert_same_run(results_of(run.folder / "two"), results_of(run.folder / "one"))
    # the evaluations logged after the resume too, the running train metrics among them
    two, one = evaluations(run.folder / "two"), evaluations(run.folder / "one")
    assert two.keys() == one.keys() and "train/y1/rmse" in two
    for tag, logged in one.items():
        assert [step for step, _ in two[tag]] == [step for step, _ in logged], tag
        values = [v for _, v in logged]
        assert [v for _, v in two[tag]] == pytest.approx(values, rel=TOLERANCE, abs=TOLERANCE), tag


@SHARES_STOPPED
def test_a_run_under_torchrun_ends_where_one_process_does_and_rank_0_alone_writes(
    stopped_and_resumed,
):
    """The resumed run ends as the run alone (the test above); its processes, and what only
    rank 0 writes: the run folder, the summary, one TensorBoard file a launch."""
    run = stopped_and_resumed
    two, one = results_of(run.folder / "two"), results_of(run.folder / "one")
    assert_same_run(two, one)
    assert (two["processes"], one["processes"]) == (2, 1)
    assert sorted(p.name for p in run.folder.iterdir()) == ["one", "two"]  # rank 1 wrote nothing
    assert run.resumed.stdout.count("learned σ") == 1  # one summary, rank 0's
    assert len(list((run.folder / "two" / "tb").glob("events.out.tfevents.*"))) == 2


def evaluations(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every train/, validation/ and test/ scalar of a run's TensorBoard log, by step."""
    events = EventAccumulator(str(folder / "tb"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith(("train/", "validation/", "test/"))
    }


def test_the_command_lines_of_torchruns_processes(tmp_path, monkeypatch):
    args = ["weighting=mgda", "hydra.run.dir=mine"]
    assert follower_arguments(args, None) == args  # rank 0 writes where it was told
    scratch = follower_arguments(args, tmp_path / "scratch")
    assert f"hydra.run.dir={tmp_path / 'scratch'}" in scratch
    assert "hydra.run.dir=mine" not in scratch
    assert "hydra.output_subdir=null" in scratch and "weighting=mgda" in scratch
    with pytest.raises(RunFolderError, match="drop -m"):
        follower_arguments(["-m", "seed=0,1"], None)
    monkeypatch.setenv("RANK", "3")
    assert rank() == 0  # without torchrun's WORLD_SIZE, a stray RANK changes nothing
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank() == 3


# ---- what a user reads when a run under torchrun fails ---------------------------------------


def mtltrain_lines(stderr: str) -> list[str]:
    """mtltrain's own lines (torchrun's failure table quotes them indented)."""
    return [line for line in stderr.splitlines() if line.startswith("mtltrain:")]


def root_cause(stderr: str) -> str:
    """The "Root Cause" entry of torchrun's failure table."""
    return stderr.split("Root Cause (first observed failure):", 1)[1]


def test_a_bad_setting_under_torchrun_is_one_line_and_torchruns_table_names_it(tmp_path):
    missing = tmp_path / "no_mnist"
    args = ["dataset=mnist_mtl", "dataset.download=false", f"dataset.root={missing}"]
    quiet = {"LOGLEVEL": "ERROR", "TORCH_LOGS": "-distributed"}  # as docs/scaling-out.md says
    done = torchrun("-m", "mtltrain", *args, "hydra.run.dir=run", cwd=tmp_path, env=quiet)
    assert done.returncode == 1, done.stderr[-3000:]  # torchrun's own, whatever its workers'
    (line,) = mtltrain_lines(done.stderr)  # once, not once per rank
    assert line.startswith("mtltrain: error: MNIST not found: ") and str(missing) in line
    assert done.stderr.splitlines()[0] == line  # what the user reads first
    assert not [x for x in done.stderr.splitlines() if x.startswith("W")]  # torchrun's warnings
    cause = root_cause(done.stderr)
    assert "exitcode  : 2 " in cause  # a single process's code
    assert f"traceback : {line}" in cause  # torchrun's table names the error, not "<N/A>"


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds workers through /proc")
def test_a_rank_killed_mid_run_is_named_in_one_line_with_the_resume_command(tmp_path, killed):
    args = [*RUN, "trainer.epochs=60", "trainer.checkpoint_every=10",
            "trainer.checkpoint_interval=0"]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "mtltrain", *args, "hydra.run.dir=two"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    checkpoint = tmp_path / "two" / "checkpoints" / "last.pt"
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as launcher:  # fmt: skip
        worker = worker_of_rank(launcher, killed)
        while not checkpoint.exists() and launcher.poll() is None:
            time.sleep(0.05)
        os.kill(worker, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=240)
    assert launcher.returncode == 1, stderr[-3000:]
    (line,) = mtltrain_lines(stderr)
    prefix = "mtltrain: error: " if killed else "mtltrain: rank 1: error: "
    assert line.startswith(f"{prefix}rank {killed} of the 2 processes stopped mid-run (gloo: ")
    resume = f"torchrun --nproc_per_node=2 -m mtltrain resume={tmp_path / 'two'}"
    assert line.endswith(f"its last checkpoint, {checkpoint}, is kept: continue with: {resume}")
    resumed = torchrun(*resume.split()[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step" in resumed.stdout
    alone = run_cli([*args, "hydra.run.dir=one"], tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert_same_run(results_of(tmp_path / "two"), results_of(tmp_path / "one"))


@pytest.fixture
def rank_1(monkeypatch, tmp_path) -> Path:
    """This process as torchrun's rank 1 of 2; the error file torchrun would read."""
    error_file = tmp_path / "error.json"
    for name, value in [("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("RANK", "1"),
                        ("TORCHELASTIC_ERROR_FILE", str(error_file))]:  # fmt: skip
        monkeypatch.setenv(name, value)
    return error_file


def table_of(error_file: Path, rank: int, exitcode: int) -> str:
    """torchrun's failure table for one rank that failed with this error file."""
    failure = ProcessFailure(local_rank=rank, pid=1, exitcode=exitcode, error_file=str(error_file))
    return str(ChildFailedError("mtltrain", {rank: failure}))


def test_rank_0_prints_its_error_and_torchruns_table_shows_it(rank_1, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    mtltrain.torchrun.report(ConfigError("trainer.epochs=0 is not allowed"))
    assert capsys.readouterr().err == "mtltrain: error: trainer.epochs=0 is not allowed\n"
    assert "traceback : mtltrain: error: trainer.epochs=0 is not allowed" in table_of(rank_1, 0, 2)


def test_the_other_ranks_leave_an_error_of_every_rank_to_rank_0(rank_1, monkeypatch, capsys):
    """torchrun stops them (SIGTERM) once rank 0 has ended: they exit with its code, silent."""
    monkeypatch.setattr(mtltrain.torchrun, "sleep", lambda s: signal.raise_signal(signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        mtltrain.torchrun.report(ConfigError("trainer.epochs=0 is not allowed"))
    assert stopped.value.code == 2 and capsys.readouterr().err == ""
    assert signal.getsignal(signal.SIGTERM) is before
    table = table_of(rank_1, 1, 2)
    assert "traceback : mtltrain: rank 1: error: trainer.epochs=0 is not allowed" in table


def test_a_rank_that_rank_0_did_not_stop_prints_its_own_error(rank_1, monkeypatch, capsys):
    waited = []
    monkeypatch.setattr(mtltrain.torchrun, "sleep", waited.append)
    mtltrain.torchrun.report(ConfigError("only here"))
    assert waited == [mtltrain.torchrun.WAIT_FOR_RANK_0_S]
    assert capsys.readouterr().err == "mtltrain: rank 1: error: only here\n"
    monkeypatch.setattr(mtltrain.torchrun, "sleep", lambda s: pytest.fail("waited for rank 0"))
    mtltrain.torchrun.report(
        RankLost("rank 0 of the 2 processes stopped mid-run", 0)
    )  # rank 0 gone
    assert capsys.readouterr().err.startswith("mtltrain: rank 1: error: rank 0 of the 2")


def test_the_resume_command_under_torchrun_starts_as_many_processes(rank_1, monkeypatch):
    assert resume_command(Path("runs/a")) == "torchrun --nproc_per_node=2 -m mtltrain resume=runs/a"
    monkeypatch.setenv("WORLD_SIZE", "8")  # 2 machines of 4
    assert resume_command(Path("runs/a")).startswith("torchrun <the options it was started with>")
    monkeypatch.delenv("WORLD_SIZE")
    assert resume_command(Path("runs/a")) == "mtltrain resume=runs/a"


def test_stop_signals_leave_a_handler_set_while_they_were_active():
    """A rank that lost another ignores SIGTERM from then on, past the end of training."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        with StopSignals():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        with StopSignals():
            pass
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
