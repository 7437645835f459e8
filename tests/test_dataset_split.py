"""A data set of files read by a torch Dataset (`mtltrain.data.DatasetSplit`), trained through
a DataLoader: workers, an exact resume mid-epoch, transforms the config names, a validation
split held out of it; and the debug runs (debug=fast, debug=overfit) on it and on tensors.

The user's project is written by each test under tmp_path: a CSV file per split, a module with
the Dataset class and its build function (on sys.path), and configs in a --config-dir."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import StopAt, in_process, make_config, run_cli, through_disk
from omegaconf import OmegaConf, open_dict

from mtltrain import evaluate
from mtltrain.build import build_data, build_job
from mtltrain.config._schema import settings
from mtltrain.data.base import DatasetSplit, MultiTaskData, Split, held_out, hold_out
from mtltrain.errors import ConfigError, Interrupted
from mtltrain.loop._trainer import train_alone
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.outputs import _run_folder as rundir
from mtltrain.stacking import unstackable
from mtltrain.tasks import TaskSpec

MODULE = '''
import csv
import os
from collections import Counter

import torch
from torch.utils.data import Dataset

from mtltrain.data import MultiTaskData
from mtltrain.tasks import TaskSpec

LOADED = Counter()  # items loaded, by file (in this process: num_workers=0)


class Rows(Dataset):
    """x0,x1,y,c per line: inputs [x0, x1] (as a 2×1×1 image), a regression and a class."""

    def __init__(self, path):
        with open(path) as f:
            self.rows = [[float(v) for v in row] for row in csv.reader(f)]
        self.path = path

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        LOADED[os.path.basename(self.path)] += 1
        x0, x1, y, c = self.rows[i]
        x = torch.tensor([[[x0]], [[x1]]], dtype=torch.float64)
        return x, {"y": torch.tensor([y]), "c": torch.tensor(int(c))}


def build(root):
    tasks = (
        TaskSpec("y", "regression", 1, ("mse",)),
        TaskSpec("c", "classification", 2, ("cross_entropy",)),
    )
    train, test = (Rows(os.path.join(root, f"{split}.csv")) for split in ("train", "test"))
    return MultiTaskData(tasks, train=train, test=test)


def build_missing_a_target(root):
    data = build(root)
    return MultiTaskData(data.tasks + (TaskSpec("z", "regression", 1, ("mse",)),), data.train,
                         data.test)


class Pairs(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(2), torch.zeros(1)


def build_bad_items(root):
    return MultiTaskData(build(root).tasks, train=Pairs(), test=Pairs())


class ScalarTargets(Rows):
    """y as a 0-d tensor: collated to [N] against the head's [N, 1] (a loss would broadcast)."""

    def __getitem__(self, i):
        x, targets = super().__getitem__(i)
        return x, {**targets, "y": targets["y"][0]}


class FloatClasses(Rows):
    """c as a float (2.0): cross entropy takes class indices as integers only."""

    def __getitem__(self, i):
        x, targets = super().__getitem__(i)
        return x, {**targets, "c": targets["c"].float()}


def build_float_classes(root):
    train, test = (FloatClasses(os.path.join(root, f"{s}.csv")) for s in ("train", "test"))
    return MultiTaskData(build(root).tasks, train=train, test=test)


def build_scalar_targets(root):
    train, test = (ScalarTargets(os.path.join(root, f"{s}.csv")) for s in ("train", "test"))
    return MultiTaskData(build(root).tasks, train=train, test=test)


class Flatten:
    def __call__(self, x):
        return x.reshape(-1)


class Jitter:  # a random augmentation
    def __call__(self, x):
        return x + torch.rand(x.shape, dtype=x.dtype)


class Plus:
    def __init__(self, by):
        self.by = by

    def __call__(self, x):
        return x + self.by
'''

CONFIGS = {
    "dataset/rows.yaml": """
        _target_: rowsdata.build
        root: ROOT
        transform: {_target_: rowsdata.Flatten}
    """,
    "model/rows.yaml": """
        _target_: mtltrain.models.MultiTaskModel
        encoder: {_target_: mtltrain.models.mlp.MLP, in_features: 2, hidden: [8], out_features: 8,
                  activate_output: true}
        head: {_target_: mtltrain.models.mlp.MLP, _partial_: true, in_features: 8}
    """,
    "trainer/rows.yaml": """
        defaults: [default]
        epochs: 3
        batch_size: 8
        eval_batch_size: 16
        threads: 1
        deterministic: true
        checkpoint_interval: 0
    """,
}
N_TRAIN, N_TEST = 40, 40


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The user's folder: data files, the module (on sys.path) and configs; returns the
    command line's first arguments and the module."""
    g = torch.Generator().manual_seed(0)
    for name, n in (("train.csv", N_TRAIN), ("test.csv", N_TEST)):
        x = torch.randn(n, 2, generator=g)
        y = 2 * x[:, 0] - x[:, 1]
        lines = [
            f"{a:.4f},{b:.4f},{t:.4f},{int(a > 0)}" for (a, b), t in zip(x.tolist(), y, strict=True)
        ]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    (tmp_path / "rowsdata.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rowsdata", raising=False)
    for path, text in CONFIGS.items():
        (tmp_path / "conf" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / path).write_text(textwrap.dedent(text).replace("ROOT", str(tmp_path)))
    args = ["--config-dir", tmp_path / "conf", "dataset=rows", "model=rows", "trainer=rows"]
    return args, tmp_path


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def loaded():
    return sys.modules["rowsdata"].LOADED


def state(run_dir):
    return checkpoint.load(rundir.checkpoint_file(run_dir))["trainer"]


def weights(run_dir):
    return state(run_dir)["model"]


def run(args, cwd, *more):
    proc = run_cli([*args, *more], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_dataset_of_files_trains_and_workers_load_the_same_batches(project):
    args, tmp = project
    run(args, tmp, "trainer.epochs=1", f"hydra.run.dir={tmp}/w0")
    run(args, tmp, "trainer.epochs=1", "trainer.num_workers=2", f"hydra.run.dir={tmp}/w2")
    alone, workers = results(tmp / "w0"), results(tmp / "w2")
    assert alone["status"] == "completed" and alone["steps"] == N_TRAIN // 8
    assert set(alone["metrics"]) >= {"test/y/rmse", "test/c/accuracy", "train/y/rmse"}
    assert workers["metrics"] == alone["metrics"]
    for k, v in weights(tmp / "w0").items():
        assert torch.equal(weights(tmp / "w2")[k], v), k


def test_a_run_stopped_mid_epoch_resumes_with_the_same_remaining_batches(project):
    """Stopped in the third batch of epoch 2, resumed from its state: the same run as one
    left alone, to the bit (the state goes through a file as a checkpoint does)."""
    _, tmp = project
    alone = build_job(rows_config(tmp))
    train_alone(alone)
    stopped = build_job(rows_config(tmp), extra_callbacks=[StopAt(8)])
    with pytest.raises(Interrupted):
        train_alone(stopped)
    assert (stopped.epoch, stopped.batch, stopped.step) == (1, 3, 8)
    resumed = build_job(rows_config(tmp))
    resumed.load_state_dict(through_disk(stopped.state_dict()))
    loaded().clear()
    train_alone(resumed)
    assert loaded()["train.csv"] == 2 * 8 + 5 * 8  # the rest of epoch 2, then epoch 3
    for a, b in zip(alone.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert alone.test_metrics == resumed.test_metrics


def test_a_random_transform_in_workers_draws_the_same_after_a_resume(project):
    """A random train_transform run in two workers: stopped mid-epoch (its next batch loaded
    by another worker than it was) and resumed, the same run as one left alone."""
    _, tmp = project
    jitter = {"workers": 2, "train_transform": "rowsdata.Jitter"}
    alone = build_job(rows_config(tmp, **jitter))
    train_alone(alone)
    stopped = build_job(rows_config(tmp, **jitter), extra_callbacks=[StopAt(8)])
    with pytest.raises(Interrupted):
        train_alone(stopped)
    assert (stopped.epoch, stopped.batch, stopped.step) == (1, 3, 8)  # mid-epoch
    resumed = build_job(rows_config(tmp, **jitter))
    resumed.load_state_dict(through_disk(stopped.state_dict()))
    train_alone(resumed)
    for a, b in zip(alone.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def rows_config(root, workers=0, train_transform=None):
    """The run's config, with the user's data set and model in place of the defaults."""
    cfg = make_config(["trainer.epochs=3", "trainer.batch_size=8", "trainer.eval_batch_size=16",
                       "trainer.threads=1", "trainer.deterministic=true",
                       f"trainer.num_workers={workers}"])  # fmt: skip
    with open_dict(cfg):
        for group in ("dataset", "model"):
            cfg[group] = OmegaConf.create(
                textwrap.dedent(CONFIGS[f"{group}/rows.yaml"]).replace("ROOT", str(root))
            )
        if train_transform is not None:
            cfg.dataset.train_transform = {"_target_": train_transform}
    return cfg


def dataset_node(root, **more):
    """The dataset config as a run reads it."""
    return OmegaConf.create({"_target_": "rowsdata.build", "root": str(root), **more})


def test_transforms_apply_to_every_split_and_train_transform_to_training_only(project):
    _, tmp = project
    normalize = {"_target_": "torchvision.transforms.v2.Normalize", "mean": [1.0, 2.0],
                 "std": [2.0, 4.0]}  # fmt: skip
    node = dataset_node(
        tmp,
        transform=[normalize, {"_target_": "rowsdata.Flatten"}],
        train_transform={"_target_": "rowsdata.Plus", "by": 10.0},
    )
    data = build_data(node, settings(make_config(["trainer.validation=4"]).trainer))
    x0, x1, *_ = (float(v) for v in (tmp / "test.csv").read_text().split("\n")[0].split(","))
    test = data.test.head(1).inputs[0]
    assert test.dtype == torch.float32 and test.shape == (2,)
    torch.testing.assert_close(test, torch.tensor([(x0 - 1) / 2, (x1 - 2) / 4]))
    kept, held = held_out(N_TRAIN, 4, 0)
    rows = [line.split(",") for line in (tmp / "train.csv").read_text().split("\n")]
    a0, a1 = float(rows[kept[0]][0]), float(rows[kept[0]][1])
    torch.testing.assert_close(
        data.train.head(1).inputs[0], torch.tensor([(a0 + 10 - 1) / 2, (a1 + 10 - 2) / 4])
    )
    b0, b1 = float(rows[held[0]][0]), float(rows[held[0]][1])  # not through train_transform
    torch.testing.assert_close(
        data.validation.head(1).inputs[0], torch.tensor([(b0 - 1) / 2, (b1 - 2) / 4])
    )


def test_a_run_with_transforms_evaluates_and_exports(project):
    """mtltrain-eval and mtltrain-export rebuild the data set from the saved config, whose
    dataset.transform is mtltrain's, not a setting of the build function."""
    args, tmp = project
    run(args, tmp, "trainer.epochs=1", f"hydra.run.dir={tmp}/r")
    proc = in_process(evaluate.main, ["mtltrain-eval", str(tmp / "r")], tmp)
    assert proc.returncode == 0, proc.stderr
    said = json.loads((tmp / "r" / "eval" / "test.json").read_text())["metrics"]
    assert said == {k: v for k, v in results(tmp / "r")["metrics"].items() if k.startswith("test/")}
    proc = in_process(
        evaluate.export_main, ["mtltrain-export", str(tmp / "r"), str(tmp / "x")], tmp
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp / "x" / "model.pt2").is_file() and (tmp / "x" / "model.pt").is_file()


def test_validation_is_held_out_of_a_dataset(project):
    args, tmp = project
    data = build_data(dataset_node(tmp), settings(make_config(["trainer.validation=0.25"]).trainer))
    assert isinstance(data.validation, DatasetSplit)
    assert (len(data.train), len(data.validation)) == (30, 10)
    kept, held = held_out(N_TRAIN, 0.25, 0)
    assert data.validation.dataset.indices == held.tolist()
    assert data.train.dataset.indices == kept.tolist()
    run(args, tmp, "trainer.validation=0.25", "trainer.epochs=1", f"hydra.run.dir={tmp}/v")
    metrics = results(tmp / "v")["metrics"]
    assert "validation/y/rmse" in metrics and "test/y/rmse" in metrics


def test_transforms_of_a_data_set_of_tensors_are_refused(tmp_path):
    proc = run_cli(
        ["trainer.epochs=1", "+dataset.transform={_target_:torch.nn.Identity}",
         f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert "dataset.transform is not allowed" in line and "torch Dataset" in line


def test_a_transform_that_is_not_a_target_is_refused():
    node = dataset_node("x", transform=3)
    with pytest.raises(ConfigError, match=r"dataset\.transform=3 is not allowed"):
        build_data(node, settings(make_config().trainer))


def test_debug_fast_runs_one_batch_of_each_split_and_writes_no_checkpoint(project):
    args, tmp = project
    run(args, tmp, "debug=fast", "trainer.validation=20", f"hydra.run.dir={tmp}/fast")
    done = results(tmp / "fast")
    assert done["status"] == "completed" and (done["epochs"], done["steps"]) == (1, 1)
    assert not list((tmp / "fast").rglob("*.pt"))
    # 2 (the model's check) + one batch of 8 + one of 16 of validation + one of 16 of train
    # (results.json's train metrics); of the test file one batch of 16 (no figures: they are
    # drawn on request, trainer.figures)
    assert loaded() == {"train.csv": 2 + 8 + 16 + 16, "test.csv": 16}


def test_debug_overfit_repeats_the_same_few_batches(project):
    args, tmp = project
    run(args, tmp, "debug=overfit", "trainer.batch_size=4", f"hydra.run.dir={tmp}/o")
    assert results(tmp / "o")["steps"] == 3 * 4


@pytest.mark.parametrize(
    "overrides, steps, checkpoint",
    [(["debug=fast"], 1, False), (["debug=overfit", "trainer.epochs=2"], 2 * 4, True)],
)
def test_debug_runs_on_a_data_set_of_tensors(tmp_path, overrides, steps, checkpoint):
    run([*overrides, "dataset.n_train=128"], tmp_path, f"hydra.run.dir={tmp_path}/run")
    assert results(tmp_path / "run")["steps"] == steps
    assert rundir.checkpoint_file(tmp_path / "run").exists() == checkpoint


def test_overfit_batches_are_the_same_every_epoch():
    job = build_job(make_config(["debug=overfit", "dataset.n_train=128"]))
    first = job.epoch_order()
    job.epoch += 1
    assert torch.equal(job.epoch_order(), first) and torch.equal(first, torch.arange(128))
    assert job.batches_per_epoch == 4


def test_the_docs_example_of_a_data_set_from_files_runs(tmp_path, monkeypatch):
    """docs/extending.md's module and config, as written there, train with `--config-dir`."""
    page = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    section = page.split("## A data set from files")[1].split("\n## ")[0]
    module = section.split("```python\n")[1].split("```")[0]
    config = section.split("```yaml\n")[1].split("```")[0]
    (tmp_path / "rowsdata.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rowsdata", raising=False)
    for name in ("train", "test"):
        (tmp_path / f"{name}.csv").write_text(
            "".join(f"{i},{-i},{2 * i},{i % 2}\n" for i in range(12))
        )
    conf = tmp_path / "conf"
    for path, text in {**CONFIGS, "dataset/rows.yaml": config}.items():
        (conf / path).parent.mkdir(parents=True, exist_ok=True)
        (conf / path).write_text(textwrap.dedent(text).replace("/path/to/rows", str(tmp_path)))
    args = ["--config-dir", conf, "dataset=rows", "model=rows", "trainer=rows"]
    run(args, tmp_path, "trainer.epochs=1", f"hydra.run.dir={tmp_path}/run")
    assert results(tmp_path / "run")["steps"] == 2


@pytest.mark.parametrize(
    "target, says",
    [
        ("build_missing_a_target", "have no target of the tasks ['z']"),
        ("build_bad_items", "is not allowed as (Tensor, Tensor): give (input, {task: target})"),
        (
            "build_scalar_targets",
            "regression task y have the shape [] per sample, and its head predicts [1]",
        ),
        ("build_float_classes", "classification task c are torch.float32: give class indices"),
    ],
)
def test_items_that_do_not_fit_the_tasks_are_one_line(project, target, says):
    args, tmp = project
    proc = run_cli([*args, f"dataset._target_=rowsdata.{target}", f"hydra.run.dir={tmp}/r"], tmp)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert says in line


def test_jobs_on_a_dataset_do_not_stack(project):
    _, tmp = project
    jobs = [build_job(rows_config(tmp)) for _ in range(2)]
    assert "torch Datasets" in unstackable(jobs)


def test_a_data_sets_own_validation_split_is_not_replaced():
    """trainer.validation on a data set that has a validation split (qm9's n_val) is refused
    in one line, not silently swapped for one drawn from training; 0 keeps the data set's."""
    tasks = (TaskSpec("y", "regression", 1, ("mse",)),)

    def split(n: int) -> Split:
        return Split(torch.randn(n, 2), {"y": torch.randn(n, 1)})

    data = MultiTaskData(tasks, split(10), split(4), split(3))
    with pytest.raises(ConfigError, match=r"trainer\.validation=2 is not allowed: the data set"):
        hold_out(data, 2, 0)
    assert hold_out(data, 0, 0).validation is data.validation
