import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtltrain.config._schema import LossConfig
from mtltrain.errors import ConfigError, DataError
from mtltrain.losses import (
    LOSSES,
    CustomLoss,
    MeanLogVar,
    all_per_element,
    bce,
    beta_nll,
    check_losses,
    compute_losses,
    cosine,
    dice,
    focal,
    gaussian_nll,
    head_tensors,
    huber,
    job_losses,
    l1,
    laplace_nll,
    loss_terms,
    map_heads,
    mse,
)
from mtltrain.tasks import TaskSpec
from mtltrain.weighting import GeometricMean

SETTINGS = LossConfig(beta=0.5, focal_gamma=2.0, dice_smooth=1.0, huber_delta=1.0)


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
    TaskSpec("reg", "regression", 2, ("mse", "l1", "huber", "cosine")),
    TaskSpec("var", "regression", 2, ("gaussian_nll", "laplace_nll", "beta_nll"), True),
    TaskSpec("cls", "classification", 5, ("cross_entropy", "focal")),
    TaskSpec("seg", "segmentation", 2 * 36, ("cross_entropy", "focal")),
    TaskSpec("bin", "binary", 1, ("bce",)),
    TaskSpec("tags", "multilabel", 3, ("bce",)),
    TaskSpec("price", "regression", 2, (functools.partial(F.huber_loss, delta=0.5), "mse")),
)


def job_batches(jobs=3, batch=4):
    g = torch.Generator().manual_seed(0)
    outputs = {
        "reg": torch.randn(jobs, batch, 2, generator=g, dtype=torch.float64),
        "var": MeanLogVar(*torch.randn(2, jobs, batch, 2, generator=g, dtype=torch.float64)),
        "cls": torch.randn(jobs, batch, 5, generator=g, dtype=torch.float64),
        "seg": torch.randn(jobs, batch, 2, 6, 6, generator=g, dtype=torch.float64),
        "bin": torch.randn(jobs, batch, 1, generator=g, dtype=torch.float64),
        "tags": torch.randn(jobs, batch, 3, generator=g, dtype=torch.float64),
        "price": torch.randn(jobs, batch, 2, generator=g, dtype=torch.float64),
    }
    targets = {
        "reg": torch.randn(jobs, batch, 2, generator=g, dtype=torch.float64),
        "var": torch.randn(jobs, batch, 2, generator=g, dtype=torch.float64),
        "cls": torch.randint(0, 5, (jobs, batch), generator=g),
        "seg": torch.randint(0, 2, (jobs, batch, 6, 6), generator=g),
        "bin": torch.randint(0, 2, (jobs, batch), generator=g).double(),
        "tags": torch.randint(0, 2, (jobs, batch, 3), generator=g).double(),
        "price": torch.randn(jobs, batch, 2, generator=g, dtype=torch.float64),
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
        per_sample = term.loss == "cosine"  # one cosine per sample, along the features
        assert values.shape == (target.shape[:1] if per_sample else target.shape)
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


def test_l1_and_huber_by_hand():
    out, target = torch.tensor([[0.0, 2.0], [1.0, -3.0]]), torch.tensor([[0.5, 0.0], [1.0, 0.0]])
    # residuals 0.5, 2, 0, 3
    assert l1(out, target).item() == pytest.approx((0.5 + 2 + 0 + 3) / 4)
    delta = 1.0  # ½r² inside δ, δ(|r| − ½δ) outside
    by_hand = (0.5 * 0.25 + (2 - 0.5) + 0 + (3 - 0.5)) / 4
    assert huber(out, target, huber_delta=delta).item() == pytest.approx(by_hand)
    assert huber(out, target, huber_delta=4.0).item() == pytest.approx(0.5 * (0.25 + 4 + 0 + 9) / 4)


def test_l1_and_huber_gradients_by_hand():
    out = torch.tensor([0.0, 2.0, -3.0], requires_grad=True)
    target = torch.tensor([0.5, 0.0, 0.0])
    (grad,) = torch.autograd.grad(huber(out, target, huber_delta=1.0), out)
    # d/dŷ: clamp(ŷ − y, −δ, δ)/n
    torch.testing.assert_close(grad, torch.tensor([-0.5, 1.0, -1.0]) / 3)
    (grad,) = torch.autograd.grad(l1(out, target), out)
    torch.testing.assert_close(grad, torch.tensor([-1.0, 1.0, -1.0]) / 3)


def test_cosine_by_hand_and_its_gradient():
    out = torch.tensor([[1.0, 0.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, 2.0], [6.0, 8.0]])
    # sample 1 orthogonal: 1 − 0; sample 2 parallel: 1 − 1
    assert cosine(out, target).item() == pytest.approx(0.5)
    (grad,) = torch.autograd.grad(cosine(out, target), out)
    # d/dŷ (1 − ŷ·y/(|ŷ||y|)) = −y/(|ŷ||y|) + (ŷ·y)·ŷ/(|ŷ|³|y|), halved by the mean
    x, y = out.detach(), target
    norm_x, norm_y, dot = x.norm(dim=1, keepdim=True), y.norm(dim=1, keepdim=True), (x * y).sum(1)
    by_hand = -y / (norm_x * norm_y) + dot[:, None] * x / (norm_x**3 * norm_y)
    torch.testing.assert_close(grad, by_hand / 2, atol=1e-6, rtol=1e-5)


def test_bce_by_hand_and_its_gradient():
    logits = torch.tensor([[2.0], [-1.0], [0.0]], requires_grad=True)  # a binary head: [N, 1]
    target = torch.tensor([1, 0, 1])  # 0/1 per sample, any dtype
    p = torch.sigmoid(logits.detach()).flatten()
    by_hand = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(p[2])) / 3
    assert bce(logits, target).item() == pytest.approx(by_hand)
    (grad,) = torch.autograd.grad(bce(logits, target), logits)
    torch.testing.assert_close(grad.flatten(), (p - target) / 3)  # (σ(f) − y)/n
    labels = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # multi-label: [N, L] logits and targets
    many = torch.tensor([[0.5, -0.5], [1.0, 3.0]])
    q = torch.sigmoid(many)
    each = -(labels * q.log() + (1 - labels) * (1 - q).log())
    assert bce(many, labels).item() == pytest.approx(each.mean().item())


def test_the_new_losses_fit_their_kinds():
    check_losses("churn", "binary", ["bce"])
    check_losses("tags", "multilabel", ["bce"])
    check_losses("y", "regression", ["l1", "huber", "cosine", "mse"])
    with pytest.raises(ConfigError, match=r"dataset.losses.churn=\['mse'\].*\['bce'\]"):
        check_losses("churn", "binary", ["mse"])
    with pytest.raises(ConfigError, match=r"dataset.losses.y=\['bce'\].*'l1', 'huber', 'cosine'"):
        check_losses("y", "regression", ["bce"])
    with pytest.raises(ConfigError, match=r"loss\.huber_delta=0\.0"):
        LossConfig(**{**vars(SETTINGS), "huber_delta": 0.0})


def test_a_custom_loss_is_a_term_named_after_its_function():
    huber_loss = functools.partial(F.huber_loss, delta=0.5)
    plain = lambda output, target: (output - target).abs().max()  # noqa: E731
    tasks = (
        TaskSpec("price", "regression", 1, (huber_loss, "mse")),
        TaskSpec("alone", "regression", 1, (plain,)),
    )
    terms = loss_terms(tasks, SETTINGS)
    assert [(t.name, t.loss) for t in terms] == [
        ("price_huber_loss", "huber_loss"),
        ("price_mse", "mse"),
        ("alone", "<lambda>"),
    ]
    assert all(t.nonnegative and not t.heteroscedastic for t in terms)  # taken to be ≥ 0
    assert [t.per_element for t in terms] == [True, True, False]  # takes reduction= or not
    out = {"price": hetero([[1.0], [2.0]], [[0.0], [0.0]]), "alone": torch.tensor([[1.0], [4.0]])}
    target = {"price": torch.tensor([[0.0], [0.0]]), "alone": torch.tensor([[0.0], [0.0]])}
    losses = compute_losses(terms, out, target)  # a custom loss gets the point prediction
    huber_by_hand = (0.375 + 0.875) / 2  # δ(|r| − δ/2) beyond δ
    torch.testing.assert_close(losses, torch.tensor([huber_by_hand, 2.5, 4.0]))
    assert not all_per_element(terms)  # a stack of jobs vmaps its losses instead
    with pytest.raises(ConfigError, match="distinct"):
        check_losses("price", "regression", [huber_loss, huber_loss])


def test_a_custom_loss_that_can_be_negative_says_so_and_log_strategies_refuse_it(tmp_path):
    """CustomLoss(fn, nonnegative=False), as the config builds it: the term keeps fn's name
    and value, and a strategy that takes logs of the losses refuses it in one line."""
    (tmp_path / "mylosses.py").write_text(
        "def log_likelihood_gap(output, target):\n    return (output - target).mean()\n"
    )
    node = OmegaConf.create(
        {
            "_target_": "mtltrain.losses.CustomLoss",
            "fn": {"_target_": "mylosses.log_likelihood_gap", "_partial_": True},
            "nonnegative": False,
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        signed = instantiate(node)
    plain = CustomLoss(signed.fn)
    tasks = (TaskSpec("a", "regression", 1, (signed,)), TaskSpec("b", "regression", 1, (plain,)))
    a, b = loss_terms(tasks, SETTINGS)
    assert (a.loss, a.nonnegative, b.nonnegative) == ("log_likelihood_gap", False, True)
    value = compute_losses([a], {"a": torch.tensor([[1.0], [-4.0]])}, {"a": torch.zeros(2, 1)})
    torch.testing.assert_close(value, torch.tensor([-1.5]))
    GeometricMean(terms=(b,))  # a custom loss is taken to be ≥ 0 unless it says otherwise
    with pytest.raises(ConfigError, match=r"term a \(log_likelihood_gap\) can be negative"):
        GeometricMean(terms=(a, b))


def test_a_custom_loss_that_binds_its_reduction_is_not_taken_per_element():
    """A stack of jobs would call it with reduction="none" and average: a sum is not a mean."""
    summed = functools.partial(F.l1_loss, reduction="sum")
    meaned = functools.partial(F.l1_loss, reduction="mean")
    tasks = (TaskSpec("a", "regression", 1, (summed,)), TaskSpec("b", "regression", 1, (meaned,)))
    terms = loss_terms(tasks, SETTINGS)
    assert [t.per_element for t in terms] == [False, True]
    out = {"a": torch.tensor([[[1.0], [3.0]]]), "b": torch.tensor([[[1.0], [3.0]]])}
    target = {"a": torch.zeros(1, 2, 1), "b": torch.zeros(1, 2, 1)}
    one_job = compute_losses(
        terms, {k: v[0] for k, v in out.items()}, {k: v[0] for k, v in target.items()}
    )
    torch.testing.assert_close(one_job, torch.tensor([4.0, 2.0]))  # the sum, the mean
    torch.testing.assert_close(job_losses(terms[1:], out, target)[0], one_job[1:])


@pytest.mark.parametrize("loss", ["mse", "l1", "huber", "cosine", functools.partial(F.l1_loss)])
def test_a_regression_target_not_shaped_as_its_prediction_is_refused(loss):
    """[N] targets against a head's [N, 1] would broadcast to [N, N] (a wrong loss, no error)."""
    terms = loss_terms((TaskSpec("price", "regression", 1, (loss,)),), SETTINGS)
    out, target = {"price": torch.zeros(4, 1)}, {"price": torch.ones(4)}
    with pytest.raises(DataError) as raised:
        compute_losses(terms, out, target)
    assert str(raised.value).startswith("dataset: task price's targets are [4] per batch")
    assert "[4, 1]" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(DataError, match="targets are"):
        job_losses(terms, {"price": torch.zeros(2, 4, 1)}, {"price": torch.ones(2, 4)})


def test_a_task_kind_outside_the_kinds_is_one_line_naming_them():
    with pytest.raises(ConfigError) as raised:
        check_losses("price", "regresion", ["mse"])
    assert str(raised.value) == (
        "dataset: task price's kind 'regresion' is not allowed: choose one of "
        "['classification', 'segmentation', 'regression', 'binary', 'multilabel', "
        "'semantic', 'depth', 'normals']"
    )
