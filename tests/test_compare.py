"""mtltrain-compare, in this process, on a tiny data set of the user's own (a folder with its
module and its configs, --config-dir): the plan within a budget said before anything trains,
both sweeps on the stacked launcher, the table against an independent Δm% from the runs'
results.json, the plots; resume after an interruption; the budget's plan; refusals.
scripts/compare_strategies.py, the pages' caller of the command."""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import in_process, snapshot, write_fake_mnist

from mtltrain import compare
from mtltrain.compare import _budget as budget
from mtltrain.compare import _sweeps as sweeps
from mtltrain.compare._budget import Probe, fit, parse_budget
from mtltrain.errors import ConfigError

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_strategies.py"
PROG = str(Path(sys.executable).with_name("mtltrain-compare"))

TOY = '''
"""Two regression tasks y_k = (k+1)·x + noise, as a user's own data set module."""
from mtltrain.data import two_slope


def build(tasks, losses, seed=0, n_train=64, n_test=64):
    slopes = {t: {"slope": 1.0 + i, "intercept": 0.5 * i, "noise_std": 0.5}
              for i, t in enumerate(tasks)}
    return two_slope.build(slopes, {t: losses[t] for t in tasks}, n_train, n_test, seed)
'''
TOY_DATASET = """_target_: toy.build
tasks: [a, b]
losses: {a: [mse], b: [mse]}
seed: ${seed}
"""
TOY_MODEL = """_target_: mtltrain.models.mlp.SeparateMLPs
in_features: 1
hidden: [8]
"""


def user_folder(root: Path) -> Path:
    """A user's folder: toy.py and conf/{dataset,model}/toy.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "toy.py").write_text(TOY)
    for group, text in (("dataset", TOY_DATASET), ("model", TOY_MODEL)):
        (root / "conf" / group).mkdir(parents=True, exist_ok=True)
        (root / "conf" / group / "toy.yaml").write_text(text)
    return root


def run_compare(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`mtltrain-compare <args>` in `cwd`, in this process."""
    return in_process(compare.main, [PROG, *args], cwd)


TINY = ["--config-dir", "conf", "--dataset", "toy", "--strategies", "equal,uncertainty",
        "--override", "trainer.progress=false", "--override", "logger=[]"]  # fmt: skip


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """A comparison of two strategies × 2 seeds, 1 epoch; `equal` the reference (the single-task
    runs' weighting=fixed is not)."""
    folder = user_folder(tmp_path_factory.mktemp("user"))
    done = run_compare([*TINY, "--seeds", "2", "--epochs", "1", "--out", "runs/which"], folder)
    assert done.returncode == 0, done.stderr
    return folder / "runs" / "which"


@pytest.fixture(scope="module")
def resumed(
    tmp_path_factory,
) -> tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """A comparison of `fixed` within a budget; one of its runs failed and the results of
    another lost (killed before it wrote them); then the same command again."""
    folder = user_folder(tmp_path_factory.mktemp("user"))
    args = [*TINY[:4], "--strategies", "fixed", *TINY[6:], "--seeds", "1", "--epochs", "2",
            "--budget", "1h", "--out", "runs/c"]  # fmt: skip
    first = run_compare(args, folder)
    assert first.returncode == 0, first.stderr
    out = folder / "runs" / "c"
    (failed,) = (out / "single_task").glob("*tasks-_a_*/results.json")
    failed.write_text(json.dumps({"status": "failed", "error": "stand-in for a crash"}))
    (lost,) = (out / "single_task").glob("*tasks-_b_*/results.json")
    lost.unlink()
    (kept,) = (out / "multi_task").glob("*weighting-fixed/results.json")
    kept_text = kept.read_text()
    second = run_compare(args, folder)
    assert second.returncode == 0, second.stderr
    assert kept.read_text() == kept_text  # the finished run kept as it was
    return out, first, second


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 5 and cells[1].startswith(("`", "single task")):
            rows[cells[1].strip("`")] = cells
    return rows


def test_the_command_writes_the_table_of_strategies_against_single_task_learning(compared):
    out = compared
    text = (out / "toy_strategies.md").read_text()
    results = [json.loads(p.read_text()) for p in (out / "multi_task").rglob("results.json")]
    alone = [json.loads(p.read_text()) for p in (out / "single_task").rglob("results.json")]
    assert len(results) == 2 * 2 and len(alone) == 2 * 2
    assert all(r["status"] == "completed" and r["epochs"] == 1 for r in results + alone)

    def rmse(r, task):
        return r["metrics"][f"test/{task}/rmse"]

    single = {t: statistics.fmean(rmse(r, t) for r in alone if f"[{t}]" in str(r["overrides"]))
              for t in "ab"}  # fmt: skip
    rows = table_rows(text)
    deltas = {}
    for name in ("equal", "uncertainty"):
        mine = [r for r in results if f"weighting={name}" in r["overrides"]]
        per_seed = [-50 * sum((rmse(r, t) - single[t]) / single[t] for t in "ab") for r in mine]
        deltas[name] = per_seed
        cell = rows[name][5]
        assert cell.split()[0] == f"{statistics.fmean(per_seed):+.2f}", (name, cell)
        half = 12.706 * statistics.stdev(per_seed) / math.sqrt(2)  # t(1 dof) · s/√n
        low = f"{statistics.fmean(per_seed) - half:+.2f}"
        assert cell == f"{statistics.fmean(per_seed):+.2f} [{low}, {cell.split(', ')[1]}"
    difference = statistics.fmean(deltas["uncertainty"]) - statistics.fmean(deltas["equal"])
    assert rows["uncertainty"][6].split()[0] == f"{difference:+.2f}"
    assert rows["equal"][6] == "0 (the reference)" and "Δm% − `equal`'s" in text
    assert [rows[n][0] for n in sorted(deltas, key=lambda n: -statistics.fmean(deltas[n]))] == [
        "1", "2"]  # fmt: skip
    assert re.fullmatch(r"\d+\.\d\d", rows["uncertainty"][7]) and rows["equal"][7] == "1.00"
    assert "single task: a" in rows and "single task: b" in rows
    for picture in ("toy_delta_m.png", "toy_pareto.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG" and f"]({picture})" in text
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()
    assert "hydra/launcher=vectorized" in (out / "multi_task" / "multirun.yaml").read_text()
    assert "Reproduce: `mtltrain-compare --config-dir conf --dataset toy" in text
    assert "runs/which" not in text  # the folders of the machine that ran are not published


def test_tables_only_writes_the_page_of_the_comparison_in_out_again(compared):
    """--tables-only --out: the data set and configs the comparison ran with, not the
    defaults."""
    page = compared / "toy_strategies.md"
    page.unlink()
    done = run_compare(["--tables-only", "--out", "runs/which"], compared.parent.parent)
    assert done.returncode == 0, done.stderr
    assert "Δm% − `equal`'s" in page.read_text() and not list(compared.glob("multi_mnist*"))


def test_the_plan_within_the_budget_is_said_before_anything_trains(resumed):
    out, done, again = resumed
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("mtltrain-compare: budget")]
    first_run = done.stdout.index("+ mtltrain --config-dir conf -m weighting=fixed dataset=toy")
    assert done.stdout.index(".probe/steps") < done.stdout.index(line) < first_run
    assert re.fullmatch(
        r"mtltrain-compare: budget 1h00m: 1 of 1 strategies; 2 epochs \(of 2\) per run; about "
        r"\S+ for 3 runs one after another \(probe: \S+; an epoch of fixed [\d.]+ s, a run's setup "
        r"[\d.]+ s\)", line
    )  # fmt: skip
    probe = json.loads((out / ".probe" / "probe.json").read_text())
    assert probe["ratios"] == {"fixed": 1.0} and probe["setup_s"] > 0 and probe["epoch_s"] > 0
    assert json.loads((out / "compare.json").read_text())["plan"]["line"] == line.split(": ", 1)[1]
    assert line in again.stdout and ".probe" not in again.stdout  # the plan kept, no new probe
    results = [json.loads(p.read_text()) for p in out.glob("*_task/*/results.json")]
    assert len(results) == 3 and all(r["epochs"] == 2 for r in results)


def test_the_budget_takes_the_most_epochs_that_fit_then_leaves_out_the_slowest_strategies():
    probe = Probe(setup_s=2.0, epoch_s=10.0, ratios={"fixed": 1.0, "mgda": 3.0, "famo": 1.5})
    # 2 seeds, 2 single-task runs: 8 runs' setup 16 s; an epoch of all: 10·(2·5.5 + 2) s
    plan = fit(probe, ["fixed", "mgda", "famo"], 2, 2, most=10, budget=16 + 130 * 4 + 1)
    assert plan.epochs == 4 and plan.strategies == ["fixed", "mgda", "famo"]
    assert "3 of 3 strategies; 4 epochs (of 10)" in plan.line
    plan = fit(probe, ["fixed", "mgda", "famo"], 2, 2, most=10, budget=140)  # 16 + 130 > 140
    assert plan.strategies == ["fixed", "famo"] and plan.epochs == 1  # 12 + 70; 12 + 2·70 > 140
    assert "leaving out the slowest: mgda" in plan.line
    with pytest.raises(ConfigError, match=r"--budget=30s is not allowed: the probe and one "):
        fit(probe, ["fixed", "mgda"], 2, 2, most=10, budget=30)  # fixed alone: 8 + 40
    probe = Probe(setup_s=2.0, epoch_s=10.0, ratios=probe.ratios, wall_s=130.0)
    plan = fit(probe, ["fixed", "mgda", "famo"], 2, 2, most=10, budget=16 + 130 * 4 + 1)
    assert plan.epochs == 3 and "(probe: 2m10s; an epoch of fixed 10.0 s" in plan.line  # 4 − 1
    plan = fit(probe, ["fixed"], 1, 0, most=10, budget=90 + 130)
    # 2 + 8·10 s of the 90 s the probe left
    assert plan.line.startswith(
        "budget 3m40s: 1 of 1 strategies; 8 epochs (of 10) per run; about 1m22s"
    )
    probe = Probe(setup_s=2.0, epoch_s=10.0, ratios={"fixed": 1.0, "famo": 1.5})  # mgda failed
    plan = fit(probe, ["fixed", "mgda", "famo"], 1, 0, most=2, budget=3600)
    assert plan.strategies == ["fixed", "famo"] and plan.epochs == 2
    assert "2 of 3 strategies, leaving out those whose probe run failed: mgda;" in plan.line
    said = [budget.said(s) for s in (40, 64.2, 599, 599.5, 3660)]
    assert said == ["40s", "1m05s", "9m59s", "10m", "1h01m"]
    assert [parse_budget(t) for t in ("1h30m", "90s", "0.5h", "2h")] == [5400, 90, 1800, 7200]


def test_the_same_command_again_keeps_finished_runs_and_runs_the_rest(resumed):
    out, _, again = resumed
    assert again.stdout.count("resume_sweep=true") == 2  # both sweeps continued
    for task in "ab":  # the failed one run again from the start, the lost one resumed
        (found,) = (out / "single_task").glob(f"*tasks-_{task}_*/results.json")
        assert json.loads(found.read_text())["status"] == "completed"
    (aside,) = (out / ".failed_before_resume").rglob("results.json")
    assert json.loads(aside.read_text())["error"] == "stand-in for a crash"
    text = (out / "toy_strategies.md").read_text()
    assert "run again after an interruption or a failure" in text and "‡" in text
    record = json.loads((out / "compare.json").read_text())
    assert set(record["resumed"]) == {"command", "wall_s"} and record["wall_s"] > 0


def test_a_signal_in_the_probe_stops_the_comparison_and_the_probe_starts_again(
    tmp_path, monkeypatch
):
    """Ctrl-C while the probe times the strategies (its sweep's exit status 128 + 2) stops the
    comparison before anything trains; the same command probes again from the start."""
    folder, calls = user_folder(tmp_path), []
    out = folder / "runs" / "p"

    def stopped_in_the_steps(argv):  # the epoch's sweep left a run, the steps' one stopped
        calls.append(list(argv))
        if any(".probe/epoch" in a for a in argv):
            (out / ".probe" / "epoch" / "0_run" / ".hydra").mkdir(parents=True, exist_ok=True)
            return 0
        return 130

    monkeypatch.setattr(sweeps, "mtltrain", stopped_in_the_steps)
    args = [*TINY[:4], "--strategies", "fixed", *TINY[6:], "--seeds", "1", "--epochs", "1",
            "--budget", "1h", "--out", "runs/p"]  # fmt: skip
    done = run_compare(args, folder)
    assert done.returncode == 130 and "the same command continues" in done.stderr, done.stderr
    assert len(calls) == 2 and not (out / "compare.json").exists() and "budget" not in done.stdout
    assert not (out / ".probe" / "probe.json").exists()
    calls.clear()
    assert run_compare(args, folder).returncode == 130
    assert len(calls) == 2 and "resume_sweep=true" not in calls[0]  # the probe from the start


def test_a_stopped_comparison_keeps_the_time_it_ran_in_its_wall_time(tmp_path, monkeypatch):
    """The wall time in compare.json counts the runs before an interruption too."""
    folder = user_folder(tmp_path)
    monkeypatch.setattr(sweeps, "mtltrain", lambda argv: time.sleep(0.3) or 130)
    done = run_compare([*TINY, "--seeds", "1", "--epochs", "1", "--out", "runs/s"], folder)
    assert done.returncode == 130, done.stderr
    record = json.loads((folder / "runs" / "s" / "compare.json").read_text())
    assert record["wall_s"] >= 0.3 and record["finished"] is None


NO_MNIST = ["--dataset", "mnist_mtl", "--override", "dataset.root=nowhere",
            "--override", "dataset.download=false"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--strategies", "fixed,nope"], "--strategies=fixed,nope is not allowed (nope unknown)"),
        (["--strategies", "mgda,famo"], "--strategies=mgda,famo is not allowed (fixed or equal"),
        (["--budget", "2 hours"], "--budget=2 hours is not allowed: give a duration such as 2h"),
        (["--budget", "0m"], "--budget=0m is not allowed: give a duration above zero"),
        (["--dataset", "nope"], "dataset=nope"),
        (NO_MNIST, "MNIST not found: nowhere/MNIST/raw/"),
        (["--seeds", "0"], "--seeds=0 is not allowed"),
        (["--override", "weighting=famo"], "weighting=famo is not allowed: mtltrain-compare sets"),
        (["--override", "trainer.epochs=3"], "--override=trainer.epochs=3 is not allowed"),
        (["--out", "runs/mine"], "--out=runs/mine is not allowed: it holds files of something"),
        (
            ["--out", "runs/mine/notes.txt"],
            "--out=runs/mine/notes.txt is not allowed: it is a file",
        ),
        (["--out", "runs/c", "--seeds", "2"], "--out=runs/c is not allowed: it holds a comparison"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, args, said):
    folder = user_folder(tmp_path)
    (folder / "runs" / "mine").mkdir(parents=True)
    (folder / "runs" / "mine" / "notes.txt").write_text("mine")
    (folder / "runs" / "c").mkdir()
    (folder / "runs" / "c" / "compare.json").write_text(json.dumps({"arguments": {
        "dataset": "toy", "strategies": "equal,uncertainty", "seeds": 1, "epochs": 1,
        "budget": None, "override": TINY[-4:][1::2], "config_dir": "conf"}}))  # fmt: skip
    before = snapshot(folder)
    done = run_compare([*TINY, "--seeds", "1", "--epochs", "1", "--out", "runs/new", *args], folder)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
    assert done.stderr.startswith("mtltrain-compare: error: ") and "Traceback" not in done.stderr
    assert snapshot(folder) == before


def test_the_pages_script_calls_the_command_with_the_pages_protocols(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import compare_strategies as script

    args, rest = script.parse_args(["--dataset", "qm9", "--quick", "--seeds", "2"])
    args.runs = tmp_path
    words = script.compare_arguments(args, rest)
    assert words[:5] == ["--dataset", "qm9", "--out", str(tmp_path), "--seeds"]
    assert "dataset.n_train=2000" in words and words[-2:] == ["--epochs", "3"]
    args, rest = script.parse_args(["--quick", "--mnist-root", "/m"])
    words = script.compare_arguments(args, rest)
    assert "dataset.root=/m" in words and words[-2:] == ["--epochs", "5"]


@pytest.mark.slow  # MultiMNIST sweeps in a process of their own
def test_the_pages_script_end_to_end_on_a_stand_in_mnist(tmp_path):
    root = write_fake_mnist(tmp_path / "mnist", n_train=200, n_test=64)
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--epochs", "1", "--seeds", "2",
         "--strategies", "fixed,mgda", "--mnist-root", str(root), "--runs", str(runs),
         "--no-docs", "--override", "trainer.progress=false"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = (runs / "multi_mnist_strategies.md").read_text()
    rows = table_rows(text)
    assert rows["fixed"][8] == "96.46 / 94.99" and rows["mgda"][8] == "–"  # the paper's
    assert "Reproduce: `python scripts/compare_strategies.py --quick --epochs 1" in text
    assert str(root) not in text and str(runs) not in text


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
    assert compare.command_line(["mtltrain-compare"], ["--out", "/x", "--seeds", "2"]) == (
        "mtltrain-compare --seeds 2"
    )


DOCS = Path(__file__).resolve().parent.parent / "docs"


def strategy_rows(page: Path) -> list[tuple[int, str, str, bool]]:
    """A comparison page's strategy rows: (rank, name, Δm% cell without †, whether † marks
    the row)."""
    rows = []
    for line in page.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 5 and cells[0].isdigit() and cells[1].startswith("`"):
            delta = next(c for c in cells[3:] if re.match(r"[+-]\d+\.\d\d \[", c))
            rows.append((int(cells[0]), cells[1], delta.replace(" †", ""), "†" in line))
    return rows


def test_which_strategy_quotes_the_result_pages_as_they_are():
    """Every cell of docs/which-strategy.md's table is what its page's table says: the best
    Δm%, equal's Δm% and rank, and the strategies † marks (worse or better than fixed's)."""
    text = (DOCS / "which-strategy.md").read_text()
    quoted = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| [")
    ]
    assert len(quoted) == 3
    for link, protocol, best, equal, rank, differ in quoted:
        page = DOCS / re.search(r"\]\((results/\w+\.md)\)", link)[1]
        rows = strategy_rows(page)
        assert f"**Protocol: {protocol.split(' on ')[0]}**" in page.read_text()
        top = rows[0]
        assert best == f"{top[1]} {top[2]}"
        (mine,) = [r for r in rows if r[1] == "`equal`"]
        assert equal == mine[2] and rank == f"{mine[0]} of {len(rows)}"
        (fixed,) = [r for r in rows if r[1] == "`fixed`"]

        def mean(cell: str) -> float:
            return float(cell.split()[0])

        marked = [f"{r[1]} ({'worse' if mean(r[2]) < mean(fixed[2]) else 'better'})"
                  for r in rows if r[3]]  # fmt: skip
        assert differ == (", ".join(marked) or "none")


def test_which_strategy_quotes_the_cost_of_qm9s_top_strategies_as_its_page_has_it():
    text = (DOCS / "which-strategy.md").read_text()
    assert "ones at the top (PCGrad, DualProj, Aligned-MTL) cost 4–7 times" in text
    lines = (DOCS / "results" / "qm9_strategies.md").read_text().splitlines()
    top = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("| 1 ")
           or ln.startswith("| 2 ") or ln.startswith("| 3 ")]  # fmt: skip
    assert [row[1] for row in top] == ["`pcgrad`", "`dualproj`", "`aligned_mtl`"]
    assert all(4 <= float(row[-1]) <= 7 for row in top)


def test_a_strategy_config_of_ones_own_is_a_strategy_to_compare(tmp_path):
    from mtltrain.compare._cli import chosen_strategies

    conf = user_folder(tmp_path) / "conf"
    (conf / "weighting").mkdir()
    (conf / "weighting" / "mine.yaml").write_text("defaults:\n  - fixed\n  - _self_\n")
    assert chosen_strategies("fixed,mine", conf) == ["fixed", "mine"]
    assert "mine" in chosen_strategies(None, conf)
    with pytest.raises(ConfigError, match="mine unknown"):
        chosen_strategies("fixed,mine")
