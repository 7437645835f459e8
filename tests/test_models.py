import pytest
import torch
from conftest import make_config

from mtltrain.config._compose import build
from mtltrain.errors import ConfigError
from mtltrain.losses import MeanLogVar
from mtltrain.models.mlp import MLP, BatchedAffine, SeparateMLPs
from mtltrain.models.mnist import MaxPool2x2, MnistDecoder, MnistEncoder
from mtltrain.models.multitask import MultiTaskModel
from mtltrain.tasks import TaskSpec

MNIST_TASKS = (
    TaskSpec("cls3", "classification", 3, ("cross_entropy",)),
    TaskSpec("cls10", "classification", 10, ("cross_entropy",)),
    TaskSpec("recon", "regression", 784, ("mse",)),
    TaskSpec("seg", "segmentation", 2 * 784, ("cross_entropy", "dice")),
)


def test_mnist_encoder_bottleneck_is_2x2x8_and_decoder_28x28():
    z = MnistEncoder()(torch.randn(5, 1, 28, 28))
    assert z.shape == (5, 8, 2, 2)
    image = MnistDecoder()(z)
    assert image.shape == (5, 1, 28, 28) and image.abs().max() <= 1


def test_mnist_encoder_pools_before_its_relus_exactly_as_section_5b_orders_them():
    """ReLU after each pooling (a quarter of the values) gives §5B's ReLU-then-pool values and
    gradients bit for bit, windows without a positive value included."""
    torch.manual_seed(0)
    encoder = MnistEncoder()
    layers = list(encoder)
    pooled = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.MaxPool2d)]
    assert all(isinstance(layers[i + 1], torch.nn.ReLU) for i in pooled)
    for i in pooled:  # §5B's order: the ReLU that follows each pooling back before it
        layers[i], layers[i + 1] = layers[i + 1], layers[i]
    source = torch.nn.Sequential(*layers)
    x = torch.randn(6, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    z, z_source = encoder(x), source(x)
    grad = torch.randn_like(z)
    ours = torch.autograd.grad(z, list(encoder.parameters()), grad)
    theirs = torch.autograd.grad(z_source, list(source.parameters()), grad)
    assert len(pooled) == 3 and torch.equal(z, z_source) and (z == 0).any()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_maxpool2x2_without_autograd_gives_max_pool2d_s_values(memory_format):
    x = torch.randn(3, 4, 7, 9).contiguous(memory_format=memory_format)
    x[0, :, :4] = 0.5  # ties
    x[1, 0, 2, 3] = float("nan")
    with torch.no_grad():
        pooled = MaxPool2x2()(x)
    expected = torch.nn.functional.max_pool2d(x, 2)
    assert pooled.shape == expected.shape == (3, 4, 3, 4)
    assert torch.equal(pooled.nan_to_num(7.0), expected.nan_to_num(7.0))
    assert pooled.isnan().sum() == 1


def test_maxpool2x2_with_autograd_sends_a_tied_window_s_gradient_to_its_first_maximum():
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    MaxPool2x2()(x).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_maxpool2x2_vmapped_with_autograd_sends_a_tied_window_s_gradient_to_its_first_maximum():
    """The stacked launcher vmaps the model (a GPU sweep of §5B): its tensors inside vmap do not
    require grad though autograd records them."""
    x = torch.zeros(1, 1, 1, 2, 2, requires_grad=True)
    torch.func.vmap(MaxPool2x2())(x).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_mnist_model_from_config():
    model = build(make_config(["dataset=mnist_mtl"]).model, tasks=MNIST_TASKS)
    out, features = model(torch.randn(4, 1, 28, 28))
    assert features.shape == (4, 8, 2, 2)  # the 2×2×8 bottleneck every head reads
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "cls3": (4, 3), "cls10": (4, 10), "recon": (4, 1, 28, 28), "seg": (4, 2, 28, 28)
    }  # fmt: skip
    assert out["recon"].abs().max() <= 1 and out["seg"].abs().max() > 0
    head = model.heads["cls3"]  # flatten → dense32 → ReLU → dense3
    assert [type(m).__name__ for m in head] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert head[1].in_features == 32 and head[1].out_features == 32
    assert len(model.shared_parameters()) > 0


def test_two_slope_model_shares_nothing():
    tasks = tuple(TaskSpec(n, "regression", 1, ("mse",)) for n in ("y1", "y2"))
    model = build(make_config().model, tasks=tasks)
    assert isinstance(model, SeparateMLPs) and model.shared_parameters() == []
    assert [tuple(w.shape) for w in model.weights] == [(2, 1, 512), (2, 512, 1)]
    x = torch.randn(8, 1)
    outputs, features = model(x)
    assert features is x  # no shared layers: the representation is the input
    outputs["y1"].sum().backward()
    for p in (*model.weights, *model.biases):
        assert p.grad[1].abs().sum() == 0 and p.grad[0].abs().sum() > 0  # y2's network untouched


def test_separate_mlps_compute_what_separate_modules_compute():
    """Same weights → same outputs and gradients as one MLP module per task."""
    torch.manual_seed(0)
    tasks = (
        TaskSpec("a", "regression", 1, ("mse",)),
        TaskSpec("b", "regression", 1, ("gaussian_nll",), heteroscedastic=True),
    )
    grouped = SeparateMLPs(tasks, in_features=3, hidden=[16, 8], activation="tanh")
    modules = [MLP(3, 2, hidden=[16, 8], activation="tanh") for _ in tasks]
    with torch.no_grad():
        for k, mlp in enumerate(modules):
            linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
            for layer, w, b in zip(linears, grouped.weights, grouped.biases, strict=True):
                layer.weight.copy_(w[k].T[: layer.out_features])
                layer.bias.copy_(b[k, 0, : layer.out_features])
    x = torch.randn(5, 3)
    out, _ = grouped(x)
    torch.testing.assert_close(out["a"], modules[0](x)[:, :1])
    mean, log_var = modules[1](x).chunk(2, dim=1)
    torch.testing.assert_close(out["b"].mean, mean)
    torch.testing.assert_close(out["b"].log_var, log_var)
    (out["a"].sum() + out["b"].log_var.sum()).backward()
    (modules[0](x)[:, :1].sum() + log_var.sum()).backward()
    first = next(m for m in modules[0] if isinstance(m, torch.nn.Linear))
    torch.testing.assert_close(grouped.weights[0].grad[0], first.weight.grad.T)


@pytest.mark.parametrize("out", [1, 3])
def test_batched_affine_is_baddbmm_to_the_bit_forward_and_backward(out):
    """BatchedAffine computes a one-output layer's gradients otherwise than torch.baddbmm's
    backward (the same sums): every value and gradient equals baddbmm's bit for bit (the §5A
    stack's shapes, and a wider layer that takes torch's own products)."""
    torch.manual_seed(0)
    bias, h, weight = torch.randn(32, 1, out), torch.randn(32, 16, 512), torch.randn(32, 512, out)
    grad = torch.randn(32, 16, out)
    results = []
    for f in (torch.baddbmm, BatchedAffine.apply):
        leaves = [t.clone().requires_grad_() for t in (bias, h, weight)]
        f(*leaves).backward(grad)
        results.append([f(*leaves), *(t.grad for t in leaves)])
    for ours, torchs in zip(*results, strict=True):
        assert torch.equal(ours, torchs)


@pytest.mark.parametrize("out", [1, 3])
def test_batched_affine_under_bf16_autocast_is_baddbmm_s_gradients(out):
    """trainer.precision=bf16: baddbmm multiplies bf16 copies; the backward takes them too."""
    torch.manual_seed(0)
    bias, h, weight = torch.randn(4, 1, out), torch.randn(4, 8, 16), torch.randn(4, 16, out)
    grad = torch.randn(4, 8, out).bfloat16()
    results = []
    for f in (torch.baddbmm, BatchedAffine.apply):
        leaves = [t.clone().requires_grad_() for t in (bias, h, weight)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = f(*leaves)
        y.backward(grad)
        results.append([y, *(t.grad for t in leaves)])
    for ours, torchs in zip(*results, strict=True):
        assert ours.dtype == torchs.dtype and torch.equal(ours, torchs)


def test_two_slope_as_modules_is_a_config_away():
    tasks = tuple(TaskSpec(n, "regression", 1, ("mse",)) for n in ("y1", "y2"))
    model = build(make_config(["model=two_slope_modules"]).model, tasks=tasks)
    assert model.shared_parameters() == []
    assert [m.out_features for m in model.heads["y1"] if hasattr(m, "out_features")] == [512, 1]


def test_heteroscedastic_head_emits_mean_and_log_variance():
    task = TaskSpec("y", "regression", 1, ("gaussian_nll",), heteroscedastic=True)
    model = MultiTaskModel((task,), head=lambda out_features: MLP(1, out_features, hidden=[4]))
    out = model(torch.randn(6, 1))[0]["y"]
    assert isinstance(out, MeanLogVar) and out.mean.shape == out.log_var.shape == (6, 1)
    assert model.heads["y"].head[-1].out_features == 2


def test_a_bounded_head_cannot_predict_a_variance():
    task = TaskSpec("recon", "regression", 784, ("gaussian_nll",), heteroscedastic=True)
    with pytest.raises(ConfigError, match=r"task recon: losses \['gaussian_nll'\] need a head"):
        MultiTaskModel((task,), head=lambda out_features: MnistDecoder(out_features))


DENSE_TASKS = {
    "nyuv2": (TaskSpec("semantic", "semantic", 13, ("masked_cross_entropy",)),
              TaskSpec("depth", "depth", 1, ("masked_l1",)),
              TaskSpec("normals", "normals", 3, ("masked_cosine",))),
    "cityscapes": (TaskSpec("semantic", "semantic", 7, ("masked_cross_entropy",)),
                   TaskSpec("depth", "depth", 1, ("masked_l1",))),
}  # fmt: skip


def model_options() -> list[str]:
    from mtltrain.config._compose import config_dir

    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", model_options())
def test_every_model_follows_the_protocol(name):
    """(outputs, features) from forward; shared and task parameters name every parameter;
    the features depend on the shared parameters and only on them."""
    data_set = {"two_slope_modules": "two_slope"}.get(name, name)
    dense = data_set in DENSE_TASKS
    small = {
        "nyuv2": ["model.encoder.widths=[4,8]"],  # a two-level SegNet
        "cityscapes": ["model.encoder.widths=[4,8]"],
        "celeba": ["model.encoder.width=8", "model.head.in_features=64"],  # ResNet-18: slow
    }
    cfg = make_config([f"dataset={data_set}", f"model={name}", *small.get(name, [])])
    tasks = (
        MNIST_TASKS
        if data_set == "mnist_mtl"
        else DENSE_TASKS[data_set]
        if dense
        else (
            TaskSpec("a", "regression", 1, ("mse",)),
            TaskSpec("b", "regression", 1, ("gaussian_nll",), heteroscedastic=True),
        )
    )
    model = build(cfg.model, tasks=tasks)
    shapes = {
        "mnist_mtl": (1, 28, 28), "multi_mnist": (1, 28, 28), "celeba": (3, 16, 16),
        "nyuv2": (3, 8, 12), "cityscapes": (3, 8, 12),
    }  # fmt: skip
    x = torch.randn(3, *shapes.get(data_set, (1,)))
    if data_set == "qm9":  # molecules of 29 atoms: their 13 columns, the last the mask
        x = torch.cat([torch.rand(3, 29, 12), torch.ones(3, 29, 1)], dim=-1)
    outputs, features = model(x)
    assert set(outputs) == {t.name for t in tasks}
    shared = model.shared_parameters()
    ids = {id(p) for p in shared}
    for t in tasks:
        assert not ids & {id(p) for p in model.task_parameters(t.name)}
    named = ids | {id(p) for t in tasks for p in model.task_parameters(t.name)}
    assert named == {id(p) for p in model.parameters()}
    if shared:
        grads = torch.autograd.grad(features.sum(), shared, allow_unused=True)
        assert all(g is not None for g in grads)
        head = model.task_parameters(tasks[0].name)
        assert torch.autograd.grad(features.sum(), head, allow_unused=True) == (None,) * len(head)
    else:
        assert features is x
