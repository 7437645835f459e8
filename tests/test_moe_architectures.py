"""The mixture-of-experts architectures (MMoE, CGC, PLE, DSelect-k): each gate's formula against
a hand computation, experts that start different, shared and task parameters that partition the
model as documented (and whose losses depend on them as documented), features that carry every
shared gradient, and training steps through the engine. Tiny models: the whole file is fast."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mtltrain.config._compose import build, check_node, config_dir
from mtltrain.errors import ConfigError
from mtltrain.loop._engine import engine_for
from mtltrain.losses import compute_losses, loss_terms
from mtltrain.models.base import independent_copies
from mtltrain.models.cgc import CGC
from mtltrain.models.dselect_k import DSelectK, binary_codes, selector, smooth_step
from mtltrain.models.mlp import MLP
from mtltrain.models.mmoe import MMoE
from mtltrain.models.ple import PLE
from mtltrain.tasks import TaskSpec
from mtltrain.weighting.mgda import MGDA
from mtltrain.weighting.pcgrad import PCGrad

TASKS = (
    TaskSpec("a", "regression", 1, ("mse",)),
    TaskSpec("b", "classification", 3, ("cross_entropy",)),
)
HEAD = functools.partial(MLP, in_features=5)
WIDTH = 5


class Tiny(nn.Sequential):
    """A staged backbone of inputs 1×2×2: flatten, tanh(Linear 4→5), then tanh(Linear 5→5)
    per further stage."""

    def __init__(self, stages: int = 2) -> None:
        more = [m for _ in range(stages - 1) for m in (nn.Linear(WIDTH, WIDTH), nn.Tanh())]
        super().__init__(nn.Flatten(), nn.Linear(4, WIDTH), nn.Tanh(), *more)

    def stages(self) -> list[nn.Module]:
        layers = list(self)  # slicing would call Tiny(...) with the slice's layers
        return [nn.Sequential(*layers[:3]), *(nn.Sequential(*layers[i : i + 2])
                                              for i in range(3, len(layers), 2))]  # fmt: skip


ARCHITECTURES = {
    "mmoe": lambda: MMoE(TASKS, Tiny(), HEAD, experts=3),
    "cgc": lambda: CGC(TASKS, Tiny(), HEAD, shared_experts=2, task_experts=2),
    "ple1": lambda: PLE(TASKS, Tiny(1), HEAD),
    "ple2": lambda: PLE(TASKS, Tiny(2), HEAD),
    "ple3": lambda: PLE(TASKS, Tiny(3), HEAD, shared_experts=1, task_experts=2),
    "dselect_k": lambda: DSelectK(TASKS, Tiny(), HEAD, experts=4, k=2),
}


def inputs(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 1, 2, 2)


def constant_gate(linear: nn.Linear, weights: list[float]) -> None:
    """A softmax gate whose weights are `weights` for every input: W = 0, b = log(weights)."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor(weights).log())


def test_mmoe_mixes_the_shared_experts_by_each_tasks_softmax_gate():
    torch.manual_seed(0)
    model, x = MMoE(TASKS, Tiny(), HEAD, experts=3), inputs()
    weights = model.gates["a"](x)  # the gates read the input flattened: 1×2×2 → 4
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(x)))
    constant_gate(model.gates["a"].linear, [0.25, 0.5, 0.25])
    outputs, features = model(x)
    e = [expert(x) for expert in model.experts]
    for got, expert in zip(features, e, strict=True):
        torch.testing.assert_close(got, expert)  # the features are the experts' outputs
    mixed = 0.25 * e[0] + 0.5 * e[1] + 0.25 * e[2]
    torch.testing.assert_close(outputs["a"], model.heads["a"](mixed))


def test_cgc_mixes_the_shared_experts_and_the_tasks_own():
    torch.manual_seed(0)
    model, x = CGC(TASKS, Tiny(), HEAD, shared_experts=2, task_experts=1), inputs()
    level = model.level
    constant_gate(level.gates["a"].linear, [0.25, 0.25, 0.5])  # [S1, S2, T_a]
    outputs, features = model(x)
    s1, s2 = (expert(x) for expert in level.shared)
    (own,) = (expert(x) for expert in level.own["a"])
    torch.testing.assert_close(outputs["a"], model.heads["a"](0.25 * s1 + 0.25 * s2 + 0.5 * own))
    assert len(features) == 2
    torch.testing.assert_close(features[0], s1)
    assert level.shared_gate is None


def test_ple_levels_read_the_shared_and_task_mixtures_of_the_level_before():
    torch.manual_seed(0)
    model, x = PLE(TASKS, Tiny(2), HEAD, shared_experts=1, task_experts=1), inputs()
    first, last = model.levels
    assert first.shared_gate is not None and last.shared_gate is None
    constant_gate(first.gates["a"].linear, [0.25, 0.75])  # [S, T_a]
    constant_gate(first.gates["b"].linear, [0.5, 0.5])  # [S, T_b]
    constant_gate(first.shared_gate.linear, [0.5, 0.25, 0.25])  # [S, T_a, T_b]
    constant_gate(last.gates["a"].linear, [0.5, 0.5])
    outputs, _ = model(x)
    s, t_a, t_b = first.shared[0](x), first.own["a"][0](x), first.own["b"][0](x)
    h_a, h_shared = 0.25 * s + 0.75 * t_a, 0.5 * s + 0.25 * t_a + 0.25 * t_b
    y_a = model.heads["a"](0.5 * last.shared[0](h_shared) + 0.5 * last.own["a"][0](h_a))
    torch.testing.assert_close(outputs["a"], y_a)


def test_refusals_name_the_backbone_or_the_input_shape_in_one_line():
    with pytest.raises(ConfigError, match="no stages"):
        PLE(TASKS, nn.Sequential(nn.Flatten(), nn.Linear(4, WIDTH)), HEAD)
    with pytest.raises(ConfigError, match=r"input_shape=\[1, 3, 3\] is not allowed"):
        PLE(TASKS, Tiny(2), HEAD, input_shape=[1, 3, 3])  # the dry run through its stages
    conv = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(8, WIDTH))
    with pytest.raises(ConfigError, match=r"architecture.input_shape=null is not allowed"):
        MMoE(TASKS, conv, HEAD)
    outputs, _ = MMoE(TASKS, conv, HEAD, input_shape=[1, 2, 2])(inputs())
    assert outputs["b"].shape == (6, 3)
    with pytest.raises(ValueError, match=r"gates read inputs of 8 values .*but this one has 4"):
        MMoE(TASKS, conv, HEAD, input_shape=[2, 2, 2])(inputs())  # what the model check reports


def test_smooth_step_is_the_cubic_between_minus_and_plus_gamma_over_two():
    t = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 2.0])
    expected = torch.tensor([0.0, 0.0, 0.5, -2 * 0.25**3 + 1.5 * 0.25 + 0.5, 1.0, 1.0])
    torch.testing.assert_close(smooth_step(t, 1.0), expected)
    torch.testing.assert_close(smooth_step(2 * t, 2.0), expected)  # S_γ(γ·t) = S_1(t)


def test_a_selector_is_a_product_of_smooth_steps_over_the_binary_codes():
    assert binary_codes(4).int().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    s = 0.84375  # S(0.25), and S(0) = 0.5
    r = selector(torch.tensor([0.25, 0.0]), binary_codes(4), 1.0)
    torch.testing.assert_close(r, torch.tensor([(1 - s) / 2, (1 - s) / 2, s / 2, s / 2]))
    many = selector(torch.randn(10, 3), binary_codes(8), 1.0)
    torch.testing.assert_close(many.sum(dim=1), torch.ones(10))
    one_hot = selector(torch.tensor([5.0, -5.0]), binary_codes(4), 1.0)  # |z| ≥ γ/2: code 10
    assert one_hot.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_dselect_k_mixes_the_experts_its_k_selectors_pick_by_their_softmax():
    torch.manual_seed(0)
    model, x = DSelectK(TASKS, Tiny(), HEAD, experts=4, k=2), inputs()
    torch.testing.assert_close(model.gates["a"](x).sum(dim=1), torch.ones(len(x)))
    gate = model.gates["a"]
    with torch.no_grad():
        gate.z.weight.zero_()
        gate.z.bias.copy_(torch.tensor([5.0, -5.0, -5.0, 5.0]))  # selectors: experts 2 and 1
        constant_gate(gate.alpha, [0.25, 0.75])
    torch.testing.assert_close(gate(x), torch.tensor([[0.0, 0.75, 0.25, 0.0]]).expand(6, -1))
    outputs, features = model(x)
    e = [expert(x) for expert in model.experts]
    torch.testing.assert_close(outputs["a"], model.heads["a"](0.75 * e[1] + 0.25 * e[2]))
    assert len(features) == 4


@pytest.mark.parametrize("experts", [1, 3, 6])
def test_dselect_k_refuses_a_number_of_experts_that_is_no_power_of_two(experts):
    with pytest.raises(ConfigError, match=f"architecture.experts={experts} is not allowed"):
        DSelectK(TASKS, Tiny(), HEAD, experts=experts)


def first_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight of every expert's first Linear (4 inputs), in registration order."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear) and m.in_features == 4]


@pytest.mark.parametrize("name", ["mmoe", "cgc", "ple2", "dselect_k"])
def test_experts_start_independently_initialised(name):
    model = ARCHITECTURES[name]()
    weights = first_weights(model)
    assert len(weights) >= 3
    for i, w in enumerate(weights):
        assert all(not torch.equal(w, other) for other in weights[i + 1 :])


def test_the_first_expert_is_the_backbone_and_a_parameter_no_reset_reaches_is_refused():
    backbone = Tiny()
    assert MMoE(TASKS, backbone, HEAD, experts=2).experts[0] is backbone

    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(3))  # constant: the same in every copy
            self.w = nn.Parameter(torch.randn(3, 3))

    with pytest.raises(ConfigError, match="parameter w is not re-initialised"):
        independent_copies(Raw(), 2)
    raw = Raw()
    del raw.w
    assert len(independent_copies(raw, 3)) == 3


def task_losses(model: nn.Module, x: torch.Tensor) -> tuple[dict, tuple]:
    torch.manual_seed(1)
    outputs, features = model(x)
    return {task: (out * torch.randn_like(out)).sum() for task, out in outputs.items()}, features


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_shared_and_task_parameters_partition_the_model_as_their_losses_depend(name):
    """Shared: every task's loss depends on each; task k's: only task k's loss does."""
    torch.manual_seed(0)
    model = ARCHITECTURES[name]()
    shared = model.shared_parameters()
    own = {t.name: model.task_parameters(t.name) for t in TASKS}
    ids = [id(p) for p in [*shared, *(p for ps in own.values() for p in ps)]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    losses, _ = task_losses(model, inputs())
    for task, loss in losses.items():
        grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True,
                                    allow_unused=True)  # fmt: skip
        reached = {id(p) for p, g in zip(model.parameters(), grads, strict=True)
                   if g is not None and g.abs().sum() > 0}  # fmt: skip
        assert {id(p) for p in shared} <= reached
        for other, params in own.items():
            touched = {id(p) for p in params} & reached
            assert touched == ({id(p) for p in params} if other == task else set())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_features_carry_every_tasks_gradient_to_the_shared_parameters(name):
    """∇_shared L_k = (∂features/∂shared)ᵀ·∇_features L_k: the task parts read the shared ones
    only through the features (what representation-level strategies rely on)."""
    torch.manual_seed(0)
    model = ARCHITECTURES[name]()
    shared = model.shared_parameters()
    losses, features = task_losses(model, inputs())
    for loss in losses.values():
        direct = torch.autograd.grad(loss, shared, retain_graph=True)
        at = torch.autograd.grad(loss, features, retain_graph=True, materialize_grads=True)
        through = torch.autograd.grad(features, shared, at, retain_graph=True)
        for d, t in zip(direct, through, strict=True):
            torch.testing.assert_close(d, t)


@pytest.mark.parametrize("strategy", ["pcgrad", "mgda_ub"])
@pytest.mark.parametrize("name", ["mmoe", "cgc", "ple3", "dselect_k"])
def test_training_steps_through_the_engine_give_finite_gradients(name, strategy):
    torch.manual_seed(0)
    model = ARCHITECTURES[name]()
    terms = loss_terms(TASKS, None)
    weighting = PCGrad(terms) if strategy == "pcgrad" else MGDA(terms, representation=True)
    weighting.setup(model)
    engine = engine_for(weighting, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    targets = {"a": torch.randn(6, 1), "b": torch.randint(0, 3, (6,))}
    for _ in range(2):
        optimizer.zero_grad()
        outputs, features = model(inputs())
        parts, total = engine(compute_losses(terms, outputs, targets), features)
        assert torch.isfinite(total) and math.isclose(parts.sum(), total, rel_tol=1e-5)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        assert all(p.grad.abs().sum() > 0 for p in model.shared_parameters())
        optimizer.step()


ARCHITECTURE_CONFIGS = {"mmoe": MMoE, "cgc": CGC, "ple": PLE, "dselect_k": DSelectK}


@pytest.mark.parametrize("name", ARCHITECTURE_CONFIGS)
def test_each_config_builds_its_architecture_from_a_backbone_and_heads(name):
    node = OmegaConf.load(config_dir() / "architecture" / f"{name}.yaml")
    model = build(node, tasks=TASKS, encoder=Tiny(), head=HEAD, heads={"b": HEAD})
    assert type(model) is ARCHITECTURE_CONFIGS[name]
    outputs, _ = model(inputs())
    assert outputs["a"].shape == (6, 1) and outputs["b"].shape == (6, 3)


def test_a_setting_out_of_range_is_refused_by_the_config_check():
    node = OmegaConf.load(config_dir() / "architecture" / "dselect_k.yaml")
    node.experts = 6
    with pytest.raises(ConfigError, match="experts=6 is not allowed"):
        check_node(node)
    node.experts, node.gamma = 4, 0.0
    with pytest.raises(ConfigError, match=r"gamma=0\.0 is not allowed"):
        check_node(node)
