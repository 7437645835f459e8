import math

import pytest
import torch

from mtltrain.data.base import Split
from mtltrain.losses import MeanLogVar, gaussian_nll
from mtltrain.metrics import (
    HeteroscedasticScorer,
    SegmentationScorer,
    TaskMetrics,
    main_metric,
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
