"""`mtltrain-report` on real sweeps and on hand-written run folders, through the entry point its
console script calls (`run_report`, in this process)."""

import csv
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_report
from matplotlib.image import imread

from mtltrain.report import main
from mtltrain.report.plots import seed_curve

# one worker builds the costly module-scoped `sweep` for the tests
# that use it; the other tests are free to go to any worker
SHARES_FIXTURE = pytest.mark.xdist_group("report")

TINY = ["trainer.epochs=3", "trainer.log_every=1", "dataset.n_train=64", "dataset.n_test=32"]
REPORT_FILES = {"report.md", "report.csv", "learned_sigma.png", "learned_weight.png",
                "main_metrics.png"}  # fmt: skip


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def table(markdown):
    """The first Markdown table of `markdown` as a list of {column: cell}."""
    lines = next(block for block in markdown.split("\n\n") if block.startswith("|")).splitlines()

    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split(" | ")]

    header = cells(lines[0])
    return [dict(zip(header, cells(line), strict=True)) for line in lines[2:]]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """weighting=fixed,uncertainty × seed=0,1, a run without results.json, an interrupted one,
    and the report on all of it: (sweep folder, finished results by weighting, files before,
    report process)."""
    tmp = tmp_path_factory.mktemp("report")
    folder = tmp / "sweep"
    args = ["-m", "weighting=fixed,uncertainty", "seed=0,1", *TINY, f"hydra.sweep.dir={folder}"]
    proc = run_cli(args, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in folder.iterdir() if p.is_dir())
    finished = {}
    for job in jobs:
        results = json.loads((job / "results.json").read_text())
        finished.setdefault(results["choices"]["weighting"], []).append(results)
    shutil.copytree(jobs[0], folder / "4_crashed")
    (folder / "4_crashed" / "results.json").unlink()
    shutil.copytree(jobs[1], folder / "5_interrupted")
    stopped = json.loads((jobs[1] / "results.json").read_text()) | {"status": "interrupted"}
    (folder / "5_interrupted" / "results.json").write_text(json.dumps(stopped))
    before = snapshot(folder)
    return folder, finished, before, run_report([folder], cwd=tmp)


def flat(results):
    """A run's metrics and learned quantities ("sigma/y1") in one mapping."""
    learned = {f"{q}/{t}": v for q, per in results["weighting"].items() for t, v in per.items()}
    return results["metrics"] | learned


def hand_stats(runs, name):
    """Mean and sample standard deviation (ddof=1) of `name` over `runs`."""
    values = [flat(r)[name] for r in runs]
    return np.mean(values), np.std(values, ddof=1)


def assert_cell(cell, mean, std):
    """A "m ± s" cell shows std to two significant digits and mean to the same place: read
    back, each is within half a unit of that place of the value."""
    shown_mean, shown_std = (float(part) for part in cell.split(" ± "))
    unit = 10.0 ** (np.floor(np.log10(std)) - 1)
    assert abs(shown_std - std) <= unit / 2 + 1e-12 and abs(shown_mean - mean) <= unit / 2 + 1e-12
    decimals = cell.split(" ± ")[1].partition(".")[2]
    assert len(decimals) == max(0, -int(np.log10(unit))), cell


@SHARES_FIXTURE
def test_table_is_mean_and_std_over_seeds(sweep):
    folder, finished, _, proc = sweep
    assert proc.returncode == 0, proc.stderr
    rows = table((folder / "report.md").read_text())
    assert [r["setting"] for r in rows] == ["weighting=fixed", "weighting=uncertainty"]
    for row, weighting in zip(rows, ("fixed", "uncertainty"), strict=True):
        runs = finished[weighting]
        assert row["seeds"] == "2"
        names = [n for n in runs[0]["metrics"] if n.startswith("test/")]
        names += [f"{q}/{t}" for q, v in runs[0]["weighting"].items() if q != "log_var" for t in v]
        for name in names:
            mean, std = hand_stats(runs, name)
            if std == 0:  # fixed weights: the value alone
                assert row[name] == f"{mean:#.4g}".rstrip("."), name
            else:
                assert_cell(row[name], mean, std)
    assert "log_var/y1" not in rows[1] and rows[0]["sigma/y1"] == ""
    # the true noise σ beside each learned one, where a σ is learned
    assert rows[1]["true_sigma/y1"] == "3.000" and rows[1]["true_sigma/y2"] == "0.5000"
    assert rows[0]["true_sigma/y1"] == ""
    assert table(proc.stdout) == rows


def test_cells_round_the_mean_to_the_spread():
    from mtltrain.report import Stat
    from mtltrain.report.tables import fmt_stat

    assert fmt_stat(Stat(2.94183, 0.21134)) == "2.94 ± 0.21"
    assert fmt_stat(Stat(0.49961, 0.018942)) == "0.500 ± 0.019"
    assert fmt_stat(Stat(1234.5, 56.7)) == "1234 ± 57"
    assert fmt_stat(Stat(1234.5, 156.7)) == "1230 ± 160"
    assert fmt_stat(Stat(-0.004, 0.2)) == "0.00 ± 0.20"  # not "-0.00"
    assert fmt_stat(Stat(0.8, None)) == "0.8000 ± –" and fmt_stat(Stat(3.0, 0.0)) == "3.000"


@SHARES_FIXTURE
def test_delta_m_against_fixed_weights(sweep):
    """Δm% of each seed's run against the baseline's means: their mean and spread."""
    folder, finished, _, _ = sweep
    rows = table((folder / "report.md").read_text())
    main = ["test/y1/rmse", "test/y2/rmse"]  # lower is better
    base = {m: np.mean([r["metrics"][m] for r in finished["fixed"]]) for m in main}

    def per_seed(runs):
        return [100 / 2 * sum(-(r["metrics"][m] - base[m]) / base[m] for m in main) for r in runs]

    ours, own = per_seed(finished["uncertainty"]), per_seed(finished["fixed"])
    assert_cell(rows[1]["Δm%"], np.mean(ours), np.std(ours, ddof=1))
    assert_cell(rows[0]["Δm%"], 0.0, np.std(own, ddof=1))  # the baseline: its own spread
    with (folder / "report.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert float(csv_rows[0]["delta_m_pct"]) == pytest.approx(0, abs=1e-12)
    assert float(csv_rows[1]["delta_m_pct"]) == pytest.approx(np.mean(ours), rel=1e-9)
    assert float(csv_rows[1]["delta_m_pct_std"]) == pytest.approx(np.std(ours, ddof=1), rel=1e-9)
    assert "positive Δm% is better than the baseline" in (folder / "report.md").read_text()


@SHARES_FIXTURE
def test_unfinished_runs_are_listed_not_counted(sweep):
    folder, _, _, proc = sweep
    markdown = (folder / "report.md").read_text()
    unfinished = markdown.split("## Runs that did not finish")[1]
    assert "`4_crashed` | no results.json" in unfinished
    assert "`5_interrupted` | interrupted" in unfinished
    assert "4_crashed (no results.json)" in proc.stderr
    assert "5_interrupted (interrupted)" in proc.stderr
    assert "4 finished runs in 2 settings, 2 did not finish" in markdown


@SHARES_FIXTURE
def test_csv_has_one_row_per_setting_at_full_precision(sweep):
    folder, finished, _, _ = sweep
    with (folder / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["n"]) for r in rows] == [
        ("weighting=fixed", "2"),
        ("weighting=uncertainty", "2"),
    ]
    for row, weighting in zip(rows, ("fixed", "uncertainty"), strict=True):
        for name in ("test/y1/rmse", "train/y2/mse", "weight/y1"):
            mean, std = hand_stats(finished[weighting], name)
            assert float(row[f"{name}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row[f"{name}_std"]) == pytest.approx(std, rel=1e-9)
    mean, std = hand_stats(finished["uncertainty"], "log_var/y2")
    assert float(rows[1]["log_var/y2_mean"]) == pytest.approx(mean, rel=1e-12)
    assert rows[0]["sigma/y1_mean"] == rows[0]["sigma/y1_std"] == ""


@SHARES_FIXTURE
def test_plots_are_pngs_and_nothing_else_is_touched(sweep):
    folder, _, before, _ = sweep
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == REPORT_FILES
    for name in REPORT_FILES - {"report.md", "report.csv"}:
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        image = imread(folder / name)
        assert image.ndim == 3 and min(image.shape[:2]) > 200 and image.std() > 0.01


def test_missing_folder_is_one_line_exit_2(tmp_path):
    proc = run_report([tmp_path / "nope"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(tmp_path / "nope") in proc.stderr
    assert not proc.stdout


def test_folder_without_runs_and_bad_baseline_exit_2(tmp_path, capsys):
    (tmp_path / "empty" / "tb").mkdir(parents=True)
    for args, words in (
        ([tmp_path / "empty"], ["no runs", str(tmp_path / "empty")]),
        ([tmp_path, "--baseline", "fixed"], ["--baseline", "'fixed'"]),
    ):
        with pytest.raises(SystemExit) as stop:
            main(list(map(str, args)))
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not list(tmp_path.rglob("report.*"))


def fake_run(folder, overrides, metrics, weight=1.0, status="completed", directions=None):
    """A run folder with a hand-written results.json and no TensorBoard files."""
    (folder / ".hydra").mkdir(parents=True)
    results = {"status": status, "overrides": overrides, "metrics": metrics,
               "weighting": {"weight": dict.fromkeys(("a", "b"), weight)}}  # fmt: skip
    if directions is not None:
        results["directions"] = directions
    (folder / "results.json").write_text(json.dumps(results))


def test_each_task_set_is_compared_with_fixed_weights_on_it(tmp_path, capsys):
    """A 2×2 sweep weighting × tasks, job folders in natural order (2 before 10)."""
    ab, a = "dataset.tasks=[a,b]", "dataset.tasks=[a]"
    fake_run(tmp_path / "2_x", ["weighting=fixed", ab, "seed=0"],
             {"test/a/accuracy": 0.8, "test/b/rmse": 2.0, "test/b/mse": 4.0})  # fmt: skip
    fake_run(tmp_path / "10_x", ["weighting=uncertainty", ab, "seed=0"],
             {"test/a/accuracy": 0.9, "test/b/rmse": 1.5, "test/b/mse": 9.0})  # fmt: skip
    fake_run(tmp_path / "11_x", ["weighting=fixed", a, "seed=0"], {"test/a/accuracy": 0.5})
    fake_run(tmp_path / "12_x", ["weighting=uncertainty", a, "seed=0"], {"test/a/accuracy": 0.6})
    main([str(tmp_path), "--out", str(tmp_path / "out")])
    rows = table(capsys.readouterr().out)
    assert [(r["setting"], r["Δm%"]) for r in rows] == [
        (f"weighting=fixed, {ab}", "0.000 ± –"),
        (f"weighting=uncertainty, {ab}", "18.75 ± –"),  # 100/2·((0.9 − 0.8)/0.8 − (1.5 − 2)/2)
        (f"weighting=fixed, {a}", "0.000 ± –"),
        (f"weighting=uncertainty, {a}", "20.00 ± –"),  # 100·(0.6 − 0.5)/0.5
    ]
    assert rows[2]["test/b/rmse"] == "" and rows[0]["test/a/accuracy"] == "0.8000 ± –"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "report.md",
        "report.csv",
        "main_metrics.png",
    }


def test_delta_m_takes_each_metrics_direction_from_results(tmp_path, capsys):
    """A custom metric's direction is the one results.json records: a lower mae is better."""
    directions = {"a/binary_auroc": 1, "b/mae": -1}
    fake_run(tmp_path / "0_x", ["weighting=fixed"], {"test/a/binary_auroc": 0.8,
             "test/b/mae": 2.0}, directions=directions)  # fmt: skip
    fake_run(tmp_path / "1_x", ["weighting=dwa"], {"test/a/binary_auroc": 0.9,
             "test/b/mae": 1.5}, directions=directions)  # fmt: skip
    main([str(tmp_path)])
    rows = table(capsys.readouterr().out)
    # 100/2·((0.9 − 0.8)/0.8 − (1.5 − 2)/2)
    assert [r["Δm%"] for r in rows] == ["0.000 ± –", "18.75 ± –"]


def test_a_results_file_with_bad_directions_is_refused(tmp_path, capsys):
    fake_run(tmp_path / "0_x", ["weighting=fixed"], {"test/a/mae": 1.0}, directions={"a/mae": 0})
    line = refused([tmp_path], capsys)
    assert '"directions" is' in line and "1 or -1" in line


def test_negative_nll_baseline_and_missing_baseline(tmp_path, capsys):
    fake_run(tmp_path / "0_x", ["weighting=fixed"], {"test/y/nll": -1.0, "test/y/rmse": 1.0})
    fake_run(tmp_path / "1_x", ["weighting=dtp"], {"test/y/nll": -1.5, "test/y/rmse": 1.0})
    main([str(tmp_path)])
    assert [r["Δm%"] for r in table(capsys.readouterr().out)] == ["0.000 ± –", "50.00 ± –"]
    # without --baseline, runs that have no weighting=fixed get a blank Δm% and a note
    shutil.rmtree(tmp_path / "0_x")
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert [r["Δm%"] for r in table(out)] == [""]
    assert "No setting has weighting=fixed" in out


def refused(args, capsys):
    """`mtltrain-report args` ends with exit code 2 and one line on stderr, printing nothing
    else; returns that line."""
    with pytest.raises(SystemExit) as stop:
        main(list(map(str, args)))
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("mtltrain-report: error: ")
    assert not captured.out
    return captured.err


def test_a_baseline_that_names_no_setting_is_refused(tmp_path, capsys):
    fake_run(tmp_path / "0_x", ["weighting=fixed", "seed=0"], {"test/a/rmse": 1, "test/b/rmse": 1})
    fake_run(tmp_path / "1_x", ["weighting=dtp", "seed=0"], {"test/a/rmse": 2, "test/b/rmse": 1})
    before = snapshot(tmp_path)
    err = refused([tmp_path, "--baseline", "weighting=uncertainty"], capsys)
    assert "--baseline weighting=uncertainty names no setting" in err
    assert "choose from weighting=dtp, weighting=fixed, or single_task" in err
    err = refused([tmp_path, "--baseline", "weigthing=fixed"], capsys)  # a misspelt key
    assert "weigthing=fixed" in err and "weighting=fixed" in err
    err = refused([tmp_path, "--baseline", "single_task"], capsys)
    assert "no setting in" in err and "trains one task alone" in err
    assert snapshot(tmp_path) == before  # nothing written
    main([str(tmp_path), "--baseline", "weighting=dtp"])  # one that is there
    assert [r["Δm%"] for r in table(capsys.readouterr().out)] == ["25.00 ± –", "0.000 ± –"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"metrics": {"test/y/rmse": "abc"}}, ["\"metrics\" has test/y/rmse = 'abc'", "a number"]),
        ({"metrics": {"test/y/rmse": True}}, ["test/y/rmse = True", "a number"]),
        ({"metrics": {"test/y/rmse": [1.0]}}, ["test/y/rmse = [1.0]", "a number"]),
        ({"metrics": [1.0]}, ['"metrics" is [1.0]', "an object"]),
        ({"weighting": {"sigma": {"a": "x"}}}, ["\"weighting\" has sigma/a = 'x'", "a number"]),
        ({"true_sigma": {"a": "3"}}, ["\"true_sigma\" has a = '3'"]),
        ({"overrides": ["weighting=dtp", 3]}, ['"overrides" is', "a list of strings"]),
    ],
)
def test_a_results_file_with_a_value_that_is_not_a_number_is_refused(
    tmp_path, capsys, change, words
):
    fake_run(tmp_path / "0_x", ["weighting=fixed"], {"test/y/rmse": 1.0})
    fake_run(tmp_path / "1_x", ["weighting=dtp"], {"test/y/rmse": 2.0})
    bad = tmp_path / "1_x" / "results.json"
    bad.write_text(json.dumps(json.loads(bad.read_text()) | change))
    before = snapshot(tmp_path)
    err = refused([tmp_path], capsys)
    assert str(bad) in err and all(w in err for w in words), err
    assert snapshot(tmp_path) == before


def test_a_non_numeric_metric_is_one_line_from_the_command(tmp_path):
    fake_run(tmp_path / "0_x", ["weighting=fixed"], {"test/y1/rmse": "abc"})
    proc = run_report([tmp_path], cwd=tmp_path)
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.count("\n") == 1 and "test/y1/rmse = 'abc'" in proc.stderr
    assert not list(tmp_path.glob("report.*"))


def failing_writes(monkeypatch, folder, errno_, after=0):
    """Opening a file of `folder` for writing fails with `errno_` after `after` such opens
    (0: a read-only folder; more: a disk that fills up)."""
    real_open, opened = Path.open, []

    def open_(path, mode="r", *args, **kwargs):
        if "w" in mode and path.parent == folder:
            if len(opened) >= after:
                raise OSError(errno_, os.strerror(errno_))
            opened.append(path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)


@pytest.mark.parametrize(("errno_", "after"), [(errno.EROFS, 0), (errno.ENOSPC, 2)])
def test_a_folder_that_cannot_take_the_report_keeps_the_one_it_has(
    tmp_path, capsys, monkeypatch, errno_, after
):
    """A read-only folder, and a disk that fills up after two of the report's files: one line,
    and the earlier report (and everything else) as it was, no temporary file left."""
    fake_run(tmp_path / "0_x", ["weighting=fixed"], {"test/y/rmse": 1.0})
    main([str(tmp_path)])
    fake_run(tmp_path / "1_x", ["weighting=dtp"], {"test/y/rmse": 2.0})  # a report to update
    capsys.readouterr()
    before = snapshot(tmp_path)
    failing_writes(monkeypatch, tmp_path, errno_, after)
    err = refused([tmp_path], capsys)
    assert f"({os.strerror(errno_)}" in err and "); no file was changed" in err
    assert "--out DIR" in err
    assert str(tmp_path) in err
    assert snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_seed_curve_is_mean_and_range_at_the_steps_every_seed_logged():
    curve = seed_curve([{1: 1.0, 2: 2.0, 3: 5.0}, {2: 4.0, 3: 1.0}])
    assert curve.steps.tolist() == [2, 3]
    assert curve.mean.tolist() == [3.0, 3.0]
    assert curve.low.tolist() == [2.0, 1.0] and curve.high.tolist() == [4.0, 5.0]
    assert seed_curve([{1: 1.0}, {2: 2.0}]) is None


def test_a_failed_run_shows_its_error_and_counts_read_well(tmp_path, capsys):
    fake_run(tmp_path / "0_x", ["weighting=fixed"], {"test/a/accuracy": 0.5})
    fake_run(tmp_path / "1_x", ["weighting=dtp"], {}, status="failed")
    error = "weighting.alpha=0 is not allowed: it must be in (0, 1]"
    results = json.loads((tmp_path / "1_x" / "results.json").read_text())
    (tmp_path / "1_x" / "results.json").write_text(json.dumps(results | {"error": error}))
    main([str(tmp_path)])
    markdown = (tmp_path / "report.md").read_text()
    assert f"| `1_x` | failed | {error} |" in markdown
    assert "1 finished run in 1 setting, 1 did not finish" in markdown


def test_delta_m_against_single_task_learning_by_hand(tmp_path, capsys):
    """Two tasks, two seeds each: M_b,a = mean(0.8, 0.9) = 0.85 trained alone on [a],
    M_b,b = 2.0 on [b]; a multi-task run with a = 0.68, b = 2.5 has
    Δm% = 50·((0.68 − 0.85)/0.85 − (2.5 − 2)/2) = −22.5; other epochs are another setting."""
    for seed, (acc, rmse) in enumerate([(0.8, 1.9), (0.9, 2.1)]):
        fake_run(
            tmp_path / f"a{seed}", ["dataset.tasks=[a]", f"seed={seed}"], {"test/a/accuracy": acc}
        )
        fake_run(
            tmp_path / f"b{seed}", ["dataset.tasks=[b]", f"seed={seed}"], {"test/b/rmse": rmse}
        )
    fake_run(
        tmp_path / "m0", ["weighting=mgda", "seed=0"], {"test/a/accuracy": 0.68, "test/b/rmse": 2.5}
    )
    fake_run(tmp_path / "m1", ["weighting=mgda", "trainer.epochs=9", "seed=0"],
             {"test/a/accuracy": 0.9, "test/b/rmse": 1.0})  # fmt: skip
    main([str(tmp_path), "--baseline", "single_task"])
    out = capsys.readouterr().out
    delta = {r["setting"]: r["Δm%"] for r in table(out)}
    assert delta["dataset.tasks=[a]"] == "0.0 ± 8.3"  # ±0.05/0.85 over two seeds
    assert delta["dataset.tasks=[b]"] == "0.0 ± 7.1"  # ±0.1/2
    assert delta["weighting=mgda"] == "-22.50 ± –"
    assert delta["weighting=mgda, trainer.epochs=9"] == ""  # no single-task runs of 9 epochs
    assert "each task trained alone" in out


def test_single_task_rows_match_on_settings_below_dataset_tasks(tmp_path, capsys):
    """dataset.tasks.a.noise=2 is another data set: it needs single-task runs of its own."""
    fake_run(tmp_path / "a", ["dataset.tasks=[a]"], {"test/a/accuracy": 0.5})
    fake_run(tmp_path / "b", ["dataset.tasks=[b]"], {"test/b/accuracy": 0.5})
    fake_run(tmp_path / "m", ["weighting=mgda"], {"test/a/accuracy": 0.6, "test/b/accuracy": 0.5})
    fake_run(tmp_path / "n", ["weighting=mgda", "dataset.tasks.a.noise=2"],
             {"test/a/accuracy": 0.9, "test/b/accuracy": 0.9})  # fmt: skip
    main([str(tmp_path), "--baseline", "single_task"])
    delta = {r["setting"]: r["Δm%"] for r in table(capsys.readouterr().out)}
    assert delta["weighting=mgda"] == "10.00 ± –"  # 50·(0.1/0.5 + 0)
    assert delta["weighting=mgda, dataset.tasks.a.noise=2"] == ""
