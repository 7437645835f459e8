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
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.errors import RunFolderError
from mtltrain.rundir import follower_arguments, rank

# one worker builds this module's costly module-scoped fixture for all its tests
pytestmark = pytest.mark.xdist_group("distributed")

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-6
# <strategy>:<global batch>: 15 splits 7 / 8; 1 leaves rank 0 an empty shard
CASES = ["fixed:15", "uncertainty:15", "mgda:15", "mgda_ub:15", "pcgrad:15", "nash_mtl:15",
         "graddrop:15", "gradnorm:15", "famo:15", "dtp:15", "uncertainty:1",
         "mgda_ub:1"]  # fmt: skip


def torchrun(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
    alone = subprocess.run([sys.executable, script, str(folder / "one"), *CASES], cwd=folder,
                           capture_output=True, text=True, timeout=240)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    load = lambda name: torch.load(folder / name, weights_only=True)  # noqa: E731
    return load("two.rank0.pt"), load("two.rank1.pt"), load("one.rank0.pt")


@pytest.mark.parametrize("case", CASES)
def test_one_step_on_two_ranks_equals_one_process_on_the_global_batch(steps, case):
    rank0, _, alone = (s[case] for s in steps)
    assert rank0.keys() == alone.keys()
    differ = [k for k in alone if not close(rank0[k], alone[k])]
    assert not differ, {k: (rank0[k], alone[k]) for k in differ[:3]}
    # the step moved the model: the comparison is not of two untouched initialisations
    assert any(k.startswith("grad.") and rank0[k].abs().sum() > 0 for k in rank0)


def test_models_that_drift_apart_on_two_ranks_stop_the_run(steps):
    rank0, rank1, alone = steps
    assert bool(rank0["drift"]) and bool(rank1["drift"]) and "drift" not in alone


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


@pytest.mark.parametrize(
    "strategy", ["uncertainty", pytest.param("mgda_ub", marks=pytest.mark.slow)]
)
def test_a_run_under_torchrun_ends_where_one_process_does(tmp_path, strategy):
    # one validation sample: rank 0's shard of it is empty, and still takes part
    args = [*RUN, f"weighting={strategy}", "trainer.epochs=3", "trainer.validation=1"]
    done = torchrun("-m", "mtltrain", *args, "hydra.run.dir=two", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = subprocess.run([sys.executable, "-m", "mtltrain", *args, "hydra.run.dir=one"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    two, one = results_of(tmp_path / "two"), results_of(tmp_path / "one")
    assert_same_run(two, one)
    assert (two["processes"], one["processes"]) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # rank 1 wrote nothing
    assert done.stdout.count("learned σ") == 1  # one summary, rank 0's
    assert len(list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))) == 1


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


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds workers through /proc")
def test_sigterm_on_one_rank_checkpoints_once_and_the_run_resumes_under_torchrun(tmp_path):
    args = [*RUN, "trainer.epochs=120", "trainer.eval_every=40", "trainer.checkpoint_interval=0"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "mtltrain", *args, "hydra.run.dir=two"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as launcher:  # fmt: skip
        rank1 = worker_of_rank(launcher, 1)
        while not (tmp_path / "two" / "tb").exists() and launcher.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)  # into training
        os.kill(rank1, signal.SIGTERM)
        launcher.communicate(timeout=240)
    assert launcher.returncode != 0
    stopped = results_of(tmp_path / "two")
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"], stopped
    log = (tmp_path / "two" / "mtltrain.log").read_text()
    assert log.count("stopped by SIGTERM") == 1, log
    at = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=False)
    position, running = at["trainer"]["position"], at["trainer"]["running"]
    assert 0 < position["step"] < 120 * 17, position
    # the running train metrics count every rank's samples since the last evaluation
    since = (position["epoch"] % 40) * 270 + min(position["batch"] * 16, 270)  # last: 14
    assert running["counts"]["y1"] == since, (running["counts"], position)
    resumed = torchrun("-m", "mtltrain", "resume=two", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    alone = subprocess.run([sys.executable, "-m", "mtltrain", *args, "hydra.run.dir=one"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert_same_run(results_of(tmp_path / "two"), results_of(tmp_path / "one"))
    # the evaluations logged after the resume too, the running train metrics among them
    two, one = evaluations(tmp_path / "two"), evaluations(tmp_path / "one")
    assert two.keys() == one.keys() and "train/y1/rmse" in two
    for tag, logged in one.items():
        assert [step for step, _ in two[tag]] == [step for step, _ in logged], tag
        values = [v for _, v in logged]
        assert [v for _, v in two[tag]] == pytest.approx(values, rel=TOLERANCE, abs=TOLERANCE), tag


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
