import itertools
import math

import pytest
import torch
from conftest import make_config

from mtltrain.data.base import Split
from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm, cross_entropy, gaussian_nll, mse
from mtltrain.step import Step
from mtltrain.weighting.dtp import DynamicTaskPrioritization
from mtltrain.weighting.fixed import FixedWeighting
from mtltrain.weighting.revised_uncertainty import RevisedUncertaintyWeighting
from mtltrain.weighting.uncertainty import UncertaintyWeighting

REG = LossTerm("depth", "depth", "mse", "regression", False, mse)
CLS = LossTerm("label", "label", "cross_entropy", "classification", False, cross_entropy)
NLL = LossTerm("noisy", "noisy", "gaussian_nll", "regression", True, gaussian_nll)
TERMS = (REG, CLS)


def losses(reg: float, cls: float, grad: bool = False) -> torch.Tensor:
    """The term losses of TERMS (depth, label) as the loop hands them on: one vector."""
    return torch.tensor([reg, cls], requires_grad=grad)


def backward(w, ls: torch.Tensor) -> torch.Tensor:
    """What the engine does for a loss-based strategy: back-propagate Σ contributions."""
    parts = w.contributions(ls)
    parts.sum().backward()
    return parts.detach()


def observe(w, outputs: dict, targets: dict) -> None:
    w.observe(Step(1, 0, Split(torch.zeros(1), targets), outputs, torch.zeros(len(w.terms))))


def with_log_var(w: UncertaintyWeighting, values: list[float]) -> UncertaintyWeighting:
    with torch.no_grad():
        w.log_var.copy_(torch.tensor(values))
    return w


# ---- fixed ----------------------------------------------------------------------------------


def test_fixed_weights_by_hand():
    w = FixedWeighting(TERMS, weights={"label": 0.25, "depth": 2.0})
    parts = w.contributions(losses(3.0, 4.0))
    assert parts.tolist() == [6.0, 1.0]  # 2·3, 0.25·4
    assert w.weights().tolist() == [2.0, 0.25]
    assert FixedWeighting(TERMS).weights().tolist() == [1.0, 1.0]
    assert FixedWeighting(TERMS, weights=[0.5, 3.0]).weights().tolist() == [0.5, 3.0]


def test_fixed_gradient_is_the_weight():
    w = FixedWeighting(TERMS, weights=[0.5, 3.0])
    ls = losses(3.0, 4.0, grad=True)
    backward(w, ls)
    assert ls.grad.tolist() == [0.5, 3.0]
    assert list(w.parameters()) == []


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"depth": 1.0}, r"weighting.weights names \['depth'\] do not match \['depth', 'label'\]"),
        ({"depth": 1.0, "label": 1.0, "x": 2.0}, "do not match"),
        ([1.0], r"weighting.weights=\[1.0\] has 1 values but there are 2"),
    ],
)
def test_fixed_rejects_weights_that_do_not_match(weights, message):
    with pytest.raises(ConfigError, match=message):
        FixedWeighting(TERMS, weights=weights)


# ---- uncertainty ----------------------------------------------------------------------------


def test_uncertainty_likelihood_form_by_hand():
    w = with_log_var(UncertaintyWeighting(TERMS), [0.3, -0.2])
    parts = w.contributions(losses(2.0, 0.5))
    # regression:     1/2·e^−0.3·2.0 + 0.3/2 = 0.7408182 + 0.15 = 0.8908182
    # classification: 1·e^0.2·0.5 + (−0.2)/2 = 0.6107014 − 0.1 = 0.5107014
    torch.testing.assert_close(parts, torch.tensor([0.8908182, 0.5107014]))
    torch.testing.assert_close(w.weights(), torch.tensor([0.3704091, 1.2214028]))
    torch.testing.assert_close(w.report()["sigma"], torch.tensor([1.1618342, 0.9048374]))


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        # e^−s·L + s:        e^−0.3·2 + 0.3 = 1.7816364;  e^0.2·0.5 − 0.2 = 0.4107014
        ("unit", [1.7816364, 0.4107014]),
        # ½e^−s·L + ½s:      0.7408182 + 0.15 = 0.8908182; 0.3053507 − 0.1 = 0.2053507
        ("half", [0.8908182, 0.2053507]),
    ],
)
def test_uncertainty_source_forms_by_hand(form, expected):
    w = with_log_var(UncertaintyWeighting(TERMS, form=form), [0.3, -0.2])
    torch.testing.assert_close(w.contributions(losses(2.0, 0.5)), torch.tensor(expected))


def test_uncertainty_gradients_by_hand():
    w = with_log_var(UncertaintyWeighting(TERMS), [0.3, -0.2])
    ls = losses(2.0, 0.5, grad=True)
    parts = backward(w, ls)
    torch.testing.assert_close(parts.sum(), torch.tensor(0.8908182 + 0.5107014))
    # ∂/∂s_k = −c_k·e^−s_k·L_k + 1/2;  ∂/∂L_k = c_k·e^−s_k
    torch.testing.assert_close(
        w.log_var.grad,
        torch.tensor([-0.5 * math.exp(-0.3) * 2.0 + 0.5, -math.exp(0.2) * 0.5 + 0.5]),
    )
    assert ls.grad.tolist() == pytest.approx([0.5 * math.exp(-0.3), math.exp(0.2)])


@pytest.mark.parametrize(
    ("strategy", "learned", "values"),
    [("uncertainty", "log_var", [0.7, -1.1]), ("revised_uncertainty", "c", [0.7, 1.8])],
)
def test_learned_weighting_gradcheck(strategy, learned, values):
    cls = {"uncertainty": UncertaintyWeighting, "revised_uncertainty": RevisedUncertaintyWeighting}
    w = cls[strategy](TERMS).double()
    with torch.no_grad():
        getattr(w, learned).copy_(torch.tensor(values))
    ls = torch.tensor([1.3, 0.4], dtype=torch.float64, requires_grad=True)

    def total(v: torch.Tensor) -> torch.Tensor:
        return w.contributions(v).sum()

    assert torch.autograd.gradcheck(total, (ls,))


@pytest.mark.parametrize("form", ["likelihood", "unit", "half"])
def test_uncertainty_optimum_is_exp_s_equals_a_over_b_times_loss(form):
    """At fixed losses, the learned s_k reaches exp(s_k) = 2·c_k·L_k (likelihood) or L_k."""
    w = UncertaintyWeighting(TERMS, form=form)
    fixed = losses(2.5, 0.3)
    opt = torch.optim.Adam(w.parameters(), lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        backward(w, fixed)
        opt.step()
    expected = {
        "likelihood": [2 * 0.5 * 2.5, 2 * 1.0 * 0.3],
        "unit": [2.5, 0.3],
        "half": [2.5, 0.3],
    }
    torch.testing.assert_close(w.log_var.exp(), torch.tensor(expected[form]), rtol=1e-3, atol=0)


def test_uncertainty_initial_log_var():
    assert UncertaintyWeighting(TERMS, init_log_var=0.5).log_var.tolist() == [0.5, 0.5]
    torch.manual_seed(0)
    s = UncertaintyWeighting(TERMS * 50, init_log_var=[0.2, 1.0]).log_var
    assert s.min().item() >= 0.2 and s.max().item() <= 1.0 and s.std().item() > 0.1
    with pytest.raises(ConfigError, match=r"init_log_var=\[1.0, 0.2\]"):
        UncertaintyWeighting(TERMS, init_log_var=[1.0, 0.2])
    with pytest.raises(ConfigError, match=r"form='double'.*likelihood"):
        UncertaintyWeighting(TERMS, form="double")


@pytest.mark.parametrize("optimizer", ["torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD"])
def test_strategy_parameters_are_optimised_without_weight_decay(optimizer):
    """σ is trained by the model's optimizer but never decayed, whatever its default (AdamW
    decays by 0.01 unless told otherwise)."""
    from mtltrain.build import build_job

    decay = "+trainer.optimizer.weight_decay=0.01"
    cfg = make_config([f"trainer.optimizer._target_={optimizer}", decay, "dataset.n_train=8"])
    job = build_job(cfg)
    model_group, strategy_group = job.optimizer.param_groups
    assert strategy_group["params"] == [job.strategy.log_var]
    assert strategy_group["weight_decay"] == 0.0 and model_group["weight_decay"] == 0.01
    assert model_group["params"] == list(job.model.parameters())


def test_uncertainty_leaves_terms_that_learn_their_own_noise_at_weight_one():
    w = UncertaintyWeighting((REG, NLL), init_log_var=[0.2, 1.0])
    assert w.log_var[1].item() == 0.0
    parts = w.contributions(torch.tensor([2.0, -0.7]))
    assert parts[1].item() == pytest.approx(-0.7)
    assert w.weights()[1].item() == 1.0
    parts.sum().backward()
    assert w.log_var.grad[1].item() == 0.0 and w.log_var.grad[0].item() != 0.0


def test_uncertainty_segmentation_counts_as_classification():
    seg = LossTerm("seg_dice", "seg", "dice", "segmentation", False, mse)
    assert UncertaintyWeighting((seg, REG)).weights().tolist() == [1.0, 0.5]


def test_uncertainty_binary_and_multilabel_count_as_classification():
    churn = LossTerm("churn", "churn", "bce", "binary", False, mse)
    tags = LossTerm("tags", "tags", "bce", "multilabel", False, mse)
    assert UncertaintyWeighting((churn, tags, REG)).weights().tolist() == [1.0, 1.0, 0.5]


# ---- revised uncertainty (Liebel & Körner) --------------------------------------------------


def test_revised_by_hand():
    w = RevisedUncertaintyWeighting(TERMS)
    assert w.c.tolist() == [1.0, 1.0]
    with torch.no_grad():
        w.c.copy_(torch.tensor([1.0, 0.5]))
    ls = losses(2.0, 0.5, grad=True)
    parts = backward(w, ls)
    # 2/(2·1) + ln 2 = 1.693147;  0.5/(2·0.25) + ln 1.25 = 1.223144
    torch.testing.assert_close(parts, torch.tensor([1.6931472, 1.2231436]))
    # ∂/∂c = −L/c³ + 2c/(1 + c²): −2 + 1 = −1;  −0.5/0.125 + 1/1.25 = −3.2
    torch.testing.assert_close(w.c.grad, torch.tensor([-1.0, -3.2]))
    # ∂/∂L = 1/(2c²)
    assert ls.grad.tolist() == [0.5, 2.0]
    torch.testing.assert_close(w.report()["weight"], torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(w.report()["c"], torch.tensor([1.0, 0.5]))


def test_revised_optimum():
    """At fixed L the learned c reaches c² = (L + sqrt(L² + 8L))/4."""
    w = RevisedUncertaintyWeighting(TERMS)
    opt = torch.optim.Adam(w.parameters(), lr=0.02)
    for _ in range(3000):
        opt.zero_grad()
        backward(w, losses(2.0, 0.3))
        opt.step()
    expected = [(L + math.sqrt(L * L + 8 * L)) / 4 for L in (2.0, 0.3)]
    torch.testing.assert_close(w.c.square(), torch.tensor(expected), rtol=1e-3, atol=0)


def test_revised_total_is_never_negative():
    torch.manual_seed(0)
    w = RevisedUncertaintyWeighting(TERMS)
    for _ in range(200):
        with torch.no_grad():
            w.c.copy_(torch.randn(2) * 3)
        assert w.contributions(torch.rand(2) * 5).sum() >= 0


# ---- dynamic task prioritization ------------------------------------------------------------


def dtp_outputs(correct_label: int, n: int = 4) -> tuple[dict, dict]:
    """`correct_label` of 4 label predictions right; depth residual RMSE 1."""
    logits = torch.zeros(n, 3)
    logits[:, 0] = 1.0
    target = torch.tensor([0] * correct_label + [1] * (n - correct_label))
    depth = torch.zeros(n, 1)
    return {"depth": depth, "label": logits}, {"depth": torch.ones(n, 1), "label": target}


def test_dtp_by_hand():
    w = DynamicTaskPrioritization(
        TERMS, alpha=0.1, gamma={"depth": 1.0, "label": 2.0}, kpi_scale=2.0
    )
    observe(w, *dtp_outputs(3))  # accuracy 0.75; depth KPI exp(−1/2) = 0.606531
    torch.testing.assert_close(w.report()["kpi"], torch.tensor([0.6065307, 0.75]))
    # −(1 − κ)^γ·log κ:  0.393469·0.5 = 0.196735;  0.0625·0.287682 = 0.017980
    torch.testing.assert_close(w.weights(), torch.tensor([0.1967347, 0.0179801]))
    parts = w.contributions(losses(2.0, 4.0))
    torch.testing.assert_close(parts, torch.tensor([0.3934693, 0.0719205]))
    observe(w, *dtp_outputs(1))  # accuracy 0.25: κ̄ = 0.1·0.25 + 0.9·0.75 = 0.7
    assert w.report()["kpi"][1].item() == pytest.approx(0.7)


def test_dtp_kpi_of_binary_and_multilabel_is_their_accuracy():
    churn = LossTerm("churn", "churn", "bce", "binary", False, mse)
    tags = LossTerm("tags", "tags", "bce", "multilabel", False, mse)
    w = DynamicTaskPrioritization((churn, tags))
    outputs = {"churn": torch.tensor([[1.0], [-1.0], [2.0], [0.5]]), "tags": torch.ones(2, 3)}
    targets = {"churn": torch.tensor([1.0, 1.0, 1.0, 0.0]), "tags": torch.tensor([[1, 0, 1]] * 2)}
    observe(w, outputs, targets)  # 2 of 4 samples right; 4 of 6 labels right
    torch.testing.assert_close(w.report()["kpi"], torch.tensor([0.5, 4 / 6]))


def test_dtp_weight_carries_no_gradient():
    w = DynamicTaskPrioritization(TERMS)
    outputs, targets = dtp_outputs(2)
    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    observe(w, outputs, targets)
    assert not w.kpi_avg.requires_grad and list(w.parameters()) == []
    ls = losses(2.0, 0.5, grad=True)
    backward(w, ls)
    assert ls.grad.tolist() == pytest.approx(w.weights().tolist())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_dtp_weight_decreases_with_the_kpi(gamma):
    w = DynamicTaskPrioritization((CLS,), gamma=gamma, kpi_eps=1e-4)
    weights = []
    for kappa in torch.linspace(0.01, 0.99, 50):
        w.kpi_avg.fill_(kappa)
        weights.append(w.weights().item())
    assert all(a > b for a, b in itertools.pairwise(weights))


def test_dtp_clamps_the_kpi():
    w = DynamicTaskPrioritization(TERMS, kpi_eps=0.01)
    w.kpi_avg.copy_(torch.tensor([0.0, 1.0]))
    weights = w.weights()
    assert torch.isfinite(weights).all()
    assert weights[0].item() == pytest.approx(-0.99 * math.log(0.01), rel=1e-5)
    assert weights[1].item() == pytest.approx(-0.01 * math.log(0.99), rel=1e-5)


def test_dtp_gives_each_term_its_task_weight():
    seg_ce = LossTerm("seg_ce", "seg", "cross_entropy", "segmentation", False, cross_entropy)
    seg_dice = LossTerm("seg_dice", "seg", "dice", "segmentation", False, mse)
    w = DynamicTaskPrioritization((seg_ce, seg_dice, CLS))
    pred = torch.zeros(2, 2, 4, 4)
    pred[:, 1, :2] = 1.0  # foreground predicted in the top half
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[:, :1] = 1  # true foreground: the top quarter → IoU = 1/2
    observe(
        w, {"seg": pred, "label": torch.eye(3)[:2]}, {"seg": mask, "label": torch.tensor([0, 2])}
    )
    assert w.report()["kpi"].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert w.weights()[0] == w.weights()[1]


def test_dtp_rejects_bad_settings():
    with pytest.raises(ConfigError, match=r"weighting.alpha=0"):
        DynamicTaskPrioritization(TERMS, alpha=0)
    with pytest.raises(ConfigError, match=r"weighting.gamma names \['x'\]"):
        DynamicTaskPrioritization(TERMS, gamma={"x": 1.0})
    with pytest.raises(ConfigError, match=r"weighting.kpi_scale"):
        DynamicTaskPrioritization(TERMS, kpi_scale=-1.0)
