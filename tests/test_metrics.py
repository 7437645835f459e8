import json
import math

import pytest
import torch
from conftest import run_cli
from torchmetrics.classification import BinaryAUROC
from torchmetrics.regression import MeanAbsoluteError, PearsonCorrCoef

from mtltrain.data.base import Split, task_specs
from mtltrain.errors import ConfigError
from mtltrain.losses import MeanLogVar, gaussian_nll
from mtltrain.metrics import (
    CustomMetric,
    HeteroscedasticScorer,
    SegmentationScorer,
    TaskMetrics,
    check_metrics,
    main_metric,
    metric_directions,
    metric_names,
)
from mtltrain.tasks import TaskSpec

CLS = TaskSpec("label", "classification", 3, ("cross_entropy",))
REG = TaskSpec("depth", "regression", 1, ("mse",))
HET = TaskSpec("noisy", "regression", 1, ("gaussian_nll",), heteroscedastic=True)


def test_classification_and_regression_by_hand():
    metrics = TaskMetrics((CLS, REG))
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    targets = {
        "label": torch.tensor([0, 1, 1, 1]),
        "depth": torch.tensor([[1.0], [2.0], [3.0], [4.0]]),
    }
    batch = Split(torch.zeros(4, 1), targets)
    metrics.update({"label": logits, "depth": torch.tensor([[1.0], [2.0], [3.0], [6.0]])}, batch)
    out = metrics.compute()
    assert out["label/accuracy"] == 0.5
    assert out["depth/mse"] == 1.0 and out["depth/rmse"] == 1.0  # (0 + 0 + 0 + 4)/4


def test_metrics_accumulate_over_batches_as_over_the_whole():
    torch.manual_seed(0)
    x = torch.randn(50, 1)
    split = Split(x, {"label": torch.randint(0, 3, (50,)), "depth": torch.randn(50, 1)})
    outputs = {"label": torch.randn(50, 3), "depth": torch.randn(50, 1)}
    whole = TaskMetrics((CLS, REG))
    whole.update(outputs, split)
    parts = TaskMetrics((CLS, REG))
    for i in range(0, 50, 16):
        index = slice(i, i + 16)
        parts.update({k: v[index] for k, v in outputs.items()}, split.take(index))
    assert parts.compute() == pytest.approx(whole.compute())


def test_segmentation_by_hand():
    pred = torch.zeros(1, 2, 2, 3)
    pred[0, 1] = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # predicted fg: 2 pixels
    target = torch.tensor([[[1, 0, 0], [1, 0, 0]]])  # true fg: 2 pixels, 1 shared
    out = SegmentationScorer().score(pred, target)
    assert out["iou"].item() == pytest.approx(1 / 3)  # |∩| = 1, |∪| = 3
    assert out["dice"].item() == pytest.approx(0.5)  # 2·1/(2 + 2)
    assert out["accuracy"].item() == pytest.approx(4 / 6)


def test_heteroscedastic_metrics_by_hand():
    mean = torch.zeros(4, 1)
    log_var = torch.log(torch.tensor([[1.0], [1.0], [4.0], [4.0]]))  # σ = 1, 1, 2, 2
    y = torch.tensor([[0.5], [1.5], [1.0], [5.0]])  # z = 0.5, 1.5, 0.5, 2.5
    scorer = HeteroscedasticScorer(knows_sigma=True)
    sums = scorer.batch_sums(
        MeanLogVar(mean, log_var), y, torch.tensor([[1.0], [2.0], [2.0], [1.0]])
    )
    out = {k: v.item() for k, v in scorer.finish(sums, 4).items()}
    assert out["nll"] == pytest.approx(gaussian_nll(MeanLogVar(mean, log_var), y).item(), rel=1e-6)
    assert out["rmse"] == pytest.approx(math.sqrt((0.25 + 2.25 + 1 + 25) / 4))
    assert out["coverage_1sigma"] == 0.5 and out["coverage_2sigma"] == 0.75
    # |σ̂ − σ|/σ: 0, 1/2, 0, 1 → mean 0.375
    assert out["sigma_rel_error"] == pytest.approx(0.375)
    # levels p = k/20, k = 1..19. z = 0.5 lies inside the central p-interval once
    # Φ⁻¹((1+p)/2) ≥ 0.5, i.e. p ≥ 0.383 (k ≥ 8); z = 1.5 once p ≥ 0.866 (k ≥ 18); z = 2.5
    # only for p ≥ 0.988 (never). Observed: 0 (k ≤ 7), 2/4 (8 ≤ k ≤ 17), 3/4 (k = 18, 19).
    # Σ|observed − p| = 1.40 + 1.55 + 0.35 = 3.3 over 19 levels
    assert out["calibration_error"] == pytest.approx(3.3 / 19)


def test_calibration_error_is_small_when_calibrated_and_large_when_overconfident():
    torch.manual_seed(0)
    n = 200_000
    sigma = torch.rand(n, 1) + 0.1
    y = sigma * torch.randn(n, 1)
    scorer = HeteroscedasticScorer(knows_sigma=False)
    calibrated = scorer.score(MeanLogVar(torch.zeros(n, 1), sigma.square().log()), y)
    overconfident = scorer.score(MeanLogVar(torch.zeros(n, 1), (sigma / 2).square().log()), y)
    assert calibrated["calibration_error"].item() < 0.005
    assert calibrated["coverage_1sigma"].item() == pytest.approx(0.6827, abs=0.005)
    assert calibrated["coverage_2sigma"].item() == pytest.approx(0.9545, abs=0.005)
    assert overconfident["calibration_error"].item() > 0.15
    assert "sigma_rel_error" not in calibrated


def test_metric_names_and_main_metric():
    assert metric_names((HET,), knows_sigma={"noisy"})[-1] == "noisy/sigma_rel_error"
    assert "noisy/sigma_rel_error" not in metric_names((HET,))
    assert [main_metric(t) for t in (CLS, REG, HET)] == [
        "label/accuracy",
        "depth/rmse",
        "noisy/nll",
    ]
    seg = TaskSpec("seg", "segmentation", 2 * 784, ("cross_entropy", "dice"))
    assert metric_names((seg,)) == ["seg/iou", "seg/dice", "seg/accuracy"]


CHURN = TaskSpec("churn", "binary", 1, ("bce",))
TAGS = TaskSpec("tags", "multilabel", 2, ("bce",))


def test_binary_metrics_by_hand_accumulated_over_batches():
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-2.0], [1.0]])  # one logit per sample
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    metrics = TaskMetrics((CHURN,))
    for part in (slice(0, 3), slice(3, 5)):
        metrics.update(
            {"churn": logits[part]}, Split(torch.zeros(5, 1)[part], {"churn": target[part]})
        )
    out = metrics.compute()
    assert list(out) == ["churn/accuracy", "churn/auroc", "churn/f1"]  # the first is the main one
    assert out["churn/accuracy"] == pytest.approx(3 / 5)  # predicted 1 where the logit > 0
    # positives score 2, −2, 1 and negatives −1, 0.5: 4 of the 6 pairs ranked right
    assert out["churn/auroc"] == pytest.approx(4 / 6)
    assert out["churn/f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # TP 2, FP 1, FN 1


def test_smoothed_binary_targets_score_as_the_labels_they_round_to():
    """Targets 0.9 / 0.1 (label smoothing, which BCE takes) are the labels 1 / 0 for every
    metric, as for accuracy (target > 0.5), not 0 / 0 (torchmetrics' integer targets)."""
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-2.0], [1.0]])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    scored = []
    for target in (labels, 0.1 + 0.8 * labels):
        metrics = TaskMetrics((CHURN,))
        metrics.update({"churn": logits}, Split(torch.zeros(5, 1), {"churn": target}))
        scored.append(metrics.compute())
    assert scored[1] == scored[0]


def test_multilabel_metrics_by_hand():
    logits = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])  # [N, L]
    target = torch.tensor([[1, 1], [0, 1], [0, 1]])
    metrics = TaskMetrics((TAGS,))
    metrics.update({"tags": logits}, Split(torch.zeros(3, 1), {"tags": target}))
    out = metrics.compute()
    assert out["tags/accuracy"] == pytest.approx(3 / 6)  # mean over samples and labels
    # label 0: TP 1, FP 1 → F1 2/3; label 1: TP 1, FN 2 → F1 1/2; macro: their mean
    assert out["tags/f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_configured_metrics_replace_the_kinds_and_keep_their_order():
    mae = CustomMetric(MeanAbsoluteError(), name="mae")
    reg = TaskSpec("depth", "regression", 1, ("mse",), metrics=(mae, "rmse", MeanAbsoluteError()))
    metrics = TaskMetrics((reg,))
    out_ = torch.tensor([[1.0], [2.0], [5.0]])
    metrics.update({"depth": out_}, Split(torch.zeros(3, 1), {"depth": torch.zeros(3, 1)}))
    out = metrics.compute()
    assert out == pytest.approx(
        {"depth/mae": 8 / 3, "depth/rmse": math.sqrt(30 / 3), "depth/mean_absolute_error": 8 / 3}
    )
    assert main_metric(reg) == "depth/mae"
    assert metric_directions((reg, CHURN)) == {
        "depth/mae": -1,  # torchmetrics' higher_is_better
        "depth/rmse": -1,
        "depth/mean_absolute_error": -1,
        "churn/accuracy": 1,
        "churn/auroc": 1,
        "churn/f1": 1,
    }
    pearson = CustomMetric(PearsonCorrCoef(), higher_is_better=True)
    assert metric_directions((TaskSpec("r", "regression", 1, ("mse",), metrics=(pearson,)),)) == {
        "r/pearson_corr_coef": 1
    }


def test_the_running_train_metrics_are_the_scorers_only():
    running = TaskMetrics((CHURN,), running=True)  # kept as sums between evaluations
    running.update(
        {"churn": torch.tensor([[1.0]])}, Split(torch.zeros(1, 1), {"churn": torch.ones(1)})
    )
    assert running.compute() == {"churn/accuracy": 1.0}


@pytest.mark.parametrize(
    ("kind", "chosen", "message"),
    [
        (
            "binary",
            ["rmse"],
            r"dataset.metrics.t\[0\]='rmse' is not allowed: .*\['accuracy', 'auroc', 'f1'\]",
        ),
        ("regression", [len], r"dataset.metrics.t\[0\]=<built-in function len> is not allowed"),
        (
            "regression",
            [PearsonCorrCoef()],
            "PearsonCorrCoef is not allowed: its higher_is_better is None",
        ),
        ("binary", ["auroc", "auroc"], "distinct"),
        ("binary", ["auroc", CustomMetric(BinaryAUROC(), name="auroc")], "distinct"),
    ],
)
def test_bad_metrics_are_refused(kind, chosen, message):
    with pytest.raises(ConfigError, match=message):
        check_metrics("t", kind, False, chosen)


def test_a_data_set_refuses_metrics_of_a_task_it_lacks():
    with pytest.raises(ConfigError, match=r"dataset.metrics names \['z'\].*\['y'\]"):
        task_specs(["y"], {"y": ("regression", 1)}, {"y": ["mse"]}, {"z": ["rmse"]})


# a user's own data set, in a module of their own: y1 binary, y2 regression
USER_DATA = '''
import torch

from mtltrain.data.base import MultiTaskData, Split, task_specs


def build(tasks, losses, metrics=None, n_train=64, n_test=32, seed=0):
    """x ~ N(0, 1); y1 = [x > 0] (binary), y2 = 2x + 1 (regression)."""
    specs = task_specs(list(tasks), {"y1": ("binary", 1), "y2": ("regression", 1)}, losses, metrics)
    g = torch.Generator().manual_seed(seed)

    def draw(n):
        x = torch.randn(n, 1, generator=g)
        return Split(x, {"y1": (x[:, 0] > 0).float(), "y2": 2 * x + 1})

    return MultiTaskData(specs, draw(n_train), draw(n_test))
'''


def test_a_run_with_a_binary_task_a_custom_loss_and_custom_metrics(tmp_path, monkeypatch):
    (tmp_path / "user_data.py").write_text(USER_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    huber = "{_target_:torch.nn.functional.huber_loss,_partial_:true,delta:1.0}"
    mae = (
        "{_target_:mtltrain.metrics.CustomMetric,name:mae,"
        "metric:{_target_:torchmetrics.regression.MeanAbsoluteError}}"
    )
    args = [
        "dataset._target_=user_data.build",
        "dataset.losses.y1=[bce]",
        f"dataset.losses.y2=[{huber},mse]",
        "+dataset.metrics.y1=[accuracy,{_target_:torchmetrics.classification.BinaryAUROC}]",
        f"+dataset.metrics.y2=[{mae},rmse]",
        "weighting=uncertainty",
        "trainer.epochs=2",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    metrics = results["metrics"]
    for split in ("train", "test"):
        assert 0.5 < metrics[f"{split}/y1/binary_auroc"] <= 1  # separable: well above chance
        assert 0 < metrics[f"{split}/y2/mae"] <= metrics[f"{split}/y2/rmse"]  # MAE ≤ RMSE
    assert not any(name.endswith("/f1") for name in metrics)  # the list replaces the defaults
    assert results["directions"] == {
        "y1/accuracy": 1,
        "y1/binary_auroc": 1,
        "y2/mae": -1,
        "y2/rmse": -1,
    }
    assert set(results["weighting"]["sigma"]) == {"y1", "y2_huber_loss", "y2_mse"}
    assert "y2_huber_loss" in proc.stdout  # the summary's rows are the terms


def test_a_bad_metric_in_the_config_is_one_line(tmp_path):
    proc = run_cli(["+dataset.metrics.y1=[auroc]", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "mtltrain: error: dataset.metrics.y1[0]='auroc' is not allowed: a regression task takes "
        "metrics among ['rmse', 'mse'], or torchmetrics metrics given by _target_"
    ]
