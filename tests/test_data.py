import numpy as np
import pytest
import torch
from conftest import write_fake_mnist

from mtltrain.data import mnist_mtl, sin_hetero, two_slope
from mtltrain.errors import ConfigError, DataError

TASKS = {
    "y1": {"slope": -2.0, "intercept": 1.0, "noise_std": 3.0},
    "y2": {"slope": 1.5, "intercept": 3.0, "noise_std": 0.5},
}
MSE = {"y1": ["mse"], "y2": ["mse"]}
NLL = {"y": ["gaussian_nll"]}
MNIST = {"cls3": ["cross_entropy"], "cls10": ["cross_entropy"], "recon": ["mse"],
         "seg": ["cross_entropy", "dice"]}  # fmt: skip


def test_two_slope_shapes_and_settings():
    data = two_slope.build(TASKS, MSE, n_train=300, n_test=100, seed=0)
    assert [t.name for t in data.tasks] == ["y1", "y2"]
    assert all(t.kind == "regression" and t.out_features == 1 for t in data.tasks)
    assert data.train.inputs.shape == (300, 1) and data.test.inputs.shape == (100, 1)
    assert data.train.targets["y1"].shape == (300, 1)
    assert torch.equal(data.train.noise_std["y2"], torch.full((300, 1), 0.5))


def test_two_slope_follows_its_slopes_without_noise():
    tasks = {"a": {"slope": 4.0, "intercept": -1.0, "noise_std": 0.0}}
    data = two_slope.build(tasks, {"a": ["mse"]}, n_train=50, n_test=10, seed=3)
    torch.testing.assert_close(data.train.targets["a"], 4.0 * data.train.inputs - 1.0)


def test_two_slope_noise_has_its_sigma():
    data = two_slope.build(TASKS, MSE, n_train=100_000, n_test=10, seed=1)
    x = data.train.inputs
    resid = data.train.targets["y1"] - (-2.0 * x + 1.0)
    assert resid.std().item() == pytest.approx(3.0, rel=0.02)


def test_two_slope_is_deterministic_under_its_seed():
    a, b = (two_slope.build(TASKS, MSE, seed=7) for _ in range(2))
    c = two_slope.build(TASKS, MSE, seed=8)
    assert torch.equal(a.train.targets["y1"], b.train.targets["y1"])
    assert torch.equal(a.test.inputs, b.test.inputs)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert not torch.equal(a.train.inputs[:300], a.test.inputs[:300])


def test_two_slope_rejects_incomplete_task():
    with pytest.raises(ConfigError, match=r"dataset.tasks.y1 lacks \['intercept'\]"):
        two_slope.build({"y1": {"slope": 1.0, "noise_std": 1.0}}, MSE)


def test_sin_hetero_noise_and_normalised_inputs():
    data = sin_hetero.build(NLL, n_train=50_000, n_test=1000, seed=0)
    x = data.train.inputs
    assert x.shape == (50_000, 1) and data.test.targets["y"].shape == (1000, 1)
    assert abs(x.mean().item()) < 1e-4 and x.std().item() == pytest.approx(1.0, abs=1e-4)
    raw_x = data.train.raw_inputs
    torch.testing.assert_close(x, (raw_x - raw_x.mean()) / raw_x.std())
    assert raw_x.min().item() >= 50.0 and raw_x.max().item() < 151.0
    sigma = data.train.noise_std["y"]
    torch.testing.assert_close(sigma, 0.1 + 0.5 * (raw_x - 50.0) / 101.0)
    # y = f(x) + σ(x)·ε with ε ~ N(0, 1)
    z = (data.train.targets["y"] - sin_hetero.curve(raw_x)) / sigma
    assert z.mean().item() == pytest.approx(0.0, abs=0.02)
    assert z.std().item() == pytest.approx(1.0, abs=0.02)
    assert sigma.min().item() >= 0.1 and sigma.max().item() <= 0.6


@pytest.mark.parametrize("bad", [{"noise_min": -0.1}, {"noise_max": -1.0}, {"x_min": 200.0}])
def test_sin_hetero_rejects_bad_settings(bad):
    with pytest.raises(ConfigError, match=str(next(iter(bad.values())))):
        sin_hetero.build(NLL, n_train=10, n_test=10, **bad)


def test_sin_curve_is_the_source_formula():
    # f(60) = sin(60/15 − 4) + 2 + sin(60/10 − 5) = 0 + 2 + sin(1)
    assert sin_hetero.curve(torch.tensor(60.0)).item() == pytest.approx(2.0 + np.sin(1.0))


def test_sin_hetero_is_deterministic_under_its_seed():
    a, b = sin_hetero.build(NLL, n_train=100, seed=4), sin_hetero.build(NLL, n_train=100, seed=4)
    assert torch.equal(a.train.targets["y"], b.train.targets["y"])


def test_cls3_label_mapping():
    digits = torch.arange(10)
    assert mnist_mtl.cls3_labels(digits).tolist() == [2, 2, 0, 2, 2, 2, 1, 2, 2, 2]


def test_mnist_loads_idx_files(tmp_path):
    root = write_fake_mnist(tmp_path, n_train=30, n_test=20)
    data = mnist_mtl.build(MNIST, str(root), download=False)
    assert [t.name for t in data.tasks] == ["cls3", "cls10", "recon"]
    assert data.train.inputs.shape == (30, 1, 28, 28) and len(data.test) == 20
    assert data.train.inputs.min() >= -1 and data.train.inputs.max() <= 1
    raw = mnist_mtl.read_idx(root / "MNIST/raw/train-images-idx3-ubyte", 3)
    torch.testing.assert_close(
        data.train.inputs[3, 0], torch.from_numpy(raw[3] / 127.5 - 1).float()
    )
    assert data.train.targets["cls10"].tolist() == [i % 10 for i in range(30)]
    assert data.train.targets["cls3"][2] == 0 and data.train.targets["cls3"][6] == 1
    assert data.train.targets["recon"] is data.train.inputs


def test_mnist_scales_to_minus_one_one(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((2, 28, 28), np.uint8)
    images[1] = 255
    for prefix in ("train", "t10k"):
        mnist_mtl.write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        mnist_mtl.write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.array([2, 6]))
    data = mnist_mtl.build(MNIST, str(tmp_path), download=False, tasks=["cls3"])
    assert data.train.inputs[0].unique().tolist() == [-1.0]
    assert data.train.inputs[1].unique().tolist() == [1.0]
    assert list(data.train.targets) == ["cls3"]


def test_mnist_task_list_is_a_setting(mnist_root):
    data = mnist_mtl.build(MNIST, str(mnist_root), download=False, tasks=["cls3", "cls10"])
    assert [t.name for t in data.tasks] == ["cls3", "cls10"]
    with pytest.raises(ConfigError, match=r"dataset.tasks=\['cls3', 'depth'\].*cls10"):
        mnist_mtl.build(MNIST, str(mnist_root), download=False, tasks=["cls3", "depth"])


def test_mnist_missing_without_download_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte does not exist.*dataset.root"):
        mnist_mtl.build(MNIST, str(tmp_path), download=False)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "magic number 00000903"),
        (lambda b: b[:-5], "truncated or corrupt"),
        (lambda b: b[:2], "magic number none"),
    ],
)
def test_mnist_corrupt_file_names_the_file(tmp_path, mangle, message):
    root = write_fake_mnist(tmp_path, n_train=10, n_test=10)
    path = root / "MNIST/raw/train-images-idx3-ubyte"
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(DataError, match=message) as err:
        mnist_mtl.build(MNIST, str(root), download=False)
    assert "train-images-idx3-ubyte" in str(err.value)


def test_shuffled_batches_cover_the_split_once():
    data = two_slope.build(TASKS, MSE, n_train=50, n_test=5, seed=0)
    g = torch.Generator().manual_seed(0)
    batches = list(data.train.shuffled(g).batches(16))
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    xs = torch.cat([b.inputs for b in batches])
    assert sorted(xs.flatten().tolist()) == sorted(data.train.inputs.flatten().tolist())
    assert not torch.equal(xs, data.train.inputs)
    for b in batches:  # inputs and targets stay paired
        torch.testing.assert_close(b.noise_free["y1"], -2.0 * b.inputs + 1.0)
    assert [len(b) for b in data.train.batches(16, start=2)] == [16, 2]


def test_mnist_segmentation_task_marks_pixels_on(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 3, 4], image[0, 5, 6], image[0, 7, 8] = 127, 128, 255
    for prefix in ("train", "t10k"):
        mnist_mtl.write_idx(raw / f"{prefix}-images-idx3-ubyte", image)
        mnist_mtl.write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.array([3]))
    data = mnist_mtl.build(MNIST, str(tmp_path), download=False, tasks=["seg"])
    (task,) = data.tasks
    assert (task.kind, task.out_features, task.losses) == (
        "segmentation",
        1568,
        ("cross_entropy", "dice"),
    )
    mask = data.train.targets["seg"]
    assert mask.shape == (1, 28, 28) and mask.dtype == torch.long
    assert mask.nonzero().tolist() == [[0, 5, 6], [0, 7, 8]]


def test_dataset_losses_are_checked():
    with pytest.raises(ConfigError, match=r"dataset.losses names \['y3'\].*\['y1', 'y2'\]"):
        two_slope.build(TASKS, {**MSE, "y3": ["mse"]})
    with pytest.raises(ConfigError, match=r"dataset.losses.y2=\[\] is not allowed.*gaussian_nll"):
        two_slope.build(TASKS, {"y1": ["mse"]})
    with pytest.raises(ConfigError, match=r"dataset.losses.cls3=\['mse'\].*cross_entropy"):
        mnist_mtl.build({**MNIST, "cls3": ["mse"]}, "unused", download=False)


def test_heteroscedastic_losses_mark_the_task():
    data = two_slope.build(TASKS, {"y1": ["gaussian_nll"], "y2": ["mse"]}, n_train=4, n_test=4)
    assert [t.heteroscedastic for t in data.tasks] == [True, False]
    assert sin_hetero.build(NLL, n_train=4, n_test=4).tasks[0].heteroscedastic


def test_synthetic_data_knows_its_noise_free_targets():
    data = two_slope.build(TASKS, MSE, n_train=20, n_test=5)
    torch.testing.assert_close(data.train.noise_free["y2"], 1.5 * data.train.inputs + 3.0)
    sin = sin_hetero.build(NLL, n_train=20, n_test=5)
    torch.testing.assert_close(sin.test.noise_free["y"], sin_hetero.curve(sin.test.raw_inputs))
