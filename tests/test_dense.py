"""Dense prediction: the masked losses and the semantic, depth and normal metrics against hand
computations; SegNet's stages; NYUv2 and Cityscapes from tiny files of MTAN's layout, through
the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli

from mtltrain.data import nyuv2
from mtltrain.data.base import Split
from mtltrain.data.nyuv2 import scale_crop_flip
from mtltrain.errors import DataError
from mtltrain.losses import masked_cosine, masked_cross_entropy, masked_l1
from mtltrain.metrics import (
    DepthScorer,
    NormalScorer,
    SemanticScorer,
    TaskMetrics,
    median_angle,
    metric_directions,
)
from mtltrain.models.segnet import DenseHead, SegNet
from mtltrain.tasks import TaskSpec
from mtltrain.weighting.dtp import kpi

H, W = 16, 24  # the tiny images' size: divisible by 2^2 for a two-level SegNet


def test_masked_cross_entropy_leaves_out_label_minus_one_by_hand():
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]], requires_grad=True)
    target = torch.tensor([[[0, 1, -1]]])
    loss = masked_cross_entropy(logits, target)
    # pixel 0: −log(e²/(e² + 1)); pixel 1: −log(e/(1 + e)); pixel 2 ignored
    first, second = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    loss.backward()
    # ∂/∂f = (softmax − onehot)/2 for the two counted pixels, 0 for the ignored one
    p0 = 1 / (1 + math.exp(-2))
    assert logits.grad[0, 0, 0, 0].item() == pytest.approx((p0 - 1) / 2, rel=1e-5)
    assert logits.grad[0, :, 0, 2].abs().sum().item() == 0


def test_masked_l1_averages_over_pixels_of_nonzero_depth_with_its_gradient():
    pred = torch.tensor([[[[1.0, 2.0, 7.0, 0.5]]]], requires_grad=True)
    target = torch.tensor([[[[2.0, 0.0, 4.0, 1.0]]]])  # pixel 1 has no depth
    loss = masked_l1(pred, target)
    assert loss.item() == pytest.approx((1 + 3 + 0.5) / 3)
    loss.backward()
    assert pred.grad.flatten().tolist() == pytest.approx([-1 / 3, 0, 1 / 3, -1 / 3])
    assert masked_l1(pred, torch.zeros_like(target)).item() == 0  # no valid pixel: 0, not NaN


def test_masked_cosine_is_one_minus_cosine_over_pixels_with_a_normal():
    pred = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 4.0]]]])
    pred.requires_grad_(True)
    target = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]])
    # pixel 0: cos 1 → 0; pixel 1: cos 0 → 1; pixel 2: target 0 → left out
    loss = masked_cosine(pred, target)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    # pixel 1: ∂(1 − cos)/∂ŷ = −(y − cos·ŷ/|ŷ|)/|ŷ| /2 = −y/2 with ŷ = (0, 1, 0), y = (0, 0, 1)
    assert pred.grad[0, :, 0, 1].tolist() == pytest.approx([0, 0, -0.5])
    assert pred.grad[0, :, 0, 2].abs().sum().item() == 0


def test_semantic_scorer_miou_over_present_classes_and_pixel_accuracy_by_hand():
    # three classes; class 2 never true nor predicted, so mIoU averages classes 0 and 1
    pred = torch.tensor([[0, 0, 1, 1, 0, 1]])
    target = torch.tensor([[0, 1, 1, 1, -1, -1]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float()[..., None]
    scorer = SemanticScorer(3)
    half = [scorer.batch_sums(logits[..., :3, :], target[:, :3, None], None),
            scorer.batch_sums(logits[..., 3:, :], target[:, 3:, None], None)]  # fmt: skip
    out = scorer.finish(half[0] + half[1], 0)  # sums over the split, batch by batch
    # labelled: (t0 p0) (t1 p0) (t1 p1) (t1 p1): IoU0 = 1/2, IoU1 = 2/3; accuracy 3/4
    assert out["miou"].item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["pixel_accuracy"].item() == pytest.approx(3 / 4)


def test_depth_scorer_abs_and_rel_error_per_valid_pixel_over_the_split():
    scorer = DepthScorer()
    a = scorer.batch_sums(torch.tensor([[[[1.0, 5.0]]]]), torch.tensor([[[[2.0, 0.0]]]]), None)
    b = scorer.batch_sums(torch.tensor([[[[3.0, 1.0]]]]), torch.tensor([[[[4.0, 2.0]]]]), None)
    out = scorer.finish(a + b, 0)
    # valid pixels: |1−2|, |3−4|, |1−2| → abs 1; rel (1/2 + 1/4 + 1/2)/3
    assert out["abs_error"].item() == pytest.approx(1.0)
    assert out["rel_error"].item() == pytest.approx((0.5 + 0.25 + 0.5) / 3)


def normals_example():
    """Predicted and true normals of five pixels, the true angles 0°, 10°, 20°, 45°, 90°, and
    one pixel without a normal."""
    angles = [0.0, 10.0, 20.0, 45.0, 90.0]
    pred = [[math.cos(math.radians(a)), math.sin(math.radians(a)), 0.0] for a in angles]
    target = [[1.0, 0.0, 0.0]] * 5
    pred, target = [*pred, [1.0, 0.0, 0.0]], [*target, [0.0, 0.0, 0.0]]
    as_map = lambda v: torch.tensor(v).T.reshape(1, 3, 1, 6)  # noqa: E731
    return as_map(pred), as_map(target)


def test_normal_scorer_mean_angle_and_shares_within_thresholds_by_hand():
    pred, target = normals_example()
    scorer = NormalScorer()
    out = scorer.finish(scorer.batch_sums(pred, target, None), 0)
    assert out["mean_angle"].item() == pytest.approx((0 + 10 + 20 + 45 + 90) / 5, abs=1e-3)
    assert out["within_11_25"].item() == pytest.approx(2 / 5)
    assert out["within_22_5"].item() == pytest.approx(3 / 5)
    assert out["within_30"].item() == pytest.approx(3 / 5)


def test_median_angle_is_exact_over_the_split_as_numpys_median():
    pred, target = normals_example()
    metric = median_angle()
    metric.update(pred[..., :3], target[..., :3])  # 0°, 10°, 20°
    assert metric.compute().item() == pytest.approx(10.0, abs=1e-3)
    metric.update(pred[..., 3:], target[..., 3:])  # 45°, 90°, none: five angles in all
    assert metric.compute().item() == pytest.approx(20.0, abs=1e-3)
    metric.update(pred[..., 4:5], target[..., 4:5])  # 90° again: six, the middle two averaged
    assert metric.compute().item() == pytest.approx(np.median([0, 10, 20, 45, 90, 90]), abs=1e-3)
    assert metric.higher_is_better is False


def test_dense_kinds_report_their_metrics_with_directions_through_task_metrics():
    tasks = [TaskSpec("s", "semantic", 3, ("masked_cross_entropy",)),
             TaskSpec("d", "depth", 1, ("masked_l1",)),
             TaskSpec("n", "normals", 3, ("masked_cosine",))]  # fmt: skip
    directions = metric_directions(tasks)
    assert directions == {
        "s/miou": 1, "s/pixel_accuracy": 1, "d/abs_error": -1, "d/rel_error": -1,
        "n/mean_angle": -1, "n/within_11_25": 1, "n/within_22_5": 1, "n/within_30": 1,
        "n/median_angle": -1,
    }  # fmt: skip
    pred, target = normals_example()
    batch = Split(torch.zeros(1, 3, 1, 6), {"s": torch.zeros(1, 1, 6, dtype=torch.long),
                                           "d": target[:, :1], "n": target})  # fmt: skip
    metrics = TaskMetrics(tasks)
    metrics.update({"s": torch.zeros(1, 3, 1, 6), "d": target[:, :1], "n": pred}, batch)
    got = metrics.compute()
    assert got["s/miou"] == 1 and got["d/abs_error"] == 0
    assert got["n/median_angle"] == pytest.approx(20.0, abs=1e-3)


def test_segnet_stages_in_order_are_its_forward_and_keep_the_resolution():
    torch.manual_seed(0)
    net = SegNet(widths=[4, 8], in_channels=3).eval()
    x = torch.randn(2, 3, H, W)
    z = x
    for stage in net.stages():
        z = stage(z)
    assert torch.equal(z, net(x)) and z.shape == (2, 4, H, W)
    assert len(net.stages()) == 4
    # MTAN's conv layers per level: 2, 2, 3, 3, 3 in the encoder and the decoder
    full = SegNet(widths=[1] * 5)  # MTAN's depth, narrow
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in s.modules()) for s in full.stages()]
    assert convs == [2, 2, 3, 3, 3, 3, 3, 3, 2, 2]
    unit = DenseHead(4, 3, unit=True)(z)
    assert torch.allclose(unit.norm(dim=1), torch.ones(2, H, W), atol=1e-5)


def test_scale_crop_flip_rescales_depth_and_flips_normals_x():
    image = torch.rand(3, H, W)
    depth = torch.full((1, H, W), 3.0)
    normals = torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, H, W).clone()
    seen_scales, flipped = set(), set()
    for seed in range(30):
        torch.manual_seed(seed)
        labels = torch.ones(H, W, dtype=torch.long)
        out_image, out = scale_crop_flip(
            image, {"semantic": labels, "depth": depth, "normals": normals}
        )
        assert out_image.shape == image.shape and out["semantic"].dtype == torch.long
        seen_scales.add(round(3.0 / out["depth"][0, 0, 0].item(), 3))
        flipped.add(out["normals"][0, 0, 0].item())
    assert seen_scales == {1.0, 1.2, 1.5} and flipped == {1.0, -1.0}


def write_split(folder, n, label_dir, classes, normals=True):
    """`n` items of MTAN's layout in `folder`: image/ H×W×3, <label_dir>/ H×W (float, −1 in
    a corner), depth/ H×W×1 (0 in a corner), normal/ H×W×3 (unit vectors)."""
    rng = np.random.default_rng(0)
    subs = ["image", label_dir, "depth"] + (["normal"] if normals else [])
    for sub in subs:
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        label = rng.integers(0, classes, (H, W)).astype(np.float32)
        label[0, :4] = -1
        depth = rng.uniform(0.5, 5, (H, W, 1)).astype(np.float32)
        depth[-1, -4:] = 0
        np.save(folder / "image" / f"{i}.npy", rng.random((H, W, 3), dtype=np.float32))
        np.save(folder / label_dir / f"{i}.npy", label)
        np.save(folder / "depth" / f"{i}.npy", depth)
        if normals:
            normal = rng.normal(size=(H, W, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            np.save(folder / "normal" / f"{i}.npy", normal)


TINY_RUN = ["trainer.epochs=1", "trainer.batch_size=2", "trainer.num_workers=0",
            "model.encoder.widths=[4,8]", "weighting=equal", "logger=[]"]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "label_dir", "classes", "metrics"),
    [
        ("nyuv2", "label", 13, ["semantic/miou", "depth/rel_error", "normals/median_angle"]),
        ("cityscapes", "label_7", 7, ["semantic/pixel_accuracy", "depth/abs_error"]),
    ],
)
def test_a_short_run_on_tiny_files_of_mtans_layout(tmp_path, name, label_dir, classes, metrics):
    root = tmp_path / name
    write_split(root / "train", 5, label_dir, classes, normals=name == "nyuv2")
    write_split(root / "val", 2, label_dir, classes, normals=name == "nyuv2")
    args = [f"dataset={name}", f"dataset.root={root}", *TINY_RUN, "trainer.validation=1",
            f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["steps"] == 2  # 4 of the 5 training images, in batches of 2
    for metric in metrics:
        for split in ("validation", "test"):
            assert math.isfinite(results["metrics"][f"{split}/{metric}"])


def test_the_held_out_images_are_not_augmented(tmp_path):
    write_split(tmp_path / "train", 3, "label", 13)
    write_split(tmp_path / "val", 1, "label", 13)
    losses = {"semantic": ["masked_cross_entropy"], "depth": ["masked_l1"]}
    data = nyuv2.build(losses, str(tmp_path), ["semantic", "depth"], validation=2)
    assert len(data.train) == 1 and len(data.validation) == 2
    for index in data.validation.dataset.indices:
        image = np.load(tmp_path / "train/image" / f"{index}.npy")
        depth = np.load(tmp_path / "train/depth" / f"{index}.npy")
        for _ in range(3):
            x, targets = data.validation.dataset.dataset[index]
            assert np.array_equal(x.permute(1, 2, 0).numpy(), image)
            assert np.array_equal(targets["depth"].permute(1, 2, 0).numpy(), depth)


def test_missing_files_stop_in_one_line_saying_where_to_get_and_put_them(tmp_path):
    proc = run_cli(["dataset=nyuv2", f"dataset.root={tmp_path}/none", *TINY_RUN], tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lorenmt/mtan" in lines[0] and "dataset.root" in lines[0]
    assert "Traceback" not in proc.stderr


def test_a_missing_or_broken_item_file_stops_in_one_line_naming_it(tmp_path):
    write_split(tmp_path / "train", 3, "label", 13)
    write_split(tmp_path / "val", 1, "label", 13)
    (tmp_path / "train/depth/1.npy").unlink()
    (tmp_path / "train/label/2.npy").write_text("not an array")
    losses = {"semantic": ["masked_cross_entropy"], "depth": ["masked_l1"]}
    train = nyuv2.build(losses, str(tmp_path), ["semantic", "depth"], augment=False).train
    for index, sub in ((1, "depth"), (2, "label")):
        with pytest.raises(DataError, match=rf"{sub}/{index}\.npy cannot be read") as e:
            train.dataset[index]
        assert "\n" not in str(e.value)


def test_dtp_reads_the_dense_kinds_kpis_in_zero_one():
    pred, target = normals_example()
    # normals: 1 − mean angle/180° = 1 − 33°/180°
    assert kpi("normals", pred, target, 1.0).item() == pytest.approx(1 - 33 / 180, abs=1e-5)
    depth = torch.tensor([[[[1.0, 5.0]]]]), torch.tensor([[[[2.0, 0.0]]]])
    assert kpi("depth", *depth, 2.0).item() == pytest.approx(math.exp(-1 / 2))  # exp(−abs/scale)
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # predicts 0, 1; labels 0, 0
    assert kpi("semantic", logits, torch.tensor([[[0, 0]]]), 1.0).item() == pytest.approx(0.25)
