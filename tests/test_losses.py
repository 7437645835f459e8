import math

import pytest
import torch
import torch.nn.functional as F

from mtltrain.config._schema import LossConfig
from mtltrain.errors import ConfigError
from mtltrain.losses import (
    LOSSES,
    MeanLogVar,
    all_per_element,
    beta_nll,
    check_losses,
    compute_losses,
    dice,
    focal,
    gaussian_nll,
    head_tensors,
    job_losses,
    laplace_nll,
    loss_terms,
    map_heads,
    mse,
)
from mtltrain.tasks import TaskSpec

SETTINGS = LossConfig(beta=0.5, focal_gamma=2.0, dice_smooth=1.0)


def hetero(mean, log_var, grad=False):
    m = torch.tensor(mean, requires_grad=grad)
    s = torch.tensor(log_var, requires_grad=grad)
    return MeanLogVar(m, s)


def test_gaussian_nll_by_hand():
    out = hetero([1.0, 2.0], [0.0, math.log(4.0)])
    y = torch.tensor([2.0, 2.0])
    # ½(s + (y − μ)²·e^−s + log 2π): ½(0 + 1 + 1.837877) = 1.418939; ½(1.386294 + 0 + 1.837877)
    assert gaussian_nll(out, y).item() == pytest.approx((1.418939 + 1.612086) / 2, abs=1e-6)
    # and it is torch's GaussianNLLLoss on the variance
    ref = torch.nn.GaussianNLLLoss(full=True)(out.mean, y, out.log_var.exp())
    assert gaussian_nll(out, y).item() == pytest.approx(ref.item())


def test_gaussian_nll_gradients_by_hand():
    out = hetero([1.0], [0.5], grad=True)
    gaussian_nll(out, torch.tensor([3.0])).backward()
    r, s = 2.0, 0.5
    assert out.mean.grad.item() == pytest.approx(-r * math.exp(-s))  # ∂/∂μ = −(y − μ)/σ²
    assert out.log_var.grad.item() == pytest.approx(0.5 - 0.5 * r * r * math.exp(-s))


def fitted_variance(loss, residual: float) -> float:
    """The variance σ² = exp(s) that minimises `loss` for a fixed residual, found by Adam."""
    log_var = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([log_var], lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        loss(MeanLogVar(torch.zeros(1), log_var), torch.tensor([residual])).backward()
        opt.step()
    return log_var.exp().item()


def test_gaussian_nll_optimum_variance_is_the_squared_residual():
    assert fitted_variance(gaussian_nll, 1.7) == pytest.approx(1.7**2, rel=1e-3)


def test_laplace_nll_by_hand():
    # σ = 1 → b = 1/√2; |r|/b + log 2b = √2 + log √2 = 1.414214 + 0.346574
    out = hetero([0.0], [0.0])
    assert laplace_nll(out, torch.tensor([1.0])).item() == pytest.approx(1.760788, abs=1e-6)
    # optimum: b = |r|, i.e. σ² = 2r²
    assert fitted_variance(laplace_nll, 0.8) == pytest.approx(2 * 0.8**2, rel=1e-3)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_scales_each_gradient_by_sigma_to_the_2beta(beta):
    mean, log_var = [0.5, -1.0, 2.0], [0.3, -0.7, 1.2]
    y = torch.tensor([1.0, 0.0, -1.0])
    a, b = hetero(mean, log_var, grad=True), hetero(mean, log_var, grad=True)
    beta_nll(a, y, beta=beta).backward()
    gaussian_nll(b, y).backward()
    scale = torch.tensor(log_var).exp() ** beta  # σ^(2β)
    torch.testing.assert_close(a.mean.grad, scale * b.mean.grad)
    torch.testing.assert_close(a.log_var.grad, scale * b.log_var.grad)  # stop-gradient on σ^(2β)
    per_sample = F.gaussian_nll_loss(b.mean, y, b.log_var.exp(), full=True, reduction="none")
    assert beta_nll(a, y, beta=beta).item() == pytest.approx((scale * per_sample).mean().item())


def test_focal_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    target = torch.tensor([1])
    # −(1 − 0.75)²·log 0.75 = 0.0625·0.2876821
    assert focal(logits, target, focal_gamma=2.0).item() == pytest.approx(0.01798013, abs=1e-7)
    assert focal(logits, target, focal_gamma=0.0).item() == pytest.approx(
        F.cross_entropy(logits, target).item()
    )
    # it down-weights easy examples: gradient smaller than cross-entropy's
    x = logits.clone().requires_grad_()
    focal(x, target, focal_gamma=2.0).backward()
    y = logits.clone().requires_grad_()
    F.cross_entropy(y, target).backward()
    assert x.grad.abs().sum() < y.grad.abs().sum()


def test_dice_by_hand():
    # two pixels; foreground probabilities 0.8 and 0.2; targets 1 and 0
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    logits[1] = torch.tensor([math.log(4.0), -math.log(4.0)])
    logits = logits.reshape(1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    # 1 − (2·0.8 + 1)/(1.0 + 1 + 1) = 1 − 2.6/3
    assert dice(logits, target, dice_smooth=1.0).item() == pytest.approx(1 - 2.6 / 3, abs=1e-6)
    perfect = torch.tensor([[[[-20.0, 20.0]], [[20.0, -20.0]]]])
    assert dice(perfect, target, dice_smooth=1e-6).item() == pytest.approx(0.0, abs=1e-6)


def test_mse_of_a_variance_head_uses_its_mean():
    out = hetero([1.0, 3.0], [5.0, -5.0])
    assert mse(out, torch.tensor([0.0, 0.0])).item() == pytest.approx(5.0)


def test_losses_fit_their_task_kinds():
    with pytest.raises(ConfigError, match=r"dataset.losses.cls=\['gaussian_nll'\].*cross_entropy"):
        check_losses("cls", "classification", ["gaussian_nll"])
    with pytest.raises(ConfigError, match=r"dataset.losses.y=\[\]"):
        check_losses("y", "regression", [])
    with pytest.raises(ConfigError, match="distinct"):
        check_losses("y", "regression", ["mse", "mse"])
    assert all(LOSSES[n].heteroscedastic for n in ("gaussian_nll", "laplace_nll", "beta_nll"))


def test_loss_terms_of_one_task_with_two_losses():
    tasks = (
        TaskSpec("seg", "segmentation", 2 * 784, ("cross_entropy", "dice")),
        TaskSpec("cls10", "classification", 10, ("focal",)),
    )
    terms = loss_terms(tasks, SETTINGS)
    assert [(t.name, t.task, t.loss) for t in terms] == [
        ("seg_cross_entropy", "seg", "cross_entropy"),
        ("seg_dice", "seg", "dice"),
        ("cls10", "cls10", "focal"),
    ]
    outputs = {"seg": torch.randn(3, 2, 28, 28), "cls10": torch.randn(3, 10)}
    targets = {"seg": torch.randint(0, 2, (3, 28, 28)), "cls10": torch.tensor([1, 2, 3])}
    losses = compute_losses(terms, outputs, targets)  # one vector, in term order
    assert losses.shape == (3,)
    assert losses[1].item() == pytest.approx(
        dice(outputs["seg"], targets["seg"], dice_smooth=1.0).item()
    )
    assert losses[2].item() == pytest.approx(
        focal(outputs["cls10"], targets["cls10"], focal_gamma=2.0).item()
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"beta": 1.5}, r"loss.beta=1.5 is not allowed: it must be in \[0, 1\]"),
        ({"focal_gamma": -1.0}, "loss.focal_gamma=-1.0"),
        ({"dice_smooth": 0.0}, "loss.dice_smooth=0.0"),
    ],
)
def test_loss_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(**{**vars(SETTINGS), **settings})


# a stack of 3 jobs, 4 samples each: every loss that is per element, on a task it fits
JOB_TASKS = (
    TaskSpec("reg", "regression", 2, ("mse",)),
    TaskSpec("var", "regression", 2, ("gaussian_nll", "laplace_nll", "beta_nll"), True),
    TaskSpec("cls", "classification", 5, ("cross_entropy", "focal")),
    TaskSpec("seg", "segmentation", 2 * 36, ("cross_entropy", "focal")),
)


def job_batches(jobs=3, batch=4):
    g = torch.Generator().manual_seed(0)
    outputs = {
        "reg": torch.randn(jobs, batch, 2, generator=g, dtype=torch.float64),
        "var": MeanLogVar(*torch.randn(2, jobs, batch, 2, generator=g, dtype=torch.float64)),
        "cls": torch.randn(jobs, batch, 5, generator=g, dtype=torch.float64),
        "seg": torch.randn(jobs, batch, 2, 6, 6, generator=g, dtype=torch.float64),
    }
    targets = {
        "reg": torch.randn(jobs, batch, 2, generator=g, dtype=torch.float64),
        "var": torch.randn(jobs, batch, 2, generator=g, dtype=torch.float64),
        "cls": torch.randint(0, 5, (jobs, batch), generator=g),
        "seg": torch.randint(0, 2, (jobs, batch, 6, 6), generator=g),
    }
    return outputs, targets


def job(batches, j):
    """Job j's outputs or targets, from a stack."""
    return map_heads(lambda t: t[j], batches)


def test_the_per_element_losses_average_to_the_loss():
    outputs, targets = map(lambda b: job(b, 0), job_batches())
    for term in loss_terms(JOB_TASKS, SETTINGS):
        output, target = outputs[term.task], targets[term.task]
        values = term.fn(output, target, reduction="none")
        assert values.shape == target.shape
        torch.testing.assert_close(values.mean(), term.fn(output, target), rtol=1e-15, atol=0)


def test_job_losses_are_each_jobs_losses_and_their_gradients():
    terms = loss_terms(JOB_TASKS, SETTINGS)
    assert all_per_element(terms)
    outputs, targets = job_batches()
    leaves = [t.requires_grad_() for t in head_tensors(outputs) if t.is_floating_point()]
    stacked = job_losses(terms, outputs, targets)
    alone = torch.stack([compute_losses(terms, job(outputs, j), job(targets, j)) for j in range(3)])
    torch.testing.assert_close(stacked, alone, rtol=1e-14, atol=0)
    weights = torch.rand(3, len(terms), dtype=torch.float64)
    stacked_grads = torch.autograd.grad((weights * stacked).sum(), leaves, retain_graph=True)
    alone_grads = torch.autograd.grad((weights * alone).sum(), leaves)
    for got, want in zip(stacked_grads, alone_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_dice_is_no_mean_per_element():
    tasks = (TaskSpec("seg", "segmentation", 2 * 36, ("cross_entropy", "dice")),)
    assert not all_per_element(loss_terms(tasks, SETTINGS))


def test_a_reduction_other_than_mean_or_none_is_refused():
    with pytest.raises(ValueError, match="reduction='sum'"):
        laplace_nll(hetero([0.0], [0.0]), torch.tensor([1.0]), reduction="sum")
