"""scripts/compare_strategies.py end to end on a tiny stand-in MNIST: both sweeps, the table
against an independent Δm% from the runs' results.json, the plots."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_fake_mnist

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_strategies.py"


def tiny_comparison(tmp_path: Path, runs: Path, seeds: int, strategies: str) -> list[str]:
    """The script's arguments for one epoch on a stand-in MNIST of 200 images, into `runs`."""
    root = write_fake_mnist(tmp_path / "mnist", n_train=200, n_test=64)
    return ["--quick", "--epochs", "1", "--seeds", str(seeds), "--strategies", strategies,
            "--mnist-root", str(root), "--runs", str(runs), "--no-docs",
            "--override", "trainer.progress=false"]  # fmt: skip


def test_the_comparison_of_strategies_against_single_task_learning(tmp_path):
    runs = tmp_path / "runs"
    args = tiny_comparison(tmp_path, runs, seeds=2, strategies="fixed,mgda,uncertainty")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    text = (runs / "multi_mnist_strategies.md").read_text()
    results = [json.loads(p.read_text()) for p in runs.rglob("results.json")]
    assert len(results) == 3 * 2 + 2 * 2 and all(r["status"] == "completed" for r in results)

    def accuracy(r, task):
        return r["metrics"][f"test/{task}/accuracy"]

    def alone(task):
        return statistics.fmean(
            accuracy(r, task) for r in results if f"dataset.tasks=[{task}]" in r["overrides"]
        )

    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 5 and cells[1].startswith("`"):
            rows[cells[1].strip("`")] = cells
    assert list(rows) == sorted(rows, key=lambda n: -float(rows[n][5].split()[0]))  # by Δm%
    assert [rows[n][0] for n in rows] == ["1", "2", "3"]
    for name, cells in rows.items():
        mine = [r for r in results if f"weighting={name}" in r["overrides"]
                and not any(o.startswith("dataset.tasks") for o in r["overrides"])]  # fmt: skip
        assert len(mine) == 2
        delta = statistics.fmean(
            50 * sum((accuracy(r, t) - alone(t)) / alone(t) for t in ("left", "right"))
            for r in mine
        )
        assert cells[5].split()[0] == f"{delta:+.2f}", (name, cells[5], delta)
        assert re.fullmatch(r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]( †)?", cells[5])
    assert rows["fixed"][7] == "96.46 / 94.99" and rows["mgda"][7] == "–"  # the paper's
    assert "single task: left" in text and "single task: right" in text
    for picture in ("multi_mnist_delta_m.png", "multi_mnist_pareto.png"):
        assert (runs / picture).read_bytes()[:4] == b"\x89PNG" and f"]({picture})" in text
    assert "Protocol: 1 epoch**" in text and "the last evaluation" in text
    assert all("trainer.select=last" in r["overrides"] for r in results)  # the same rule for all


@pytest.mark.slow  # two comparisons
def test_a_comparison_resumed_runs_its_failed_jobs_again_and_keeps_the_rest(tmp_path):
    runs = tmp_path / "runs"
    args = tiny_comparison(tmp_path, runs, seeds=1, strategies="fixed,uncertainty")

    def compare(*more: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), *args, *more], capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    assert compare().returncode == 0
    (broken,) = (runs / "multi_task").glob("*weighting-uncertainty/results.json")
    broken.write_text(json.dumps({"status": "failed", "error": "stand-in for a crash"}))
    kept = next((runs / "multi_task").glob("*weighting-fixed/results.json")).read_text()
    done = compare("--resume")
    assert done.returncode == 0, done.stderr
    assert json.loads(broken.read_text())["status"] == "completed"  # run again
    assert next((runs / "multi_task").glob("*weighting-fixed/results.json")).read_text() == kept
    (aside,) = (tmp_path / "runs.failed_before_resume").rglob("results.json")
    assert json.loads(aside.read_text())["error"] == "stand-in for a crash"
    text = (runs / "multi_mnist_strategies.md").read_text()
    assert "Runs that did not finish" not in text and "jobs that failed were run again" in text


def test_the_published_command_names_no_folder_of_the_machine_that_ran(monkeypatch):
    """The Reproduce line of a comparison leaves out --runs, --mnist-root and dataset.root
    (where files lay on the machine that ran) and keeps every other option in its order."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import repro_common

    argv = [str(SCRIPT), "--dataset", "qm9", "--runs", "/x/runs", "--quick",
            "--override", "dataset.root=/x/data", "--override", "hydra/launcher=joblib",
            "--mnist-root=/x/mnist", "--override=dataset.root=/x/y", "--threads", "1"]  # fmt: skip
    assert repro_common.command_line(argv) == (
        "python scripts/compare_strategies.py --dataset qm9 --quick "
        "--override hydra/launcher=joblib --threads 1"
    )
