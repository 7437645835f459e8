"""Training in-process: σ recovery, determinism, the task function's return value."""

import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_config
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.build import build_job
from mtltrain.config._compose import config_dir
from mtltrain.errors import ConfigError
from mtltrain.loop._callbacks import Callback
from mtltrain.loop._job_step import PerJobStep
from mtltrain.loop._trainer import Trainer, train_alone
from mtltrain.run import open_run, run

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import strategy_pages  # noqa: E402

TINY = ["trainer.epochs=2", "dataset.n_train=64", "dataset.n_test=32"]


def test_sigma_recovery_on_two_slope(tmp_path):
    """The learned σ of a regression task converges to its residual RMSE, i.e. the noise σ."""
    cfg = make_config(
        [
            "dataset.n_train=3000", "trainer.epochs=80", "trainer.batch_size=64",
            "trainer.optimizer.lr=2e-3", "trainer.eval_every=80", "seed=1",
        ]
    )  # fmt: skip
    run(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    sigma = results["weighting"]["sigma"]
    for task, true in (("y1", 3.0), ("y2", 0.5)):
        assert sigma[task] == pytest.approx(true, rel=0.10)
        assert sigma[task] == pytest.approx(results["metrics"][f"train/{task}/rmse"], rel=0.03)
    assert results["true_sigma"] == {"y1": 3.0, "y2": 0.5}


def test_same_seed_same_run(tmp_path):
    a = run(make_config(TINY), tmp_path / "a")
    b = run(make_config(TINY), tmp_path / "b")
    c = run(make_config([*TINY, "seed=1"]), tmp_path / "c")
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert a == b and ra["metrics"] == rb["metrics"] and ra["weighting"] == rb["weighting"]
    assert a != c


def test_objective_is_returned_and_validated(tmp_path):
    value = run(make_config([*TINY, "objective=test/y2/mse"]), tmp_path / "a")
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert value == results["metrics"]["test/y2/mse"] == results["objective"]["value"]
    default = run(make_config(TINY), tmp_path / "b")
    assert (
        default == json.loads((tmp_path / "b/results.json").read_text())["metrics"]["test/y1/rmse"]
    )
    with pytest.raises(ConfigError, match=r"objective='test/y3/rmse'.*test/y1/rmse"):
        run(make_config([*TINY, "objective=test/y3/rmse"]), tmp_path / "c")


def test_fixed_weighting_runs_and_reports_weights(tmp_path):
    run(make_config([*TINY, "weighting=fixed", "weighting.weights=[2.0,0.5]"]), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["weighting"] == {"weight": {"y1": 2.0, "y2": 0.5}}


def results_of(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def check_sigma_recovery(results):
    assert results["metrics"]["test/y/sigma_rel_error"] < 0.15
    assert 0.90 <= results["metrics"]["test/y/coverage_2sigma"] <= 0.99


def test_sin_hetero_gaussian_nll_recovers_sigma_of_x(tmp_path):
    """Shortened §5C (batch 100, lr 3e-3, 15 epochs): σ̂(x) within 15% of σ(x), calibrated."""
    cfg = make_config(["dataset=sin_hetero", "trainer.batch_size=100", "trainer.epochs=15",
                       "trainer.optimizer.lr=3e-3", "trainer.figures=true",
                       "trainer.figure_every=0"])  # fmt: skip
    run(cfg, tmp_path)
    check_sigma_recovery(results_of(tmp_path))
    png = tmp_path / "figures" / "fit_y.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    logged = acc.Images("figures/fit_y")[-1].encoded_image_string
    # the PNG is what TensorBoard shows
    assert (imread(io.BytesIO(logged)) == imread(png)[:, :, :3]).all()


@pytest.mark.slow
def test_sin_hetero_source_run_recovers_sigma_of_x(tmp_path):
    """§5C as published: 20,000 samples, batch 10, Adam 1e-3, 50 epochs."""
    run(make_config(["dataset=sin_hetero"]), tmp_path)
    check_sigma_recovery(results_of(tmp_path))


def scalar_and_image_tags(run_dir):
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]), set(acc.Tags()["images"])


STRATEGIES = sorted(p.stem for p in (config_dir() / "weighting").glob("*.yaml"))
TINY_DATA = ["dataset.n_train=64", "dataset.n_test=32"]
MNIST = ["dataset=mnist_mtl", "dataset.download=false", "trainer.batch_size=32"]
TINY_SETS = {
    "two_slope": ["dataset=two_slope", *TINY_DATA],
    "two_slope_hetero": ["dataset=two_slope", *TINY_DATA, "dataset.losses.y1=[gaussian_nll]"],
    "sin_gaussian": ["dataset=sin_hetero", *TINY_DATA],
    "sin_laplace": ["dataset=sin_hetero", *TINY_DATA, "dataset.losses.y=[laplace_nll]"],
    "sin_beta": ["dataset=sin_hetero", *TINY_DATA, "dataset.losses.y=[beta_nll]", "loss.beta=0.7"],
    "mnist": [*MNIST, "dataset.tasks=[cls3,recon,seg]"],
    "mnist_focal": [*MNIST, "dataset.tasks=[cls3,cls10]", "dataset.losses.cls3=[focal]"],
}
NO_SHARED_LAYERS = {"two_slope", "two_slope_hetero"}  # one network per task
NEGATIVE_LOSSES = {"two_slope_hetero", "sin_gaussian", "sin_laplace", "sin_beta"}  # NLL terms
# a refusal names its reason; each reason fits only the data sets it names
REFUSALS = {"has no shared": NO_SHARED_LAYERS, "can be negative": NEGATIVE_LOSSES}
RUN_EVERYWHERE = {"fixed", "equal", "uncertainty", "revised_uncertainty", "dtp", "rlw"}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("data", TINY_SETS)
def test_every_strategy_on_every_data_set(tmp_path, mnist_root, strategy, data):
    """Each strategy trains on each data set and logs what it reports, or refuses at once,
    in one line, for a reason that data set has (no shared layers, a loss that can be < 0)."""
    overrides = [
        *TINY_SETS[data],
        f"weighting={strategy}",
        "trainer.epochs=2",
        "trainer.log_every=1",
        "trainer.figures=true",
    ]
    if data.startswith("mnist"):
        overrides.append(f"dataset.root={mnist_root}")
    try:
        run(make_config(overrides), tmp_path)
    except ConfigError as e:
        reason = next((r for r in REFUSALS if r in str(e)), None)
        assert reason is not None and data in REFUSALS[reason], str(e)
        assert strategy not in RUN_EVERYWHERE and "\n" not in str(e)
        assert results_of(tmp_path)["status"] == "failed"
        return
    results = results_of(tmp_path)
    terms = list(results["weighting"]["weight"])
    assert all(math.isfinite(v) for v in results["metrics"].values())
    scalars, images = scalar_and_image_tags(tmp_path)
    for quantity, value in results["weighting"].items():
        tags = {f"{quantity}/{t}" for t in terms} if isinstance(value, dict) else {quantity}
        assert tags <= scalars
    pictures = {f"figures/{p.stem}" for p in (tmp_path / "figures").glob("*.png")}
    assert images == pictures
    assert bool(pictures) == (data != "mnist_focal")  # classification alone has no picture


def test_the_strategy_page_says_what_each_strategy_is_and_logs(tmp_path, mnist_root):
    """Every weighting config has a section on the generated strategy page whose kind is the
    strategy's and whose `Logs:` line (its class docstring's) names what it logs besides
    `weight`, as a run writes it."""
    sections = {s.name: s for s in strategy_pages.strategies()}
    assert set(sections) == set(STRATEGIES)
    kinds = {None: "loss", "parameters": "gradient", "representation": "representation"}
    for strategy, section in sections.items():
        overrides = [*TINY_SETS["mnist_focal"], f"dataset.root={mnist_root}", "trainer.epochs=1"]
        cfg = make_config([*overrides, f"weighting={strategy}"])
        assert section.kind == kinds[build_job(cfg).strategy.level], strategy
        run(cfg, tmp_path / strategy)
        logged = set(results_of(tmp_path / strategy)["weighting"])
        assert logged == {"weight", *section.logs}, strategy


def test_one_task_two_loss_terms_fixed_against_learned(tmp_path, mnist_root):
    """§5D on MNIST: segmentation with cross-entropy + Dice, 0.8:0.2 against learned c."""
    base = ["dataset=mnist_mtl", f"dataset.root={mnist_root}", "dataset.download=false",
            "dataset.tasks=[seg]", "trainer.epochs=2", "trainer.batch_size=16"]  # fmt: skip
    fixed = "weighting.weights={seg_cross_entropy:0.8,seg_dice:0.2}"
    run(make_config([*base, "weighting=fixed", fixed]), tmp_path / "fixed")
    run(
        make_config([*base, "weighting=revised_uncertainty", "trainer.figures=true"]),
        tmp_path / "learned",
    )
    f, learned = results_of(tmp_path / "fixed"), results_of(tmp_path / "learned")
    assert f["weighting"]["weight"] == pytest.approx({"seg_cross_entropy": 0.8, "seg_dice": 0.2})
    assert set(learned["weighting"]["c"]) == {"seg_cross_entropy", "seg_dice"}
    assert learned["weighting"]["c"]["seg_dice"] != 1.0  # it learned
    for r in (f, learned):
        assert {"test/seg/iou", "test/seg/dice", "test/seg/accuracy"} <= set(r["metrics"])
        assert 0 <= r["metrics"]["test/seg/iou"] <= r["metrics"]["test/seg/dice"] <= 1
    assert (tmp_path / "learned" / "figures" / "images_seg.png").exists()


@pytest.mark.slow
def test_source_two_slope_run_learns_the_residual_rmse(tmp_path):
    """docs/theory.md §5A as published: 300 samples, batch 16, Adam 3e-4, 1500 epochs."""
    run(make_config(["weighting.form=unit"]), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    for task, true in (("y1", 3.0), ("y2", 0.5)):
        sigma = results["weighting"]["sigma"][task]
        assert sigma == pytest.approx(results["metrics"][f"train/{task}/rmse"], rel=0.03)
        assert sigma == pytest.approx(true, rel=0.15)  # 300 samples: the noise itself varies


def test_data_on_the_training_device_is_recognised_by_its_type(monkeypatch):
    """Data placed on "cuda" reports "cuda:0", and torch.device("cuda") != "cuda:0": the
    trainer compares device types, so it neither copies nor pins data already in place."""
    import mtltrain.build

    # the same mismatch on the CPU: tensors report "cpu", the device is "cpu:0"
    monkeypatch.setattr(mtltrain.build, "select_device", lambda name: torch.device("cpu", 0))
    job = build_job(make_config(TINY))
    assert job.device == torch.device("cpu", 0) and job.on_device
    train_alone(job)
    assert job.step == 2 * 4


def test_a_single_run_is_one_job_through_the_one_loop_on_the_per_job_step():
    """N = 1 runs through the same Trainer as a stack, on the per-job step (no vmap); the
    callbacks are handed the job, whose position the step moves on."""
    seen = []

    class Seen(Callback):
        def on_step_end(self, job, step) -> None:
            seen.append((job, job.step, job.batch, step.number))

    job = build_job(make_config(TINY), extra_callbacks=[Seen()])
    trainer = Trainer([job])
    assert isinstance(trainer.runner, PerJobStep)
    assert trainer.fit() == [None]
    assert all(j is job for j, *_ in seen) and len(seen) == 2 * 4
    assert [(s, b) for _, s, b, _ in seen[:5]] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 1)]
    assert [n for *_, n in seen] == list(range(1, 9))
    assert (job.epoch, job.batch, job.step) == (2, 0, 8)


def test_an_error_of_a_single_run_is_its_job_error_not_the_loops():
    class Broken(Callback):
        def on_epoch_end(self, job) -> None:
            raise RuntimeError("a callback broke")

    job = build_job(make_config(TINY), extra_callbacks=[Broken()])
    (error,) = Trainer([job]).fit()
    assert isinstance(error, RuntimeError) and job.error is error
    assert job.epoch == 1  # it stopped at its first epoch end
    with pytest.raises(RuntimeError, match="a callback broke"):
        train_alone(build_job(make_config(TINY), extra_callbacks=[Broken()]))


def test_an_opened_run_that_finished_already_has_no_job(tmp_path):
    value = run(make_config(TINY), tmp_path)
    handle = open_run(make_config([*TINY, "resume_sweep=true"]), tmp_path)
    assert handle.job is None and handle.objective == value
    assert handle.close(None) == value
    again = open_run(make_config(TINY), tmp_path / "again")
    assert again.job is not None and again.job.step == 0
    assert again.close(Trainer([again.job]).fit()[0]) == pytest.approx(value)
