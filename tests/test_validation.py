"""Bad input: one line on stderr naming the bad value and what is allowed, a non-zero exit
code, no traceback, and nothing already written lost or changed; a sweep's jobs get the same
checks, and an error outside them is one line too, its traceback in the run's log."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli, snapshot, strict_json, write_fake_mnist

from mtltrain.data import two_slope
from mtltrain.outputs import _run_folder as rundir

TINY = ["dataset.n_train=32", "dataset.n_test=16", "trainer.epochs=2"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A finished run, an unfinished one, and broken MNIST and checkpoint files."""
    root = tmp_path_factory.mktemp("inputs")
    done = root / "done"
    proc = run_cli([*TINY, f"hydra.run.dir={done}"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    unfinished = root / "unfinished"
    shutil.copytree(done / "checkpoints", unfinished / "checkpoints")
    ckpt = done / "checkpoints" / "last.pt"
    (root / "truncated.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save({"model": {"w": torch.zeros(2)}}, root / "foreign.pt")
    (root / "text.pt").write_text("not a checkpoint\n")
    shutil.copy(ckpt, root / "copied.pt")  # a checkpoint outside any run folder
    (root / "pickled.pt").write_bytes(pickle.dumps({"format": "mtltrain-checkpoint/2"}))
    narrow = run_cli([*TINY, "model.hidden=[8]", f"hydra.run.dir={root / 'narrow'}"], cwd=root)
    assert narrow.returncode == 0, narrow.stderr
    shutil.copytree(done, root / "swapped")  # the folder of one run, the checkpoint of another
    (root / "swapped" / "results.json").unlink()
    shutil.copy(root / "narrow" / "checkpoints" / "last.pt", root / "swapped" / "checkpoints")
    (root / "users").mkdir()
    (root / "users" / "results.json").write_text('{"mine": 1}\n')  # a user's own file
    (root / "users_log").mkdir()
    (root / "users_log" / "mtltrain.log").write_text("my own notes\n")  # named as a run's
    (root / "a_file").write_text("not a folder\n")
    for name, file, mangle in [
        ("mnist_ok", None, None),
        ("mnist_truncated", "t10k-labels-idx1-ubyte", lambda b: b[:-3]),
        ("mnist_magic", "train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:]),
        ("mnist_missing", "train-labels-idx1-ubyte", lambda b: None),
        ("mnist_size", "train-images-idx3-ubyte", lambda b: idx(np.zeros((32, 32, 32)))),
        ("mnist_label", "t10k-labels-idx1-ubyte", lambda b: idx(np.arange(16) * 20)),
    ]:
        write_fake_mnist(root / name, n_train=32, n_test=16)
        if file:
            path = root / name / "MNIST" / "raw" / file
            data = mangle(path.read_bytes())
            path.unlink() if data is None else path.write_bytes(data)
    write_fake_mnist(root / "mnist_unreadable", n_train=32, n_test=16)
    labels = root / "mnist_unreadable" / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.unlink()
    labels.mkdir()  # unreadable as a file, even by root
    return root


def idx(array: np.ndarray) -> bytes:
    """`array` as the bytes of an IDX file of unsigned bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist(name):
    return ["dataset=mnist_mtl", f"dataset.root={{root}}/{name}", "dataset.download=false"]


CASES = [
    # config values
    ("epochs zero", ["trainer.epochs=0"], ["trainer.epochs=0", ">= 1"]),
    ("batch size negative", ["trainer.batch_size=-4"], ["trainer.batch_size=-4", ">= 1"]),
    ("learning rate zero", ["trainer.optimizer.lr=0"], ["trainer.optimizer.lr=0", "> 0"]),
    ("learning rate negative", ["trainer.optimizer.lr=-0.1"], ["lr=-0.1", "> 0"]),
    ("epochs not a number", ["trainer.epochs=abc"], ["trainer.epochs=abc", "Integer"]),
    ("trainer key misspelt", ["trainer.epoch=5"], ["did you mean trainer.epochs?"]),
    ("unknown device", ["trainer.device=tpu"], ["trainer.device='tpu'", "cuda or cuda:N"]),
    ("unknown precision", ["trainer.precision=fp16"], ["'fp16'", "'bf16'"]),
    ("non-finite policy", ["trainer.nonfinite=ignore"], ["'ignore'", "'stop', 'skip'"]),
    ("fixed weights count", ["weighting=fixed", "weighting.weights=[1.0]"],
     ["weighting.weights=[1.0]", "2 (['y1', 'y2'])"]),
    ("fixed weights names", ["weighting=fixed", "weighting.weights={y1:1.0,y3:2.0}"],
     ["['y1', 'y3']", "['y1', 'y2']"]),
    ("task the data set lacks", [*mnist("mnist_ok"), "dataset.tasks=[cls3,depth]"],
     ["'depth'", "'cls10'"]),
    ("losses of a task it lacks", ["+dataset.losses.y3=[mse]"], ["['y3']", "['y1', 'y2']"]),
    ("loss of another kind", ["dataset.losses.y1=[cross_entropy]"],
     ["dataset.losses.y1=['cross_entropy']", "'gaussian_nll'"]),
    ("variance on a head without", [*mnist("mnist_ok"), "dataset.losses.recon=[gaussian_nll]"],
     ["task recon", "log-variance", "Tanh"]),
    ("uncertainty form", ["weighting.form=double"], ["'double'", "'likelihood'"]),
    ("dtp alpha", ["weighting=dtp", "weighting.alpha=0"], ["weighting.alpha=0", "(0, 1]"]),
    ("loss setting", ["loss.beta=2"], ["loss.beta=2.0", "[0, 1]"]),
    ("objective", ["objective=test/y9/rmse"], ["'test/y9/rmse'", "'test/y1/rmse'"]),
    ("dataset value type", ["dataset.n_train=abc"], ["dataset.n_train='abc'", "whole number"]),
    ("dataset size", ["dataset.n_train=0"], ["dataset.n_train=0", ">= 1"]),
    ("model setting it lacks", ["+model.depth=3"], ["model.depth is not a setting", "hidden"]),
    ("unknown choice", ["weighting=nope"], ["weighting=nope", "uncertainty", "fixed"]),
    # data
    ("mnist file missing", mnist("mnist_missing"), ["train-labels-idx1-ubyte", "dataset.root"]),
    ("mnist file truncated", mnist("mnist_truncated"), ["t10k-labels-idx1-ubyte", "truncated"]),
    ("mnist magic number", mnist("mnist_magic"), ["train-images-idx3-ubyte", "magic number"]),
    # checkpoints
    ("resume nothing", ["resume={root}/nowhere"], ["checkpoint not found", "nowhere"]),
    ("resume truncated", ["resume={root}/truncated.pt"], ["truncated.pt", "not a readable"]),
    ("resume foreign", ["resume={root}/foreign.pt"], ["foreign.pt", "not an mtltrain checkpoint"]),
    ("resume text", ["resume={root}/text.pt"], ["text.pt", "not a readable"]),
    ("resume finished", ["resume={root}/done"], ["done", "nothing to resume"]),
    ("resume a copied checkpoint", ["resume={root}/copied.pt"],
     ["copied.pt", "checkpoints/last.pt of a folder"]),
    ("resume a plain pickle", ["resume={root}/pickled.pt"], ["pickled.pt", "not a torch file"]),
    ("resume another run's checkpoint", ["resume={root}/swapped"],
     ["swapped", "other settings", "model.hidden=[512] → [8]"]),
    # output
    ("finished run folder", ["hydra.run.dir={root}/done"], ["done", "finished run"]),
    ("unfinished run folder", ["hydra.run.dir={root}/unfinished"],
     ["unfinished", "resume=", "unfinished run"]),
    ("run folder under a file", ["hydra.run.dir={root}/a_file/run"], ["a_file", "is a file"]),
    ("run folder with a user's file", ["hydra.run.dir={root}/users"],
     ["users", "holds files of its own (results.json)"]),
    ("run folder with a user's log", ["hydra.run.dir={root}/users_log"],
     ["users_log", "holds files of its own (mtltrain.log)"]),
    ("resume into another folder",
     ["resume={root}/done", "trainer.epochs=3", "hydra.run.dir={root}/other"],
     ["hydra.run.dir=", "own folder"]),
    ("resume of nothing", ["resume="], ["resume=''", "names no run"]),
    ("finished run, epochs not a number", ["resume={root}/done", "trainer.epochs=abc"],
     ["trainer.epochs='abc'", "whole number"]),
    # values that reach torch's or Hydra's own code unless the tool refuses them first
    ("learning rate nan", ["trainer.optimizer.lr=nan"], ["lr=nan", "finite number > 0"]),
    ("seed too large", ["seed=99999999999999999999"], ["seed=99999999999999999999", "2**63"]),
    ("optimizer setting it lacks", ["+trainer.optimizer.momentum=0.9"],
     ["trainer.optimizer.momentum is not a setting of torch.optim.Adam"]),
    ("optimizer needing a closure", ["trainer.optimizer._target_=torch.optim.LBFGS"],
     ["torch.optim.LBFGS", "closure", "torch.optim.Adam"]),
    ("noise std nan", ["dataset.tasks.y1.noise_std=nan"],
     ["dataset.tasks.y1.noise_std=nan", "finite number"]),
    ("initial log variance inf", ["weighting.init_log_var=inf"],
     ["weighting.init_log_var=inf", "finite number"]),
    ("revised c zero", ["weighting=revised_uncertainty", "weighting.init_c=0"],
     ["weighting.init_c=0", "> 0"]),
    ("fixed weight nan", ["weighting=fixed", "weighting.weights=[1.0,nan]"], ["nan", "finite"]),
    ("fixed weight negative", ["weighting=fixed", "weighting.weights=[1.0,-0.5]"],
     ["-0.5", "weighting.allow_negative=true"]),
    ("threads", ["trainer.threads=many"], ["trainer.threads='many'", "auto"]),
    ("skipped share", ["trainer.max_skipped=2"], ["trainer.max_skipped=2.0", "[0, 1]"]),
    # keys nothing reads, however they arrive, with the closest known one
    ("added trainer key", ["+trainer.foo=1"], ["trainer.foo is not a setting", "trainer takes"]),
    ("added top-level key", ["+foo=1"], ["foo is not a setting", "mtltrain --cfg job"]),
    ("added task key", ["+dataset.tasks.y1.bogus=1"],
     ["dataset.tasks.y1.bogus is not a setting", "slope, intercept, noise_std"]),
    ("added misspelt key", ["+trainer.epoch=5"], ["did you mean trainer.epochs?"]),
    ("added key of another node", ["+trainer.lr=1"], ["did you mean trainer.optimizer.lr?"]),
    ("key of another node", ["trainer.lr=1"], ["did you mean trainer.optimizer.lr?"]),
    ("choice misspelt", ["weighting=uncertinty"], ["did you mean weighting=uncertainty?"]),
    ("nested key misspelt", ["dataset.tasks.y1.noise_sd=1"],
     ["did you mean dataset.tasks.y1.noise_std?"]),
    ("added model key misspelt", ["+model.hiden=[8]"], ["did you mean model.hidden?"]),
    ("target misspelt", ["model._target_=mtltrain.models.mlp.SeparateMLPz"],
     ["cannot be loaded", "did you mean mtltrain.models.mlp.SeparateMLPs?"]),
    # values under which nothing can train
    ("fixed weights all zero", ["weighting=fixed", "weighting.weights=[0,0]"],
     ["weighting.weights=[0, 0]", "nothing trains"]),
    ("log variance beyond float32", ["weighting.init_log_var=1e6"],
     ["weighting.init_log_var=1000000.0", "[-87, 87]"]),
    ("tasks emptied by {}", ["dataset.tasks={}", "dataset.losses={}"],
     ["dataset.tasks={}", "would keep ['y1', 'y2']", "~dataset.tasks.<name>"]),
    ("every task removed", ["~dataset.tasks.y1", "~dataset.tasks.y2", "~dataset.losses.y1",
                            "~dataset.losses.y2"], ["dataset.tasks={}", "at least one entry"]),
    ("width zero", ["model.hidden=[0]"], ["model.hidden[0]=0", ">= 1"]),
    ("width negative", ["model.hidden=[-4]"], ["model.hidden[0]=-4", ">= 1"]),
    ("head width zero", ["dataset=sin_hetero", "+model.head.hidden=[0]"],
     ["model.head.hidden[0]=0", ">= 1"]),
    ("noise bounds swapped", ["dataset=sin_hetero", "dataset.noise_min=0.9",
                              "dataset.noise_max=0.1"], ["dataset.noise_min=0.9", "noise_max=0.1"]),
    ("switch not a boolean", ["trainer.progress=42"], ["trainer.progress=42", "true or false"]),
    ("validation 1.0", ["trainer.validation=1.0"], ["trainer.validation=1.0", "fraction below 1"]),
    ("override syntax", ["trainer.epochs=[1,"], ["trainer.epochs=[1,", "key=[1,2]"]),
    ("experiment misspelt", ["experiment=two_slope_sourc"],
     ["did you mean experiment=two_slope_source?"]),
    ("group set to null", ["weighting=null"], ["weighting=null", "uncertainty"]),
    ("group removed", ["~weighting"], ["~weighting", "uncertainty"]),
    ("group added again", ["+weighting=fixed"], ["weighting is chosen already", "drop the +"]),
    ("flag unknown", ["--hlep"], ["--hlep", "mtltrain --help"]),
    ("launcher without -m", ["hydra/launcher=joblib"], ["hydra/launcher=joblib", "add -m"]),
    ("resume_sweep without -m", ["resume_sweep=true"], ["resume_sweep=true", "add -m"]),
    ("trainer setting removed", ["~trainer.epochs"], ["~trainer.epochs", "cannot be removed"]),
    ("optimizer as a name", ["trainer.optimizer=adam"], ["trainer.optimizer='adam'", "_target_"]),
    ("optimizer setting torch refuses", ["+trainer.optimizer.weight_decay=-1"],
     ["'weight_decay': -1", "Invalid weight_decay value: -1"]),
    ("model input of another size", ["model.in_features=2"],
     ["does not take the data set's inputs", "in_features"]),
    ("decoder width zero", [*mnist("mnist_ok"), "model.heads.recon.hidden=[0,4,2]"],
     ["model.heads.recon.hidden[0]=0", ">= 1"]),
    ("data seed negative", ["dataset.seed=-1"], ["dataset.seed=-1", "[0, 2**63)"]),
    ("validation seed negative", ["trainer.validation_seed=-1"],
     ["trainer.validation_seed=-1", "[0, 2**63)"]),
    # a sweep's own settings
    ("joblib with no jobs", ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
     ["hydra.launcher.n_jobs=0", "-1 for one per core"]),
    ("optuna with no trials", ["-m", "hydra/sweeper=mtltrain_optuna", "hydra.sweeper.n_trials=-1",
                               "objective=test/y1/rmse"], ["hydra.sweeper.n_trials=-1", ">= 1"]),
    ("interval upside down", ["-m", "hydra/sweeper=mtltrain_optuna", "objective=test/y1/rmse",
                              "trainer.optimizer.lr=interval(1e-1,1e-4)"],
     ["trainer.optimizer.lr=interval(1e-1,1e-4)", "low <= high"]),
    ("empty range", ["-m", "seed=range(5,0)"], ["seed=range(5,0)", "sweeps no value"]),
    ("resume_sweep not a boolean", ["-m", "resume_sweep=maybe"], ["resume_sweep='maybe'"]),
    ("optuna direction", ["-m", "hydra/sweeper=mtltrain_optuna", "objective=test/y1/rmse",
                          "hydra.sweeper.direction=up"], ["hydra.sweeper.direction=up"]),
    ("tag unknown", ["-m", "hydra/sweeper=mtltrain_optuna", "objective=test/y1/rmse",
                     "trainer.optimizer.lr=tag(lg,interval(1e-4,1e-1))"], ["'lg'", "log"]),
    ("interval without optuna", ["-m", "trainer.optimizer.lr=interval(1e-4,1e-1)"],
     ["interval() is sampled by hydra/sweeper=mtltrain_optuna"]),
    ("one folder for every job", ["-m", "seed=0,1", "hydra.sweep.subdir=x"],
     ["hydra.sweep.subdir=x", "${hydra.job.num}"]),
    # data faults name the file
    ("mnist images of another size", mnist("mnist_size"), ["train-images-idx3-ubyte", "28×28"]),
    ("mnist label out of range", mnist("mnist_label"), ["t10k-labels-idx1-ubyte", "label 20"]),
    ("mnist file unreadable", mnist("mnist_unreadable"),
     ["train-labels-idx1-ubyte", "cannot be read"]),
]  # fmt: skip


# refused by the config check, before Hydra makes the run folder (the others need the data,
# the checkpoint or the folder itself)
CHECKED_BEFORE_THE_FOLDER = {
    c[0] for c in CASES
    if not any(a.startswith(("dataset=mnist", "resume=", "hydra.run.dir")) for a in c[1])
} - {"fixed weights count", "fixed weights names", "losses of a task it lacks",
     "loss of another kind", "objective", "model input of another size"}  # fmt: skip


def test_there_are_enough_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize(("case", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(folders, tmp_path, case, args, expected):
    before = snapshot(folders)
    args = [a.replace("{root}", str(folders)) for a in args]
    if not any(a.startswith(("hydra.run.dir", "resume")) for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mtltrain: error: ")
    for text in expected:
        assert text.replace("{root}", str(folders)) in lines[0], lines[0]
    assert snapshot(folders) == before  # nothing already written changed
    if case in CHECKED_BEFORE_THE_FOLDER:
        assert not (tmp_path / "run").exists()


@NO_GPU
def test_cuda_without_a_gpu(tmp_path):
    proc = run_cli([*TINY, "trainer.device=cuda", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "trainer.device=cuda" in line and "no CUDA GPU" in line


def test_config_errors_are_caught_before_the_run_folder_is_made(tmp_path):
    proc = run_cli(["trainer.epochs=0", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "run").exists()


def test_a_failed_sweep_job_is_marked_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", "dataset.n_train=0,32", "dataset.n_test=16", "trainer.epochs=1",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "1 of 2 jobs did not finish" in proc.stderr.strip().splitlines()[-1]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    statuses = [json.loads((p / "results.json").read_text())["status"] for p in jobs]
    assert statuses == ["failed", "completed"]
    assert (jobs[1] / "tb").is_dir() and not (jobs[0] / "tb").exists()


# ---- errors outside the tool's own checks -----------------------------------------------------


def test_an_unexpected_error_is_one_line_with_a_failed_results_json(tmp_path, monkeypatch):
    """A data set whose build raises IndexError: not a check of the tool's own."""
    monkeypatch.setattr(two_slope, "build", lambda **settings: [][0])
    proc = run_cli([*TINY, f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("mtltrain: error: IndexError") and "mtltrain.log" in line
    results = strict_json(tmp_path / "r" / "results.json")
    assert results["status"] == "failed" and "IndexError" in results["error"]
    log = (tmp_path / "r" / "mtltrain.log").read_text()
    assert "Traceback" in log and "IndexError" in log


def test_a_sweep_job_gets_the_same_checks_as_a_single_run(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.optimizer._target_=torch.optim.LBFGS", "seed=0,1",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 1
    for job in rundir.jobs_in(sweep):
        error = strict_json(job / "results.json")["error"]
        assert "needs a closure" in error and "please report" not in error
