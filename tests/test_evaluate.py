"""`mtltrain-eval` and `mtltrain-export` through the entry points their console scripts call
(`run_eval`, `run_export`, in this process): a trained run's selected model evaluated on a split
equals its results.json, data set overrides, what is written and what is refused; the exported
weights and torch.export program give the model's outputs; and the command's exit status in a
process of its own."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import in_process, run_cli
from omegaconf import OmegaConf

from mtltrain import evaluate
from mtltrain.config import build
from mtltrain.evaluate import flat_outputs, load_exported, open_trained
from mtltrain.tasks import TaskSpec

# one worker builds the costly module-scoped `runs`, `exported` for the tests
# that use them; the other tests are free to go to any worker
SHARES_FIXTURE = pytest.mark.xdist_group("evaluate")
ROOT = Path(__file__).resolve().parent.parent
TINY = ["trainer.epochs=3", "dataset.n_train=64", "dataset.n_test=32"]
# a heteroscedastic task (its head emits MeanLogVar) and a validation split to select by
BEST = [*TINY, "dataset.losses.y2=[gaussian_nll]", "trainer.validation=16",
        "trainer.select=best", "objective=validation/y1/rmse"]  # fmt: skip


def run_eval(args, cwd):
    """`mtltrain-eval <args>` in `cwd`, in this process."""
    return in_process(evaluate.main, ["mtltrain-eval", *map(str, args)], cwd)


def run_export(args, cwd):
    """`mtltrain-export <args>` in `cwd`, in this process."""
    return in_process(evaluate.export_main, ["mtltrain-export", *map(str, args)], cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs: `best` (selects its best validation evaluation, a heteroscedastic
    task) and `last` (no validation split, the last evaluation)."""
    root = tmp_path_factory.mktemp("runs")
    for name, overrides in (("best", BEST), ("last", TINY)):
        proc = run_cli([*overrides, f"hydra.run.dir={root / name}"], cwd=root)
        assert proc.returncode == 0, proc.stderr
    return root


def test_a_run_that_evaluated_its_first_batches_is_evaluated_so(tmp_path):
    """trainer.limit_batches (debug=overfit): results.json scores the first batches, and so does
    mtltrain-eval; trainer.limit_batches=null scores the whole split."""
    limited = ["trainer.limit_batches=1", "trainer.eval_batch_size=8"]
    proc = run_cli([*TINY, *limited, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    reported = {k: v for k, v in results_of(run)["metrics"].items() if k.startswith("test/")}
    assert run_eval([run], cwd=tmp_path).returncode == 0
    first = json.loads((run / "eval" / "test.json").read_text())
    assert first["metrics"] == pytest.approx(reported, rel=1e-6) and first["samples"] == 8
    out = tmp_path / "all.json"
    assert run_eval([run, "trainer.limit_batches=null", "--out", out], cwd=tmp_path).returncode == 0
    whole = json.loads(out.read_text())
    assert whole["samples"] == 32 and whole["metrics"] != pytest.approx(reported, rel=1e-6)


def files_of(folder):
    """Every file under `folder` but eval/, with its bytes."""
    return {
        p.relative_to(folder): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and "eval" not in p.relative_to(folder).parts
    }


def results_of(run):
    return json.loads((run / "results.json").read_text())


@SHARES_FIXTURE
@pytest.mark.parametrize("split", ["test", "validation", "train"])
def test_metrics_equal_results_json(runs, split):
    run = runs / "best"
    before = files_of(run)
    proc = run_eval([run, f"split={split}"], cwd=runs)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((run / "eval" / f"{split}.json").read_text())
    reported = {k: v for k, v in results_of(run)["metrics"].items() if k.startswith(f"{split}/")}
    assert reported and written["metrics"] == pytest.approx(reported, rel=1e-6, abs=1e-9)
    assert written["checkpoint"] == "checkpoints/best.pt" and written["split"] == split
    assert written["selected"] == results_of(run)["selected"]
    assert files_of(run) == before  # nothing the run wrote changed
    lines = proc.stdout.splitlines()
    assert "checkpoints/best.pt (selected by best: epoch" in lines[0]
    assert lines[1].split() == ["metric", "value", "results.json"]
    name, value, there = lines[2].split()
    assert name == f"{split}/y1/rmse" and value == there


@SHARES_FIXTURE
def test_select_last_reads_last_checkpoint_and_test_is_the_default(runs):
    run = runs / "last"
    proc = run_eval([run], cwd=runs)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((run / "eval" / "test.json").read_text())
    assert written["checkpoint"] == "checkpoints/last.pt" and written["samples"] == 32
    reported = {k: v for k, v in results_of(run)["metrics"].items() if k.startswith("test/")}
    assert written["metrics"] == pytest.approx(reported, rel=1e-6, abs=1e-9)


@SHARES_FIXTURE
def test_a_run_that_did_not_finish_gives_its_checkpoints_model(runs, tmp_path):
    run = tmp_path / "stopped"
    shutil.copytree(runs / "last", run, ignore=shutil.ignore_patterns("eval"))
    (run / "results.json").unlink()  # as a run killed after its checkpoint leaves it
    proc = run_eval([run], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith(
        "checkpoints/last.pt (the run did not finish), split test"
    )
    assert proc.stdout.splitlines()[1].split() == ["metric", "value"]
    written = json.loads((run / "eval" / "test.json").read_text())
    reported = {
        k: v for k, v in results_of(runs / "last")["metrics"].items() if k.startswith("test/")
    }
    assert written["selected"] is None and written["metrics"] == pytest.approx(reported, rel=1e-6)


@SHARES_FIXTURE
def test_dataset_overrides_apply_on_top_of_the_saved_config(runs, tmp_path):
    out = tmp_path / "other.json"
    proc = run_eval([runs / "last", "dataset.n_test=8", "--out", out], cwd=runs)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())
    assert written["samples"] == 8 and written["overrides"] == ["dataset.n_test=8"]
    # another test set: results.json's column is left out, the numbers differ from it
    assert proc.stdout.splitlines()[1].split() == ["metric", "value"]
    reported = results_of(runs / "last")["metrics"]["test/y1/mse"]
    assert written["metrics"]["test/y1/mse"] != pytest.approx(reported)


@SHARES_FIXTURE
def test_an_eval_file_is_replaced_only_if_eval_wrote_it(runs, tmp_path):
    out = tmp_path / "metrics.json"
    assert run_eval([runs / "last", "--out", out], cwd=runs).returncode == 0
    assert run_eval([runs / "last", "--out", out], cwd=runs).returncode == 0  # its own: replaced
    out.write_text('{"mine": 1}')
    proc = run_eval([runs / "last", "--out", out], cwd=runs)
    assert proc.returncode == 2
    assert f"{out} exists and mtltrain-eval did not write it" in proc.stderr
    assert out.read_text() == '{"mine": 1}'


def make_failed_run(folder):
    (folder / ".hydra").mkdir(parents=True)
    (folder / "results.json").write_text('{"status": "failed", "error": "x"}')
    return folder


@SHARES_FIXTURE
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["{tmp}/nowhere"], "nowhere is not a run folder: there is no such folder"),
        (["{tmp}"], "is not a run folder of mtltrain: it holds neither results.json nor"),
        (["{failed}"], "holds a run that did not finish (failed) and left no checkpoint"),
        (["{runs}"], "is not a run folder but holds 2 runs (a sweep's folder?)"),
        (["{last}", "split=dev"], "split=dev is not allowed: choose one of train, validation"),
        (["{last}", "split=validation"], "split=validation is not allowed: this run held out"),
        (["{last}", "trainer.epochs=5"], "trainer.epochs=5 is not allowed: the model is the run's"),
        (["{last}", "dataset.n_tset=5"], "dataset.n_tset is not a setting of mtltrain: did you"),
        (["{last}", "dataset.n_test=abc"], "dataset.n_test='abc' is not allowed"),
        (["{last}", "dataset.tasks=[y1]"], "dataset.tasks=[y1] is not allowed: it does not fit"),
        (["{last}", "~dataset.tasks.y2", "~dataset.losses.y2"], "does not take"),
        (["{last}", "dataset.n_test=1,2"], "dataset.n_test=1,2 is not allowed"),
        (["{last}", "dataset.n_test=["], "dataset.n_test=[ cannot be read"),
        (["{last}", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line(runs, tmp_path, args, says):
    failed = make_failed_run(tmp_path / "failed")
    (tmp_path / "empty").mkdir()
    places = {"tmp": tmp_path / "empty", "failed": failed, "last": runs / "last", "runs": runs}
    proc = run_eval([a.format(**places) for a in args], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mtltrain-eval: error: ") and says in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_help_says_what_it_reads_and_writes(tmp_path):
    proc = run_eval(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "<run folder>/eval/<split>.json" in proc.stdout and "split=NAME" in proc.stdout
    proc = run_export(["--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "model.safetensors" in proc.stdout


def test_console_scripts_are_declared():
    scripts = (ROOT / "pyproject.toml").read_text().partition("[project.scripts]")[2]
    assert 'mtltrain-eval = "mtltrain.evaluate:main"' in scripts
    assert 'mtltrain-export = "mtltrain.evaluate:export_main"' in scripts


@SHARES_FIXTURE
def test_exit_status_in_a_process(runs):
    """The console script's main in an interpreter of its own: exit status 2, one line, and
    the arguments checked before torch is imported."""
    code = (
        "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules)); "
        "from mtltrain.evaluate import main; main()"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code, str(runs / "last"), "split=dev"],
                          capture_output=True, text=True, env=env, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "False\n"
    said = "split=dev is not allowed: choose one of train, validation, test"
    assert proc.stderr == f"mtltrain-eval: error: {said}\n"


@pytest.fixture(scope="module")
def exported(runs):
    out = runs / "export"
    proc = run_export([runs / "best", out], cwd=runs)
    assert proc.returncode == 0, proc.stderr
    return out


@SHARES_FIXTURE
def test_export_writes_every_file(exported):
    manifest = json.loads((exported / "export.json").read_text())
    names = ["config.yaml", "export.json", "model.pt", "model.pt2", "model.safetensors",
             "tasks.json"]  # fmt: skip
    assert sorted(p.name for p in exported.iterdir()) == names == manifest["files"]
    assert manifest["notes"] == {} and manifest["checkpoint"] == "checkpoints/best.pt"
    assert manifest["outputs"] == ["y1", "y2.mean", "y2.log_var"]


@SHARES_FIXTURE
def test_exported_weights_rebuild_the_model(runs, exported):
    from safetensors.torch import load_file

    model = open_trained(runs / "best").model
    # by hand: the model built from the exported config and task specs, given the weights
    config = OmegaConf.load(exported / "config.yaml")
    specs = json.loads((exported / "tasks.json").read_text())
    tasks = tuple(TaskSpec(**{**s, "losses": tuple(s["losses"])}) for s in specs)
    fresh = build(config.model, tasks=tasks).eval()
    fresh.load_state_dict(load_file(exported / "model.safetensors"))
    state = torch.load(exported / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in fresh.state_dict().items())
    x = torch.randn(5, 1)
    with torch.no_grad():
        want = flat_outputs(model(x)[0])
        for rebuilt in (fresh, load_exported(exported)):
            got = flat_outputs(rebuilt(x)[0])
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want)


@SHARES_FIXTURE
def test_exported_program_gives_the_model_outputs_for_any_batch_size(runs, exported):
    model = open_trained(runs / "best").model
    program = torch.export.load(exported / "model.pt2").module()
    for n in (1, 7):
        x = torch.randn(n, 1)
        with torch.no_grad():
            want = flat_outputs(model(x)[0])
        got = program(x)
        assert got.keys() == want.keys()
        assert all(torch.allclose(got[k], want[k], rtol=1e-6, atol=1e-7) for k in want)


@SHARES_FIXTURE
def test_export_without_safetensors_keeps_the_state_dict(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails as if missing
    proc = run_export([runs / "last", tmp_path / "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model.safetensors not written: ImportError: the safetensors package" in proc.stderr
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert "model.safetensors" not in manifest["files"] and "model.safetensors" in manifest["notes"]
    model = load_exported(tmp_path / "out")  # from model.pt
    trained = open_trained(runs / "last").model
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())


@SHARES_FIXTURE
def test_export_refuses_a_folder_of_other_files_and_replaces_its_own(runs, tmp_path):
    out = tmp_path / "out"
    assert run_export([runs / "last", out], cwd=tmp_path).returncode == 0
    assert run_export([runs / "last", out], cwd=tmp_path).returncode == 0  # an earlier export
    (out / "notes.txt").write_text("mine")
    proc = run_export([runs / "last", out], cwd=tmp_path)
    assert proc.returncode == 2 and "holds files mtltrain-export did not write (notes.txt)" in (
        proc.stderr
    )
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_mnist_model_evaluates_and_exports(tmp_path, mnist_root):
    """A convolutional model with a segmentation head: its evaluation equals results.json and
    its torch.export program gives its outputs."""
    args = ["dataset=mnist_mtl", f"dataset.root={mnist_root}", "dataset.download=false",
            "dataset.tasks=[cls10,seg]", "trainer.epochs=1", "trainer.batch_size=32",
            f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    assert run_cli(args, cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    assert run_eval([run], cwd=tmp_path).returncode == 0
    written = json.loads((run / "eval" / "test.json").read_text())["metrics"]
    reported = {k: v for k, v in results_of(run)["metrics"].items() if k.startswith("test/")}
    assert written == pytest.approx(reported, rel=1e-6, abs=1e-9)
    proc = run_export([run, tmp_path / "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trained = open_trained(run)
    x = trained.data.test.inputs[:3]
    with torch.no_grad():
        want = flat_outputs(trained.model(x)[0])
    got = torch.export.load(tmp_path / "out" / "model.pt2").module()(x)
    assert all(torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want)


@SHARES_FIXTURE
def test_another_evaluation_batch_size_gives_the_same_metrics(runs, tmp_path):
    out = tmp_path / "m.json"
    args = [runs / "best", "trainer.eval_batch_size=5", "trainer.device=cpu", "--out", out]
    proc = run_eval(args, cwd=runs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split() == ["metric", "value", "results.json"]
    reported = {k: v for k, v in results_of(runs / "best")["metrics"].items() if "test/" in k}
    assert json.loads(out.read_text())["metrics"] == pytest.approx(reported, rel=1e-5)


@SHARES_FIXTURE
def test_the_pages_python_examples_run(exported, tmp_path, monkeypatch):
    page = (ROOT / "docs" / "evaluate-export.md").read_text()
    examples = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(examples) == 2
    shutil.copytree(exported, tmp_path / "exported")
    monkeypatch.chdir(tmp_path)
    outputs = []
    for code in examples:
        names = {"x": torch.randn(3, 1)}
        exec(code, names)
        outputs.append(set(names["outputs"]))
    assert outputs == [{"y1", "y2"}, {"y1", "y2.mean", "y2.log_var"}]
