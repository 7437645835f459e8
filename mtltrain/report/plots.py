"""The report's plots: learned quantities against step, and the main metrics per setting."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mtltrain.report.runs import (
    PLOTTED,
    Run,
    Scalars,
    read_learned,
)
from mtltrain.report.statistics import (
    Setting,
    ordered_union,
)

SYMBOL = {"sigma": "σ", "c": "c", "weight": "weight", "kpi": "κ̄"}


PANEL_COLUMNS = 3


MAIN_PNG = "main_metrics.png"


@dataclass(frozen=True)
class Curve:
    """A learned quantity against step: mean, min and max over seeds."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def seed_curve(series: Sequence[Mapping[int, float]]) -> Curve | None:
    """Mean, min and max over seeds at the steps every seed logged."""
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    values = np.array([[s[step] for step in steps] for s in series])
    return Curve(np.array(steps), values.mean(0), values.min(0), values.max(0))


def learned_curves(
    settings: Sequence[Setting], scalars: Mapping[Path, Scalars]
) -> dict[str, dict[str, dict[str, Curve]]]:
    """{quantity: {term: {setting label: curve}}} for the plotted learned quantities."""
    tags = ordered_union(scalars[run.path] for s in settings for run in s.runs)
    curves: dict[str, dict[str, dict[str, Curve]]] = {}
    for quantity in PLOTTED:
        for tag in (t for t in tags if t.split("/", 1)[0] == quantity):
            for setting in settings:
                series = [scalars[r.path][tag] for r in setting.runs if tag in scalars[r.path]]
                curve = seed_curve(series) if series else None
                if curve is not None:
                    term = tag.split("/", 1)[1]
                    curves.setdefault(quantity, {}).setdefault(term, {})[setting.label] = curve
    return curves


def panels(count: int) -> tuple[Figure, list[Any]]:
    """A figure with `count` panels in rows of at most PANEL_COLUMNS."""
    cols = min(count, PANEL_COLUMNS)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(4.5 * cols, 3.4 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, list(axes[:count])


def png(fig: Figure) -> bytes:
    data = io.BytesIO()
    FigureCanvasAgg(fig).print_png(data)
    return data.getvalue()


def plot_learned(
    quantity: str, per_term: Mapping[str, Mapping[str, Curve]], colors: Mapping[str, str]
) -> bytes:
    """One panel per loss term: the quantity against step, one line per setting."""
    fig, axes = panels(len(per_term))
    handles = {}
    for ax, (term, per_setting) in zip(axes, per_term.items(), strict=True):
        for label, curve in per_setting.items():
            (line,) = ax.plot(curve.steps, curve.mean, color=colors[label], lw=1.5)
            ax.fill_between(curve.steps, curve.low, curve.high, color=colors[label], alpha=0.2)
            handles[label] = line
        ax.set_title(f"{SYMBOL[quantity]} of {term}")
        ax.set_xlabel("step")
        ax.set_ylabel(SYMBOL[quantity])
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               title="setting (mean over seeds, min–max shaded)")  # fmt: skip
    return png(fig)


def plot_main_metrics(settings: Sequence[Setting], colors: Mapping[str, str]) -> bytes:
    """One panel per task main metric: mean per setting with ±std error bars."""
    metrics = ordered_union(s.main.values() for s in settings)
    fig, axes = panels(len(metrics))
    for ax, name in zip(axes, metrics, strict=True):
        shown = [s for s in settings if name in s.stats]
        for x, setting in enumerate(shown):
            stat = setting.stats[name]
            ax.errorbar(x, stat.mean, yerr=stat.std or 0.0, fmt="o", capsize=4,
                        color=colors[setting.label])  # fmt: skip
        ax.set_xticks(range(len(shown)), [s.label.replace(", ", "\n") for s in shown])
        ax.margins(x=0.3)
        direction = {1: "higher is better", -1: "lower is better"}.get(
            shown[0].direction(name) if shown else None, "no direction"
        )
        ax.set_title(f"{name} ({direction})")
    fig.suptitle("mean ± std over seeds")
    return png(fig)


def plots(settings: Sequence[Setting], runs: Sequence[Run]) -> tuple[dict[str, bytes], list[str]]:
    """{file name: PNG}, and a notice for each run without learned quantities to plot."""
    colors = {s.label: f"C{i % 10}" for i, s in enumerate(settings)}
    scalars = {run.path: read_learned(run) for run in runs}
    pictures = {
        f"learned_{quantity}.png": plot_learned(quantity, per_term, colors)
        for quantity, per_term in learned_curves(settings, scalars).items()
    }
    if any(s.main for s in settings):
        pictures[MAIN_PNG] = plot_main_metrics(settings, colors)
    unplotted = [
        f"no learned quantities in {r.name}/tb: not plotted" for r in runs if not scalars[r.path]
    ]
    return pictures, unplotted
