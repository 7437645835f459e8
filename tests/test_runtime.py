"""The process around a run (mtltrain.loop._runtime): how many CPU threads a run takes, by the size
of its step and the load other work puts on the cores."""

from __future__ import annotations

import pytest
import torch
from conftest import make_config, run_cli

from mtltrain.build import build_job
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

TWO_EPOCHS = ["trainer.epochs=2", "dataset.n_train=32", "dataset.n_test=16"]


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
    jobs = [build_job(make_config([*TWO_EPOCHS, f"seed={s}"])) for s in (0, 1)]
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
    proc = run_cli([*TWO_EPOCHS, f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path)
    assert "1 CPU thread (auto:" in proc.stdout
