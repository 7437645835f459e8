"""scripts/bench.py runs end to end and writes what it promises (a smoke test on a tiny
stand-in MNIST, one round: the figures it measures are not checked here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_fake_mnist

from mtltrain.config._compose import config_dir

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))  # bench_stacked


@pytest.mark.slow  # a minute: every section once
def test_bench_writes_json_and_markdown(tmp_path):
    root = write_fake_mnist(tmp_path / "mnist", n_train=512, n_test=256)
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--mnist-root", str(root),
         "--rounds", "1", "--skip-runs", "--strategies", "mgda,rlw,graddrop",
         "--out", str(out), "--markdown", str(table)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mnist_data"] == "real" and report["machine"]["torch"]
    for section in ("mnist", "two_slope"):
        rates = report[section]["rates"]
        for threads in ("1 thread", "2 threads"):
            assert {f"mtltrain, {threads}", f"usual way, {threads}"} <= set(rates)
        assert set(rates) == set(report[section]["ratios"])
        assert all(rate > 0 for rate in rates.values())
    assert "convolutions alone (ceiling), 2 threads" in report["mnist"]["rates"]
    for model in ("mnist_mtl", "wide"):
        strategies = report["strategies"][model]
        timed = {"fixed", "mgda", "rlw", "graddrop"}
        assert set(strategies["vs_fixed"]) == set(strategies["ms_per_step"]) == timed
        assert strategies["kind"] == {
            "fixed": "loss", "rlw": "loss", "mgda": "gradient", "graddrop": "representation"
        }  # fmt: skip
    assert report["strategies"]["wide"]["shared_parameters"] >= 10**6
    engine = report["engine"]["vs_fixed"]
    assert {"fixed", "mgda: one pass per task (mtltrain)", "mgda: one vmapped pass"} <= set(engine)
    assert all(s["share"] > 0 for s in report["eval_logging"].values())
    text = table.read_text()
    assert (
        "| mnist | usual way, 1 thread |" in text and "Reproduce: `python scripts/bench.py" in text
    )
    assert "share of its channels-last convolutions alone" in text
    assert "| mgda: one vmapped pass |" in text and "| graddrop | representation |" in text


def test_the_usual_mnist_script_trains_and_scores(tmp_path):
    """scripts/usual/mnist.py, the whole-process baseline, runs on torchvision's layout."""
    root = write_fake_mnist(tmp_path / "mnist", n_train=512, n_test=256)
    script = [sys.executable, str(REPO / "scripts" / "usual" / "mnist.py"), "--root", str(root)]
    done = subprocess.run([*script, "--epochs", "1", "--threads", "1"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    accuracies = done.stdout.split("test accuracy cls3, cls10:")[1].splitlines()[0]
    assert all(0 <= a <= 1 for a in json.loads(accuracies))


def test_bench_names_a_strategy_it_has_no_config_for(monkeypatch, capsys):
    """Its command line, read in this process (argparse's exit, before anything is measured)."""
    import bench

    monkeypatch.setattr(sys, "argv", ["bench.py", "--strategies", "mgda,pcgard"])
    with pytest.raises(SystemExit) as exited:
        bench.main()
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert "no weighting config ['pcgard']: choose from" in said
    every = sorted(p.stem for p in (config_dir() / "weighting").glob("*.yaml"))
    assert str(every) in said


def test_the_hand_written_stack_is_each_jobs_two_networks_on_its_own_batch():
    from bench_stacked import HandStacked

    torch.manual_seed(0)
    stack = HandStacked(3, hidden=8, batch_size=5)
    index = torch.randint(300, (3, 5))
    w1, b1, w2, b2 = stack.layers
    for job in range(3):
        for task in range(2):
            net = job * 2 + task
            x, y = stack.x[job, index[job]], stack.y[job, task, index[job]]
            out = torch.relu(x @ w1[net] + b1[net]) @ w2[net] + b2[net]
            want = F.mse_loss(out, y)
            torch.testing.assert_close(stack.losses(index)[job, task], want)
    stack.log_var.data[1] = float("nan")  # one job's state cannot reach the others'
    stack.step()
    assert stack.log_var[[0, 2]].isfinite().all() and stack.log_var[1].isnan().all()
    assert all(bool(p[[0, 1, 4, 5]].isfinite().all()) for p in stack.layers)  # jobs 0 and 2


def test_the_paragraph_gives_the_sweep_ratio_at_the_hand_written_stacks_speed():
    from bench_stacked import FORWARD_STACKED, default_label, hand_label, hand_written

    rates = {hand_label(16): 50.0, "N = 16": 100.0, "alone": 400.0, "batches per epoch": 19}
    report = {
        "jobs": 16,
        "steps": {FORWARD_STACKED: rates},
        "sweeps": [  # --epochs 1500,300: the paragraph reads the longest, not the last
            {"epochs": 1500, "rows": {default_label(16): {"seconds": 456.0}}},
            {"epochs": 300, "rows": {default_label(16): {"seconds": 70.0}}},
        ],
    }
    text = "".join(hand_written(report))
    # 16 jobs × 28500 steps × 50 µs = 22.8 s against 456 s
    assert "28500 steps" in text and "20.0× as fast" in text and "at 50% of its" in text
    assert "compiled" not in text
    rates["N = 16, compile=default"] = 40.0  # bench_stacked --compile default
    text = "".join(hand_written(report))
    assert "compiled (compile=default: 40 µs) runs at 125% of the hand-written" in text
    assert "2.50× the eager stack's" in text


def test_the_start_up_and_busy_rows_give_ratios_to_their_baselines():
    from bench import busy_table, startup_table

    startup = {"rounds": 5, "wall_s": {"mtltrain trainer.epochs=1": 3.0,
                                       'python -c "import torch"': 2.0}}  # fmt: skip
    assert "| `mtltrain trainer.epochs=1` | 3.00 s | 1.50 |" in startup_table(startup)
    walls = {"mtltrain, threads=auto": 10.0, "usual script": 15.0,
             "stacked sweep of 4, threads=auto": 8.0, "usual script, 4 times": 40.0}  # fmt: skip
    busy = {"cores": 2, "epochs": 1500, "sweep_jobs": 4, "wall_s": walls}
    rows = busy_table(busy)
    assert "| mtltrain, threads=auto | 10.0 s | 1.50× |" in rows
    assert "| stacked sweep of 4, threads=auto | 8.0 s | 5.00× |" in rows
    assert "two-slope, 1500 epochs" in rows[1]


def test_the_recorded_command_leaves_out_the_output_paths():
    from bench import published_arguments

    argv = [
        "--publish",
        "--only",
        "runs",
        "--out",
        "/x/b.json",
        "--markdown=/x/b.md",
        "--rounds",
        "5",
    ]
    assert published_arguments(argv) == ["--publish", "--only", "runs", "--rounds", "5"]
