"""Pictures of what a model predicts, chosen by the shape of each task's data:

- a regression task on 1-D inputs: the data, the true curve (where known), the predicted mean
  and, for a heteroscedastic head, its ±2σ band, above the predicted σ(x) against the true one;
- a heteroscedastic task: its reliability diagram (coverage of each central interval);
- an image-shaped regression task (reconstruction): a grid of inputs over their outputs;
- a segmentation task: a grid of inputs, true masks and predicted masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from mtltrain.data.base import AnySplit, Split
from mtltrain.losses import MeanLogVar, point
from mtltrain.metrics import calibration_levels, inside_counts, standardized_error
from mtltrain.models.base import MultiTaskNet, predict
from mtltrain.tasks import TaskSpec

CURVE_POINTS = 1000
CALIBRATION_POINTS = 10_000
GRID_IMAGES = 8


def _curve(task: TaskSpec, split: Split, output: torch.Tensor | MeanLogVar) -> Figure:
    x = (split.raw_inputs if split.raw_inputs is not None else split.inputs)[:, 0].cpu()
    order = x.argsort()
    x = x[order].numpy()

    def col(t: torch.Tensor) -> np.ndarray:
        return t[:, 0].cpu()[order].numpy()

    hetero = isinstance(output, MeanLogVar)
    fig = Figure(figsize=(8, 6 if hetero else 4), layout="constrained")
    axes = fig.subplots(2 if hetero else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    ax.scatter(x, col(split.targets[task.name]), s=3, alpha=0.3, color="0.5", label="data")
    if task.name in split.noise_free:
        ax.plot(x, col(split.noise_free[task.name]), color="k", lw=1.5, label="true mean")
    mean = col(point(output))
    ax.plot(x, mean, color="C0", lw=1.5, label="predicted mean")
    if hetero:
        sigma = col((0.5 * output.log_var).exp())
        ax.fill_between(x, mean - 2 * sigma, mean + 2 * sigma, color="C0", alpha=0.25,
                        label="predicted ±2σ")  # fmt: skip
        axes[1].plot(x, sigma, color="C0", label="predicted σ(x)")
        if task.name in split.noise_std:
            axes[1].plot(x, col(split.noise_std[task.name]), color="k", ls="--", label="true σ(x)")
        axes[1].set_ylabel("σ")
        axes[1].legend(loc="upper left")
    ax.set_ylabel(task.name)
    ax.legend(loc="upper left")
    axes[-1].set_xlabel("x")
    return fig


def _calibration(task: TaskSpec, output: MeanLogVar, target: torch.Tensor) -> Figure:
    """Reliability diagram: the fraction of targets inside each central interval μ ± z_p·σ
    against its nominal probability p."""
    z = standardized_error(output, target)
    levels = calibration_levels(z).cpu().numpy()
    observed = (inside_counts(z) / z.numel()).cpu().numpy()
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="k", ls="--", lw=1, label="calibrated")
    ax.plot(levels, observed, "o-", color="C0", label="predicted σ(x)")
    ax.set_xlabel("nominal probability p of the interval μ ± z_p·σ")
    ax.set_ylabel("fraction of test targets inside")
    error = float(np.abs(observed - levels).mean())
    ax.set_title(f"{task.name}: calibration error {error:.3f}")
    ax.legend(loc="upper left")
    return fig


def _grid(rows: Sequence[tuple[str, torch.Tensor]]) -> Figure:
    n = len(rows[0][1])
    fig = Figure(figsize=(1.2 * n, 1.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c].float().cpu().numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label)
    return fig


@torch.no_grad()
def render(model: MultiTaskNet, split: AnySplit, tasks: Sequence[TaskSpec]) -> dict[str, Figure]:
    """{name: figure} for every task that has a picture, drawn from the split's first samples
    (a Dataset's loaded for it); the model runs in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def head(n: int) -> Split:
        return split.head(n).map(lambda t: t.to(device))

    figures: dict[str, Figure] = {}
    grid = head(GRID_IMAGES)
    one_d = grid.inputs.dim() == 2 and grid.inputs.shape[1] == 1
    curve = head(CURVE_POINTS) if one_d else grid
    curve_out = predict(model, curve.inputs) if one_d else {}
    grid_out = predict(model, grid.inputs) if grid.inputs.dim() == 4 else {}
    for task in tasks:
        if task.kind == "regression" and one_d:
            figures[f"fit_{task.name}"] = _curve(task, curve, curve_out[task.name])
        if task.heteroscedastic:
            calibration = head(CALIBRATION_POINTS)
            output = predict(model, calibration.inputs)[task.name]
            figures[f"calibration_{task.name}"] = _calibration(
                task, output, calibration.targets[task.name]
            )
        elif task.kind == "regression" and task.name in grid_out:
            out = point(grid_out[task.name])
            figures[f"images_{task.name}"] = _grid(
                [("input", grid.inputs[:, 0]), ("output", out.reshape(len(grid), -1, 28, 28)[:, 0])]
            )
        elif task.kind == "segmentation" and task.name in grid_out:
            figures[f"images_{task.name}"] = _grid(
                [
                    ("input", grid.inputs[:, 0]),
                    ("true mask", grid.targets[task.name]),
                    ("predicted", grid_out[task.name].argmax(dim=1)),
                ]
            )
    model.train(was_training)
    return figures


def to_rgb(fig: Figure) -> np.ndarray:
    """Render a figure to an H×W×3 uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def save_png(image: np.ndarray, path: Path) -> None:
    """A rendered figure (`to_rgb`) as a PNG file, without drawing it again."""
    imsave(path, image, format="png", origin="upper")  # whatever the user's matplotlibrc says
