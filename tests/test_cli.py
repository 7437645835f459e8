"""The `mtltrain` command end to end, through the entry point its console script calls
(`run_cli`): what a run writes and prints, its help, a user's own config group, the progress
bar; and the command's own start, in a process."""

import io
import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import make_config, run_cli, run_console_script, strict_json
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.build import build_job
from mtltrain.config import config_dir
from mtltrain.loop import train_alone
from mtltrain.outputs._progress import ProgressCallback

TINY = ["trainer.epochs=3", "trainer.log_every=1", "dataset.n_train=64", "dataset.n_test=32"]
TWO_EPOCHS = ["trainer.epochs=2", "dataset.n_train=32", "dataset.n_test=16"]


def tags(tb_dir):
    files = list(tb_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, files  # one run per job (and its HParams entry in tb/hparams)
    acc = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_default_run(tmp_path):
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["choices"]["weighting"] == "uncertainty"
    assert results["overrides"] == TINY
    assert set(results["weighting"]["sigma"]) == {"y1", "y2"}
    assert results["steps"] == 3 * 4
    # the closing summary: per task, learned σ, true σ and the test metric
    table = proc.stdout.strip().splitlines()[-3:]
    assert table[0].split()[:4] == ["term", "learned", "σ", "true"]
    assert table[1].split()[0] == "y1" and table[1].split()[2] == "3"
    acc = tags(run / "tb")
    scalars = set(acc.Tags()["scalars"])
    for term in ("y1", "y2"):
        assert {f"sigma/{term}", f"loss_raw/{term}", f"loss_weighted/{term}", f"weight/{term}",
                f"test/{term}/rmse", f"train/{term}/rmse"} <= scalars  # fmt: skip
    assert {"loss/total", "train/loss"} <= scalars
    assert len(acc.Scalars("sigma/y1")) == 12  # every step, as log_every=1
    assert "custom_scalars__config__" in acc.PluginTagToContent("custom_scalars")


def test_multirun_one_tensorboard_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", "weighting=fixed,uncertainty", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1", "2", "3"]
    assert "weighting-uncertainty" in jobs[3].name and "seed-1" in jobs[3].name
    runs = {tuple(json.loads((j / "results.json").read_text())["overrides"]) for j in jobs}
    assert len(runs) == 4
    for job in jobs:
        tags(job / "tb")


def test_mnist_run_from_idx_files(tmp_path, mnist_root):
    args = [
        "dataset=mnist_mtl", f"dataset.root={mnist_root}", "dataset.download=false",
        "trainer.epochs=1", "trainer.batch_size=32", f"hydra.run.dir={tmp_path}/run",
    ]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert {"test/cls3/accuracy", "test/cls10/accuracy", "test/recon/rmse"} <= set(
        results["metrics"]
    )
    proc = run_cli(
        [*args[:-1], "dataset.tasks=[cls3,cls10]", f"hydra.run.dir={tmp_path}/r2"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "r2/results.json").read_text())
    assert set(results["weighting"]["sigma"]) == {"cls3", "cls10"}


def test_mnist_without_data_or_download_says_where_it_looked(tmp_path):
    empty = tmp_path / "nothing-here"
    proc = run_cli(
        ["dataset=mnist_mtl", f"dataset.root={empty}", "dataset.download=false"], tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(empty / "MNIST" / "raw") in lines[0] and "dataset.root" in lines[0]
    (results,) = tmp_path.rglob("results.json")  # the run folder says what went wrong
    assert json.loads(results.read_text())["status"] == "failed"
    assert not (results.parent / "tb").exists()  # stopped before any training work


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


def test_the_cli_starts_without_torch_and_runs_as_a_module(tmp_path):
    """Processes of their own: what an import loads, and `python -m mtltrain`, show only there."""
    code = "import sys, mtltrain.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "mtltrain", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "mtltrain" in proc.stdout


def test_a_users_own_config_group_works_for_a_single_run(tmp_path):
    own = tmp_path / "my_configs" / "weighting"
    own.mkdir(parents=True)
    (own / "tenth.yaml").write_text(
        "_target_: mtltrain.weighting.fixed.FixedWeighting\nweights: 0.1\n"
    )
    args = [*TWO_EPOCHS, f"hydra.searchpath=[file://{own.parent}]", "weighting=tenth",
            f"hydra.run.dir={tmp_path}/r"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    weights = strict_json(tmp_path / "r" / "results.json")["weighting"]["weight"]
    assert weights == pytest.approx({"y1": 0.1, "y2": 0.1})


def test_one_progress_bar_over_the_run_on_a_terminal_and_none_elsewhere(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    job = build_job(make_config([*TWO_EPOCHS, "trainer.log_every=1"]))
    train_alone(job)
    shown = screen.getvalue()
    assert "train:" in shown and "0/4 " in shown  # one bar over 2 epochs × 2 steps
    assert "epoch" not in shown  # not one bar per epoch
    (bar,) = (cb.bar for cb in job.callbacks if isinstance(cb, ProgressCallback))
    assert bar.n == bar.total == 4 and "loss=" in bar.postfix
    monkeypatch.undo()
    quiet = run_cli([*TWO_EPOCHS, f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""  # not a terminal: no bar at all


@pytest.mark.parametrize(
    "args",
    [
        ["trainer.epochs=0"],  # a config error: exit 2, one line on stderr
        ["--cfg", "job", "trainer.epochs=3"],  # Hydra prints the config: exit 0, on stdout
        ["trainer.epochs=abc"],  # Hydra's own parse error, turned into one line
    ],
)
def test_the_console_script_says_and_exits_what_run_cli_does(tmp_path, args):
    """A process of its own: the console script's exit status and output, as run_cli gives
    them in this process."""
    args = [*args, f"hydra.run.dir={tmp_path / 'run'}"]
    alone, here = run_console_script(args, tmp_path), run_cli(args, tmp_path)
    assert (alone.returncode, alone.stdout, alone.stderr) == (
        here.returncode,
        here.stdout,
        here.stderr,
    )
    assert alone.returncode in (0, 2) and len(alone.stderr.splitlines()) == alone.returncode // 2


def process_state() -> tuple:
    """What a run changes in its process and the next test would see."""
    return (os.getcwd(), list(sys.argv), dict(os.environ), signal.getsignal(signal.SIGINT),
            signal.getsignal(signal.SIGTERM), torch.get_num_threads(), logging.root.level,
            list(logging.root.handlers), HydraConfig.initialized(),
            GlobalHydra.instance().is_initialized(),
            torch.random.get_rng_state().numpy().tobytes())  # fmt: skip


def test_a_run_in_process_leaves_the_process_as_it_found_it(tmp_path):
    """run_cli puts back what a run changes: here threads, signal handlers, the environment
    (HYDRA_FULL_ERROR), Hydra's logging and config, the seeded generator, the folder."""
    before = process_state()
    threads = torch.get_num_threads() + 1
    done = run_cli([*TWO_EPOCHS, f"trainer.threads={threads}", f"hydra.run.dir={tmp_path}/r"],
                   tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{threads} CPU threads" in done.stdout  # the run did change them
    assert process_state() == before
