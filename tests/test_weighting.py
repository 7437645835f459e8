import math

import pytest
import torch

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm
from mtltrain.weighting.fixed import FixedWeighting
from mtltrain.weighting.uncertainty import UncertaintyWeighting

REG = LossTerm("depth", "depth", "mse", "regression")
CLS = LossTerm("label", "label", "cross_entropy", "classification")
TERMS = (REG, CLS)


def losses(reg: float, cls: float, grad: bool = False) -> dict[str, torch.Tensor]:
    return {
        "depth": torch.tensor(reg, requires_grad=grad),
        "label": torch.tensor(cls, requires_grad=grad),
    }


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
    w.backward(ls, [])
    assert ls["depth"].grad.item() == 0.5 and ls["label"].grad.item() == 3.0
    assert list(w.parameters()) == []


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"depth": 1.0}, r"names \['depth'\] do not match the loss terms \['depth', 'label'\]"),
        ({"depth": 1.0, "label": 1.0, "x": 2.0}, "do not match the loss terms"),
        ([1.0], r"has 1 values but there are 2 loss terms"),
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
    parts = w.backward(ls, [])
    torch.testing.assert_close(parts.sum(), torch.tensor(0.8908182 + 0.5107014))
    # ∂/∂s_k = −c_k·e^−s_k·L_k + 1/2;  ∂/∂L_k = c_k·e^−s_k
    torch.testing.assert_close(
        w.log_var.grad,
        torch.tensor([-0.5 * math.exp(-0.3) * 2.0 + 0.5, -math.exp(0.2) * 0.5 + 0.5]),
    )
    assert ls["depth"].grad.item() == pytest.approx(0.5 * math.exp(-0.3))
    assert ls["label"].grad.item() == pytest.approx(math.exp(0.2))


def test_uncertainty_gradcheck():
    w = UncertaintyWeighting(TERMS).double()
    with torch.no_grad():
        w.log_var.copy_(torch.tensor([0.7, -1.1]))
    ls = torch.tensor([1.3, 0.4], dtype=torch.float64, requires_grad=True)
    fn = lambda v: w.contributions({"depth": v[0], "label": v[1]}).sum()  # noqa: E731
    assert torch.autograd.gradcheck(fn, (ls,))


@pytest.mark.parametrize("form", ["likelihood", "unit", "half"])
def test_uncertainty_optimum_is_exp_s_equals_a_over_b_times_loss(form):
    """At fixed losses, the learned s_k reaches exp(s_k) = 2·c_k·L_k (likelihood) or L_k."""
    w = UncertaintyWeighting(TERMS, form=form)
    fixed = losses(2.5, 0.3)
    opt = torch.optim.Adam(w.parameters(), lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        w.backward(fixed, [])
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


def test_uncertainty_parameters_are_optimised_without_weight_decay():
    from mtltrain.data.two_slope import build
    from mtltrain.models.mlp import MLP
    from mtltrain.models.multitask import MultiTaskModel
    from mtltrain.train import param_groups

    data = build({"a": {"slope": 1.0, "intercept": 0.0, "noise_std": 1.0}}, n_train=8, n_test=4)
    model = MultiTaskModel(data.tasks, head=lambda out_features: MLP(1, out_features))
    w = UncertaintyWeighting((REG,))
    groups = param_groups(model, w)
    assert groups[1]["params"] == [w.log_var] and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + 1
