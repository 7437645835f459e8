"""MultiMNIST: the overlay by hand and against PIL, seeded pairs, the cache, and MultiLeNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_config, write_fake_mnist
from PIL import Image

from mtltrain.build import build_job
from mtltrain.data import multi_mnist
from mtltrain.data.base import held_out
from mtltrain.data.mnist_mtl import read_idx, write_idx
from mtltrain.errors import ConfigError

LOSSES = {"left": ["cross_entropy"], "right": ["cross_entropy"]}


def two_digits() -> tuple[torch.Tensor, torch.Tensor]:
    first = torch.zeros(1, 28, 28, dtype=torch.uint8)
    second = torch.zeros(1, 28, 28, dtype=torch.uint8)
    first[0, 0, 0], first[0, 10, 10], first[0, 9, 9] = 200, 100, 180
    second[0, 4, 4], second[0, 3, 3], second[0, 1, 1] = 255, 20, 77  # at 10,10 / 9,9 / 7,7
    return first, second


def test_two_digits_overlay_by_hand():
    """Nearest-neighbour 36 → 28 keeps canvas row r = ⌊(i + ½)·36/28⌋ as row i: canvas rows
    0, 7, 9, 10 become rows 0, 5, 7, 8; the overlap keeps the larger pixel."""
    out = multi_mnist.overlay(*two_digits())[0]
    expected = torch.zeros(28, 28, dtype=torch.uint8)
    expected[0, 0] = 200  # the first digit alone
    expected[8, 8] = 255  # max(100, 255)
    expected[7, 7] = 180  # max(180, 20)
    expected[5, 5] = 77  # the second digit alone
    assert torch.equal(out, expected)


def test_the_overlay_resizes_as_pil_does():
    """The paper's imresize(..., interp='nearest') is PIL's nearest resize of the canvas."""
    rng = np.random.default_rng(0)
    first, second = (
        torch.from_numpy(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)) for _ in "ab"
    )
    ours = multi_mnist.overlay(first, second).numpy()
    for i in range(3):
        canvas = np.zeros((36, 36), dtype=np.uint8)
        canvas[:28, :28] = first[i].numpy()
        canvas[6:34, 6:34] = np.maximum(canvas[6:34, 6:34], second[i].numpy())
        pil = np.asarray(Image.fromarray(canvas).resize((28, 28), Image.NEAREST))
        np.testing.assert_array_equal(ours[i], pil)


def test_labels_follow_the_seeded_partners(tmp_path):
    root = write_fake_mnist(tmp_path, n_train=40, n_test=20)
    data = multi_mnist.build(LOSSES, str(root), download=False)
    images = read_idx(root / "MNIST/raw/train-images-idx3-ubyte", 3)
    labels = read_idx(root / "MNIST/raw/train-labels-idx1-ubyte", 1)
    partner = torch.randint(40, (40,), generator=torch.Generator().manual_seed(0))
    assert data.train.targets["left"].tolist() == labels.tolist()
    assert data.train.targets["right"].tolist() == labels[partner.numpy()].tolist()
    expected = multi_mnist.overlay(
        torch.from_numpy(images.copy()), torch.from_numpy(images[partner.numpy()])
    )
    pixels = data.train.inputs[:, 0] * multi_mnist.STD + multi_mnist.MEAN
    torch.testing.assert_close(pixels, expected.float() / 255)
    assert data.train.inputs.shape == (40, 1, 28, 28) and len(data.test) == 20
    other = multi_mnist.build(LOSSES, str(root), download=False, pair_seed=1)
    assert not torch.equal(other.train.targets["right"], data.train.targets["right"])


def test_pairs_are_built_once_and_cached_by_their_settings(tmp_path, monkeypatch):
    root = write_fake_mnist(tmp_path, n_train=40, n_test=20)
    first = multi_mnist.build(LOSSES, str(root), download=False)
    cached = list((root / "MultiMNIST").glob("*.pt"))
    assert len(cached) == 1 and not list((root / "MultiMNIST").glob(".*"))

    def no_rebuild(*args):
        raise AssertionError("rebuilt although cached")

    with monkeypatch.context() as patch:
        patch.setattr(multi_mnist, "pairs", no_rebuild)
        again = multi_mnist.build(LOSSES, str(root), download=False)
    assert torch.equal(again.train.inputs, first.train.inputs)
    multi_mnist.build(LOSSES, str(root), download=False, shift=8)
    assert len(list((root / "MultiMNIST").glob("*.pt"))) == 2
    multi_mnist.build(LOSSES, str(root), download=False, cache=str(tmp_path / "elsewhere"))
    assert len(list((tmp_path / "elsewhere").glob("*.pt"))) == 1
    cached[0].write_bytes(b"not a torch file")  # a corrupt cache is rebuilt
    assert torch.equal(
        multi_mnist.build(LOSSES, str(root), download=False).train.inputs, first.train.inputs
    )
    write_idx(root / "MNIST/raw/train-labels-idx1-ubyte", (np.arange(40) + 1) % 10)  # new MNIST
    changed = multi_mnist.build(LOSSES, str(root), download=False)
    assert changed.train.targets["left"].tolist() == ((np.arange(40) + 1) % 10).tolist()


@pytest.mark.parametrize(
    ("setting", "match"),
    [({"shift": 9}, "dataset.shift=9"), ({"canvas": 30, "shift": 6}, "dataset.shift=6")],
)
def test_a_second_digit_off_the_canvas_is_refused(tmp_path, setting, match):
    root = write_fake_mnist(tmp_path, n_train=10, n_test=10)
    with pytest.raises(ConfigError, match=match):
        multi_mnist.build(LOSSES, str(root), download=False, **setting)


def test_one_task_alone(tmp_path):
    root = write_fake_mnist(tmp_path, n_train=10, n_test=10)
    data = multi_mnist.build(LOSSES, str(root), download=False, tasks=["right"])
    assert [t.name for t in data.tasks] == ["right"] and list(data.train.targets) == ["right"]
    with pytest.raises(ConfigError, match=r"dataset.tasks=\['middle'\]"):
        multi_mnist.build(LOSSES, str(root), download=False, tasks=["middle"])


def test_multi_lenet_is_the_papers_network(mnist_root):
    job = build_job(make_config(["dataset=multi_mnist", f"dataset.root={mnist_root}"]))
    model = job.model
    sizes = [p.numel() for p in model.shared_parameters()]
    assert sizes == [250, 10, 5000, 20, 16000, 50]  # conv 10@5×5, conv 20@5×5, fc 320→50
    assert [p.numel() for p in model.task_parameters("left")] == [2500, 50, 500, 10]
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("Dropout2d") == 1 and kinds.count("Dropout") == 2  # one per head
    model.eval()
    outputs, features = model(torch.zeros(5, 1, 28, 28))
    assert features.shape == (5, 50) and outputs["left"].shape == outputs["right"].shape == (5, 10)


def test_a_validation_split_is_held_out_before_pairing(tmp_path):
    """Canvas rows 0–4 hold the first digit alone and rows 28–33 the second alone, so the
    resized rows 0–3 and 22–27 name both digits of an image: every digit of a validation image
    is one of the held-out MNIST images, none a training one."""
    root = write_fake_mnist(tmp_path, n_train=40, n_test=10)
    data = multi_mnist.build(LOSSES, str(root), download=False, validation=10, validation_seed=2)
    assert len(data.train) == 30 and len(data.validation) == 10 and len(data.test) == 10
    mnist = torch.from_numpy(read_idx(root / "MNIST/raw/train-images-idx3-ubyte", 3).copy())
    kept, held = held_out(40, 10, seed=2)
    rows = (torch.arange(28) + 0.5).mul(36 / 28).floor().long()  # canvas row (and column)
    alone = (rows <= 4, (rows >= 28) & (rows < 34))  # rows with the first / the second alone
    on = (rows < 28, (rows >= 6) & (rows < 34))  # columns the first / the second covers
    offset = (0, 6)  # where each digit starts on the canvas

    def digits(split):
        pixels = (split.inputs[:, 0] * multi_mnist.STD + multi_mnist.MEAN).mul(255).round().byte()
        return [tuple(p[alone[d]][:, on[d]] for d in (0, 1)) for p in pixels]

    def strips(indices):
        return [
            tuple(mnist[i][rows[alone[d]] - offset[d]][:, rows[on[d]] - offset[d]] for d in (0, 1))
            for i in indices
        ]

    firsts, seconds = zip(*digits(data.validation), strict=True)
    for shown, side in ((firsts, 0), (seconds, 1)):
        for strip in shown:
            assert any(torch.equal(strip, s[side]) for s in strips(held.tolist()))
            assert not any(torch.equal(strip, s[side]) for s in strips(kept.tolist()))
    assert (
        data.validation.targets["left"].tolist()
        == read_idx(root / "MNIST/raw/train-labels-idx1-ubyte", 1)[held.numpy()].tolist()
    )
