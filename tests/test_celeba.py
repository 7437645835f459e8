"""dataset=celeba on tiny files of torchvision's CelebA layout, the ResNet encoder, and the mean
over tasks in results.json."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import run_cli
from PIL import Image
from torchvision.transforms.functional import to_tensor

from mtltrain.data import celeba
from mtltrain.data.base import task_specs
from mtltrain.errors import ConfigError, DataError
from mtltrain.evaluate import open_trained
from mtltrain.losses import bce
from mtltrain.models import MultiTaskModel
from mtltrain.models.base import Staged, stage_channels
from mtltrain.models.cross_stitch import CrossStitch
from mtltrain.models.mlp import MLP
from mtltrain.models.mtan import MTAN
from mtltrain.models.resnet import PointwiseStrided, ResNetEncoder
from mtltrain.outputs._results import task_means

# CelebA's 40 attributes, as list_attr_celeba.txt's header names them
NAMES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
PARTS = [0] * 8 + [1] * 4 + [2] * 6  # 8 train, 4 valid, 6 test images
# width 8: on the CPU, torch 2.14 corrupts memory in 1×1 stride-2 convolutions of fewer than 8
# channels in channels_last (trainer.channels_last, the default)
TINY = ["model.encoder.width=8", "model.encoder.blocks=[1,1]", "model.head.in_features=16"]


def write_celeba(root: Path, parts: list[int] = PARTS, seed: int = 0) -> np.ndarray:
    """Random 10×12 JPEGs and ±1 attributes in torchvision's CelebA files under `root`/celeba,
    spaced as the real files are; returns the 0/1 attributes (images × 40)."""
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    attributes = rng.integers(0, 2, (len(parts), len(NAMES)))
    files = [f"{i + 1:06d}.jpg" for i in range(len(parts))]
    for name in files:
        pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name)
    rows = [
        f"{f} " + " ".join(f"{2 * a - 1:2d}" for a in row)
        for f, row in zip(files, attributes, strict=True)
    ]
    (folder / "list_attr_celeba.txt").write_text(
        "\n".join([str(len(files)), " ".join(NAMES) + " ", *rows]) + "\n"
    )
    partition = [f"{f} {p}" for f, p in zip(files, parts, strict=True)]
    (folder / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return attributes


def test_the_official_partition_the_header_s_names_and_the_resized_images(tmp_path):
    attributes = write_celeba(tmp_path)
    data = celeba.build(root=str(tmp_path), tasks=["Smiling", "Male"], size=16)
    assert [t.name for t in data.tasks] == ["Smiling", "Male"]
    defaults = ("binary", 1, ("bce",), ("accuracy", "f1"))
    assert [(t.kind, t.out_features, t.losses, t.metrics) for t in data.tasks] == [defaults] * 2
    assert (len(data.train), len(data.validation), len(data.test)) == (8, 4, 6)
    batch = data.test.head(6)
    assert (
        batch.inputs.shape == (6, 3, 16, 16) and 0 <= batch.inputs.min() < batch.inputs.max() <= 1
    )
    smiling, male = NAMES.index("Smiling"), NAMES.index("Male")
    assert batch.targets["Smiling"].tolist() == attributes[12:, smiling].tolist()
    assert batch.targets["Male"].tolist() == attributes[12:, male].tolist()
    assert len(celeba.build(root=str(tmp_path)).tasks) == 40  # tasks=null: every attribute
    with pytest.raises(
        ConfigError, match=r"^dataset.tasks=\['Smile'\] is not allowed: .*'Smiling'"
    ):
        celeba.build(root=str(tmp_path), tasks=["Smile"])


def test_missing_files_are_one_line_saying_where_to_get_them_and_where_to_put_them(tmp_path):
    with pytest.raises(DataError) as caught:
        celeba.build(root=str(tmp_path))
    line = str(caught.value)
    assert "\n" not in line and "dataset.download=false" in line
    assert celeba.SOURCE in line and str(tmp_path / "celeba") in line
    proc = run_cli(["dataset=celeba", f"dataset.root={tmp_path}", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"mtltrain: error: {line}"]


@pytest.mark.parametrize("bad", ["000005.jpg 1 -1", "000005.jpg " + " ".join(["1"] * 39) + " 0"])
def test_a_malformed_attribute_line_is_named(tmp_path, bad):
    write_celeba(tmp_path)
    path = tmp_path / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:6], bad, *lines[7:]]) + "\n")
    with pytest.raises(DataError, match=r"list_attr_celeba.txt line 7 is not an image file and 40"):
        celeba.build(root=str(tmp_path))


def test_a_failed_download_is_the_same_one_line_with_its_reason(tmp_path, monkeypatch):
    def quota(*args, **kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently.")

    monkeypatch.setattr(torchvision.datasets.CelebA, "download", quota)
    with pytest.raises(DataError, match=r"downloading it failed \(Too many users") as caught:
        celeba.build(root=str(tmp_path), download=True)
    assert "\n" not in str(caught.value) and celeba.SOURCE in str(caught.value)


def test_a_trainer_validation_split_is_refused_the_partition_has_one(tmp_path):
    write_celeba(tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.validation=0.1 is not allowed with data"):
        celeba.build(root=str(tmp_path), validation=0.1)


def test_a_run_reports_each_attribute_s_accuracy_and_their_mean(tmp_path):
    attributes = write_celeba(tmp_path)
    tasks = ["Smiling", "Male", "Young"]
    args = [
        "dataset=celeba", f"dataset.root={tmp_path}", f"dataset.tasks=[{','.join(tasks)}]",
        "dataset.size=16", *(f"+dataset.metrics.{t}=[accuracy]" for t in tasks),
        *TINY, "weighting=equal", "trainer.epochs=1", "trainer.batch_size=4",
        "trainer.num_workers=0", "logger=[]", f"hydra.run.dir={tmp_path}/run",
    ]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    metrics = results["metrics"]
    # by hand: the trained model's logits on the test images, resized as torchvision does
    trained = open_trained(tmp_path / "run")
    folder = tmp_path / "celeba" / "img_align_celeba"
    images = [Image.open(folder / f"{i:06d}.jpg").convert("RGB") for i in range(13, 19)]
    x = torch.stack([to_tensor(image.resize((16, 16), Image.BILINEAR)) for image in images])
    with torch.no_grad():
        outputs, _ = trained.model(x)
    for task in tasks:
        truth = attributes[12:, NAMES.index(task)]
        right = ((outputs[task][:, 0] > 0).numpy() == (truth == 1)).mean()
        assert metrics[f"test/{task}/accuracy"] == pytest.approx(right)
        assert results["directions"][f"{task}/accuracy"] == 1
    mean = sum(metrics[f"test/{t}/accuracy"] for t in tasks) / 3
    assert results["task_means"]["test/accuracy"] == pytest.approx(mean)
    assert results["objective"]["name"] == "validation/Smiling/accuracy"  # the partition's


def test_task_means_by_hand():
    metrics = {"test/a/accuracy": 0.5, "test/b/accuracy": 1.0, "test/a/f1": 0.25,
               "train/a/accuracy": None, "train/b/accuracy": 0.75}  # fmt: skip
    assert task_means(metrics, ["a", "b"]) == {"test/accuracy": 0.75, "train/accuracy": None}
    assert task_means(metrics, ["a"]) == {
        "test/accuracy": 0.5,
        "test/f1": 0.25,
        "train/accuracy": None,
    }


def test_the_encoder_is_resnet18_and_its_stages_are_its_forward():
    with torch.device("meta"):  # shapes only, no memory or initialisation
        ours = ResNetEncoder(stem="imagenet").state_dict()
        resnet18 = torchvision.models.resnet18(weights=None).state_dict()
    shapes = {k: v.shape for k, v in resnet18.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == shapes
    small = ResNetEncoder(width=2, blocks=(1, 2), stem="small").eval()
    assert isinstance(small, Staged) and len(small.stages()) == 4
    x = torch.randn(2, 3, 16, 16)
    y = x
    for stage in small.stages():
        y = stage(y)
    assert y.shape == (2, 4) and torch.equal(y, small(x))
    maps = small.stages()[0](x)
    assert maps.shape == (2, 2, 16, 16)  # the small stem keeps the resolution


NARROW_CHANNELS_LAST_STEPS = """
import torch
from mtltrain.models.resnet import ResNetEncoder
torch.set_num_threads(1)  # as a run on a busy CPU: torch's kernel aborted on one thread
model = ResNetEncoder(width=4, blocks=(1, 1)).to(memory_format=torch.channels_last)
x = torch.rand(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
for _ in range(3):
    model(x).sum().backward()
"""


def test_a_narrow_encoder_trains_in_channels_last_on_the_cpu():
    """The shortcut's strided 1×1 convolution gives torch's (the same values and gradients),
    and a width-4 encoder steps in channels_last (a run's default) on one thread, where torch's
    own kernel aborted the process: in a subprocess, so that a crash fails this test only."""
    ours = PointwiseStrided(4, 8, 1, stride=2, bias=False)
    torch_s = torch.nn.Conv2d(4, 8, 1, stride=2, bias=False)
    torch_s.weight.data.copy_(ours.weight.data)
    x = torch.randn(2, 4, 7, 9)
    torch.testing.assert_close(ours(x), torch_s(x))
    proc = subprocess.run(
        [sys.executable, "-c", NARROW_CHANNELS_LAST_STEPS], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-500:]


@pytest.mark.parametrize("architecture", [MTAN, CrossStitch])
def test_the_resnet_composes_with_the_staged_architectures(architecture):
    """ResNet's last stage (average pooling, no layer that sets channels) keeps the channels of
    the stage before it, so MTAN and cross-stitch build on it and give every task an output."""
    encoder = ResNetEncoder(width=2, blocks=(1, 1))
    assert stage_channels(encoder.stages()) == [2, 2, 4, 4]
    specs = task_specs(NAMES[:2], {n: ("binary", 1) for n in NAMES}, {n: ["bce"] for n in NAMES})
    model = architecture(specs, encoder, functools.partial(MLP, in_features=4))
    outputs, _ = model(torch.randn(3, 3, 8, 8))
    assert {n: o.shape for n, o in outputs.items()} == {n: (3, 1) for n in NAMES[:2]}


def test_the_celeba_model_steps_with_40_heads():
    specs = task_specs(NAMES, {n: ("binary", 1) for n in NAMES}, {n: ["bce"] for n in NAMES})
    head = functools.partial(MLP, in_features=16)
    model = MultiTaskModel(specs, head, ResNetEncoder(width=8, blocks=(1, 1)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 2, (4, 40)).float()
    before = [p.detach().clone() for p in model.parameters()]
    outputs, features = model(x)
    assert list(outputs) == NAMES and features.shape == (4, 16)
    loss = sum(bce(outputs[n], y[:, k]) for k, n in enumerate(NAMES))
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
