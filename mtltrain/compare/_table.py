"""A comparison read back and written: one row per strategy with each task's test metric, Δm%
against single-task learning with its 95% interval, its difference from the reference
strategy's (`fixed`, else `equal`) and whether Welch's t-test at 5% tells them apart, the rank
and the step time against the reference's; the Δm% plot and, for two tasks, the Pareto scatter.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mtltrain.report import SINGLE_TASK, Setting, Stat, markdown_table, read_sweep

# Student's t, 97.5% quantile, by degrees of freedom 1..30
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip
# Sener & Koltun (NeurIPS 2018), Table 2: MultiMNIST test accuracy (%), left / right digit
PUBLISHED = {
    SINGLE_TASK: (97.23, 95.90),
    "fixed": (96.46, 94.99),  # "uniform scaling"
    "uncertainty": (96.47, 95.29),  # Kendall et al.
    "gradnorm": (96.27, 94.84),
    "mgda_ub": (97.26, 95.90),
}
PUBLISHED_ON = "multi_mnist"
REFERENCES = ("fixed", "equal")  # the reference strategy: the first of these compared


def t975(dof: float) -> float:
    """Student's t 97.5% quantile at the whole degrees of freedom below `dof`, and at 30 for
    more (both conservative)."""
    return T975[min(max(1, math.floor(dof)), len(T975)) - 1]


def interval(delta: Stat, n: int) -> float | None:
    """Half-width of the 95% confidence interval of a mean over n seeds: t₀.₉₇₅(n−1)·s/√n."""
    return None if delta.std is None or n < 2 else t975(n - 1) * delta.std / math.sqrt(n)


def differs(a: Stat, n: int, b: Stat, m: int) -> bool:
    """Welch's t-test at 5%: whether the means of two sets of seeds differ."""
    if a.std is None or b.std is None or n < 2 or m < 2:
        return False
    va, vb = a.std**2 / n, b.std**2 / m
    if va + vb == 0:
        return a.mean != b.mean
    if va and vb:
        dof = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (m - 1))
    else:  # one side without spread: the other's
        dof = (n if va else m) - 1
    return abs(a.mean - b.mean) / math.sqrt(va + vb) > t975(dof)


def step_time(row: Setting) -> float:
    """Mean seconds per training step over the row's seeds."""
    return statistics.fmean(r.results["train_time_s"] / r.results["steps"] for r in row.runs)


def fmt(stat: Stat | float | None, digits: int = 4) -> str:
    """`mean ± std` with `digits` decimals; a bare number; "–" for nothing."""
    if stat is None:
        return "–"
    if isinstance(stat, Stat):
        std = "–" if stat.std is None else f"{stat.std:.{digits}f}"
        return f"{stat.mean:.{digits}f} ± {std}"
    return "–" if math.isnan(stat) else f"{stat:.{digits}f}"


def pct(stat: Stat | None) -> str:
    """An accuracy as a percentage, mean ± std."""
    if stat is None:
        return "–"
    std = "–" if stat.std is None else f"{100 * stat.std:.2f}"
    return f"{100 * stat.mean:.2f} ± {std}"


def metric_cell(stat: Stat | None, name: str) -> str:
    return pct(stat) if name.endswith("/accuracy") else fmt(stat)


def duration(seconds: float) -> str:
    """Seconds as `12 min 03 s`, `45 s`."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def pictures(dataset: str) -> tuple[str, str]:
    """The names of a comparison's plots: Δm% per strategy, and the Pareto scatter (two
    tasks)."""
    return f"{dataset}_delta_m.png", f"{dataset}_pareto.png"


class Comparison:
    """The runs under `folder` read back: the strategies' rows sorted by Δm%, the single-task
    rows, and the reference strategy's row. `single_task`: Δm% against each task trained alone,
    else against the reference strategy."""

    def __init__(
        self, folder: Path, tasks: Sequence[str], rerun: Sequence[str] = (), single_task=True
    ) -> None:
        runs = read_sweep(folder, SINGLE_TASK).finished
        # the multi-task runs' strategies: the single-task runs' weighting=fixed is none of them
        names = {r.pairs().get("weighting") for r in runs if "dataset.tasks" not in r.pairs()}
        self.reference = next((n for n in REFERENCES if n in names), None)
        self.single_task = single_task or self.reference is None
        baseline = SINGLE_TASK if self.single_task else f"weighting={self.reference}"
        self.sweep = read_sweep(folder, baseline)
        self.tasks, self.rerun = list(tasks), set(rerun)
        rows = zip(self.sweep.settings, self.sweep.deltas, strict=True)
        alone = [s for s in self.sweep.settings if "dataset.tasks" in s.pairs and len(s.main) == 1]
        self.alone = {next(iter(s.main)): s for s in alone}
        self.rows = sorted(
            ((s, d) for s, d in rows if s not in alone),
            key=lambda r: math.inf if r[1] is None else -r[1].mean,
        )
        found = ((s, d) for s, d in self.rows if s.pairs.get("weighting") == self.reference)
        self.fixed = next(found, None)  # the reference's row and Δm%

    def metric(self, task: str) -> str:
        """The task's main test metric (a placeholder where no run finished)."""
        found = (n for s in self.sweep.settings for t, n in s.main.items() if t == task)
        return next(found, f"test/{task}/(no finished run)")

    def table(self, published: bool) -> str:
        names = [self.metric(t) for t in self.tasks]
        ref = f"`{self.reference}`"
        against = "single task" if self.single_task else ref
        header = ["rank", "weighting", "seeds", *(f"{n.removeprefix('test/')}" for n in names)]
        header += [f"Δm% vs {against} (95% CI)"]
        header += [f"Δm% − {ref}'s"] if self.single_task else []
        header += [f"time per step × {self.reference}"]
        if published:
            header += ["Sener & Koltun 2018: left / right"]
        ref_time = step_time(self.fixed[0]) if self.fixed else math.nan
        lines = []
        for rank, (row, delta) in enumerate(self.rows, start=1):
            name = row.pairs["weighting"]
            lines.append(
                [str(rank), f"`{name}`", str(len(row.runs)),
                 *(metric_cell(row.stats.get(n), n) for n in names),
                 self.delta_cell(row, delta),
                 *([self.difference_cell(row, delta)] if self.single_task else []),
                 self.time_cell(row, ref_time),
                 *([self.published(name)] if published else [])]
            )  # fmt: skip
        for task, row in self.alone.items():
            cells = [metric_cell(row.stats.get(n), n) if n in row.stats else "" for n in names]
            lines.append(
                ["", f"single task: {task}", str(len(row.runs)), *cells, "0 (the baseline)", "",
                 self.time_cell(row, ref_time),
                 *([self.published(SINGLE_TASK)] if published and task == self.tasks[0] else
                   [""] if published else [])]
            )  # fmt: skip
        return markdown_table(header, lines)

    def time_cell(self, row: Setting, ref_time: float) -> str:
        """The row's step time against the reference's, ‡ where some of its jobs ran again
        later."""
        again = " ‡" if any(r.name in self.rerun for r in row.runs) else ""
        ratio = "–" if math.isnan(ref_time) else f"{step_time(row) / ref_time:.2f}"
        return ratio + again

    def delta_cell(self, row: Setting, delta: Stat | None) -> str:
        """Δm% mean [95% interval]; against the reference, † where it differs from its."""
        if delta is None:
            return "–"
        half = interval(delta, len(row.runs))
        ci = "" if half is None else f" [{delta.mean - half:+.2f}, {delta.mean + half:+.2f}]"
        return f"{delta.mean:+.2f}{ci}{'' if self.single_task else self.mark(row, delta)}"

    def difference_cell(self, row: Setting, delta: Stat | None) -> str:
        """The row's Δm% minus the reference's, † where Welch's t-test at 5% tells them apart."""
        if self.fixed is None or self.fixed[1] is None or delta is None:
            return "–"
        ref, ref_delta = self.fixed
        if row is ref:
            return "0 (the reference)"
        return f"{delta.mean - ref_delta.mean:+.2f}{self.mark(row, delta)}"

    def mark(self, row: Setting, delta: Stat) -> str:
        """A dagger where Welch's t-test at 5% tells the row's Δm% from the reference's."""
        if self.fixed is None or self.fixed[1] is None or row is self.fixed[0]:
            return ""
        ref, ref_delta = self.fixed
        return " †" if differs(delta, len(row.runs), ref_delta, len(ref.runs)) else ""

    @staticmethod
    def published(name: str) -> str:
        left_right = PUBLISHED.get(name)
        return "–" if left_right is None else f"{left_right[0]:.2f} / {left_right[1]:.2f}"

    def plot(self, folder: Path, dataset: str) -> dict[str, Path]:
        """The Δm% plot and, for two tasks, the Pareto scatter, as PNGs in `folder`."""
        tall = (7, max(3.0, 0.28 * len(self.rows) + 1))  # a row per strategy
        delta_m, pareto = pictures(dataset)
        drawn = {delta_m: (self.plot_delta_m, tall)}
        if len(self.tasks) == 2:
            drawn[pareto] = (self.plot_pareto, (7, 6))
        for name, (draw, size) in drawn.items():
            fig = Figure(figsize=size, layout="constrained")
            FigureCanvasAgg(fig)
            draw(fig.add_subplot())
            fig.savefig(folder / name, dpi=110)
        return {name: folder / name for name in drawn}

    def plot_delta_m(self, ax: Any) -> None:
        rows = [(r, d) for r, d in self.rows if d is not None][::-1]
        labels = [row.pairs["weighting"] for row, _ in rows]
        means = [d.mean for _, d in rows]
        halves = [interval(d, len(r.runs)) or 0.0 for r, d in rows]
        ax.errorbar(means, range(len(labels)), xerr=halves, fmt="o", capsize=3)
        ax.set_yticks(range(len(labels)), labels)
        if self.single_task:
            ax.axvline(0, color="grey", lw=1, label="single task")
        if self.fixed and self.fixed[1]:
            ax.axvline(self.fixed[1].mean, color="tab:red", lw=1, ls="--", label=self.reference)
        against = "single task" if self.single_task else self.reference
        ax.set_xlabel(f"Δm% vs {against} (95% CI over seeds; higher is better)")
        ax.legend(loc="lower right")

    def plot_pareto(self, ax: Any) -> None:
        x_name, y_name = (self.metric(t) for t in self.tasks)
        for row, _ in self.rows:
            if x_name not in row.stats or y_name not in row.stats:
                continue
            x, y = row.stats[x_name], row.stats[y_name]
            ax.errorbar(x.mean, y.mean, xerr=x.std or 0, yerr=y.std or 0, fmt="o", ms=4)
            ax.annotate(row.pairs["weighting"], (x.mean, y.mean), fontsize=7)
        alone_x, alone_y = (self.alone.get(t) for t in self.tasks)
        if alone_x and alone_y:
            ax.plot(alone_x.stats[x_name].mean, alone_y.stats[y_name].mean, "k*", ms=12,
                    label="single task (two models)")  # fmt: skip
            ax.legend(loc="lower right")
        ax.set_xlabel(x_name.removeprefix("test/"))
        ax.set_ylabel(y_name.removeprefix("test/"))
