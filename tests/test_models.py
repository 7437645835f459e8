import torch
from conftest import make_config

from mtltrain.config import build
from mtltrain.data.base import TaskSpec
from mtltrain.models.mnist import MnistDecoder, MnistEncoder

MNIST_TASKS = (
    TaskSpec("cls3", "classification", 3, ("cross_entropy",)),
    TaskSpec("cls10", "classification", 10, ("cross_entropy",)),
    TaskSpec("recon", "regression", 784, ("mse",)),
)


def test_mnist_encoder_bottleneck_is_2x2x8_and_decoder_28x28():
    z = MnistEncoder()(torch.randn(5, 1, 28, 28))
    assert z.shape == (5, 8, 2, 2)
    image = MnistDecoder()(z)
    assert image.shape == (5, 1, 28, 28) and image.abs().max() <= 1


def test_mnist_model_from_config():
    model = build(make_config(["dataset=mnist_mtl"]).model, tasks=MNIST_TASKS)
    out = model(torch.randn(4, 1, 28, 28))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "cls3": (4, 3), "cls10": (4, 10), "recon": (4, 1, 28, 28)
    }  # fmt: skip
    head = model.heads["cls3"]  # flatten → dense32 → ReLU → dense3
    assert [type(m).__name__ for m in head] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert head[1].in_features == 32 and head[1].out_features == 32
    assert len(model.shared_parameters()) > 0


def test_two_slope_model_shares_nothing():
    tasks = tuple(TaskSpec(n, "regression", 1, ("mse",)) for n in ("y1", "y2"))
    model = build(make_config().model, tasks=tasks)
    assert model.shared_parameters() == []
    assert [m.out_features for m in model.heads["y1"] if hasattr(m, "out_features")] == [512, 1]
    model(torch.randn(8, 1))["y1"].sum().backward()
    assert all(p.grad is None for p in model.heads["y2"].parameters())
    assert all(p.grad is not None for p in model.heads["y1"].parameters())
