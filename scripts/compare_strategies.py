"""Compare every weighting strategy the way the field does: several seeds, Δm% against
single-task learning, selection on a validation split, test metrics of the selected model.

    python scripts/compare_strategies.py --quick   # MultiMNIST, 5 epochs: < 1 hour on 2 cores
    python scripts/compare_strategies.py           # the paper's 100 epochs: a GPU or a cluster
    python scripts/compare_strategies.py --dataset qm9 --quick   # QM9_QUICK's subset, 2 cores

Two Hydra multiruns into --runs (so `hydra/launcher=...` given with --override runs them in
parallel): every strategy (conf/weighting/) × seeds on the data set, and each task alone
(dataset.tasks=[<task>], weighting=fixed, the same architecture) × seeds. Then
runs/…/<dataset>_strategies.md and docs/results/ get one row per strategy: each task's test
metric (mean ± std over seeds), Δm% against single-task learning with its 95% confidence
interval (Student's t over seeds), † where that Δm% differs from `fixed`'s (Welch's t-test,
5%), the rank by Δm%, the step time against `fixed` in the same sweep, and for MultiMNIST the
accuracies Sener & Koltun (2018) published beside ours; and two plots: Δm% per strategy with
its interval, and the per-task Pareto scatter.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import repro_common as rc
import update_readme
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mtltrain.config._compose import compose_checked, config_dir
from mtltrain.outputs import _run_folder as rundir
from mtltrain.report import SINGLE_TASK, Setting, Stat, read_sweep, write_report

QUICK_EPOCHS = 5
# QM9 on two CPU cores: 2,000 training and 1,000 test molecules (no validation split), a
# 16-wide network (edge network 32) and 3 epochs of batch 120, evaluated at the end only
QM9_QUICK = ["dataset.n_train=2000", "dataset.n_val=0", "dataset.n_test=1000",
             "model.encoder.dim=16", "model.encoder.edge_hidden=32",
             "trainer.lr_scheduler=null"]  # fmt: skip
QM9_QUICK_EPOCHS = 3
PAPER_EPOCHS = {"multi_mnist": 100, "qm9": 300}
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


def strategies(chosen: str | None) -> list[str]:
    every = sorted(p.stem for p in (config_dir() / "weighting").glob("*.yaml"))
    names = every if chosen is None else chosen.split(",")
    unknown = [n for n in names if n not in every]
    if unknown or "fixed" not in names:
        sys.exit(f"--strategies {chosen!r}: give names among {every}, fixed among them")
    return names


def t975(dof: float) -> float:
    """Student's t 97.5% quantile at the whole degrees of freedom below `dof`, and at 30 for
    more (both conservative)."""
    return T975[min(max(1, math.floor(dof)), len(T975)) - 1]


def interval(delta: Stat, n: int) -> float | None:
    """Half-width of the 95% confidence interval of a mean over n seeds."""
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


def ratio(time: float, fixed: float) -> str:
    return "–" if math.isnan(fixed) else f"{time / fixed:.2f}"


def pct(stat: Stat | None) -> str:
    """An accuracy as a percentage, mean ± std."""
    if stat is None:
        return "–"
    std = "–" if stat.std is None else f"{100 * stat.std:.2f}"
    return f"{100 * stat.mean:.2f} ± {std}"


def metric_cell(stat: Stat | None, name: str) -> str:
    return pct(stat) if name.endswith("/accuracy") else rc.fmt(stat)


class Comparison:
    """The sweep read back: the strategies' rows, the single-task rows and the Δm%."""

    def __init__(self, folder: Path, tasks: Sequence[str], rerun: Sequence[str] = ()) -> None:
        self.sweep = read_sweep(folder, SINGLE_TASK)
        self.tasks, self.rerun = list(tasks), set(rerun)
        rows = zip(self.sweep.settings, self.sweep.deltas, strict=True)
        self.alone = {next(iter(s.main)): s for s in self.sweep.settings if len(s.main) == 1}
        self.rows = sorted(
            ((s, d) for s, d in rows if len(s.main) > 1),
            key=lambda r: math.inf if r[1] is None else -r[1].mean,
        )
        self.fixed = next(
            ((s, d) for s, d in self.rows if s.pairs.get("weighting") == "fixed"), None
        )

    def metric(self, task: str) -> str:
        """The task's main test metric (a placeholder where no run finished)."""
        found = (n for s in self.sweep.settings for t, n in s.main.items() if t == task)
        return next(found, f"test/{task}/(no finished run)")

    def table(self, published: bool) -> str:
        names = [self.metric(t) for t in self.tasks]
        header = ["rank", "weighting", "seeds", *(f"{n.removeprefix('test/')}" for n in names)]
        header += ["Δm% vs single task (95% CI)", "time per step × fixed"]
        if published:
            header += ["Sener & Koltun 2018: left / right"]
        fixed_time = step_time(self.fixed[0]) if self.fixed else math.nan
        lines = []
        for rank, (row, delta) in enumerate(self.rows, start=1):
            name = row.pairs["weighting"]
            lines.append(
                [str(rank), f"`{name}`", str(len(row.runs)),
                 *(metric_cell(row.stats.get(n), n) for n in names),
                 self.delta_cell(row, delta), self.time_cell(row, fixed_time),
                 *([self.published(name)] if published else [])]
            )  # fmt: skip
        for task, row in self.alone.items():
            cells = [metric_cell(row.stats.get(n), n) if n in row.stats else "" for n in names]
            lines.append(
                ["", f"single task: {task}", str(len(row.runs)), *cells, "0 (the baseline)",
                 self.time_cell(row, fixed_time),
                 *([self.published(SINGLE_TASK)] if published and task == self.tasks[0] else
                   [""] if published else [])]
            )  # fmt: skip
        return rc.markdown_table(header, lines)

    def time_cell(self, row: Setting, fixed_time: float) -> str:
        """The row's step time against `fixed`'s, ‡ where some of its jobs ran at another time."""
        again = " ‡" if any(r.name in self.rerun for r in row.runs) else ""
        return ratio(step_time(row), fixed_time) + again

    def delta_cell(self, row: Setting, delta: Stat | None) -> str:
        if delta is None:
            return "–"
        half = interval(delta, len(row.runs))
        ci = "" if half is None else f" [{delta.mean - half:+.2f}, {delta.mean + half:+.2f}]"
        mark = ""
        if self.fixed and self.fixed[1] and row is not self.fixed[0]:
            fixed, fixed_delta = self.fixed
            mark = " †" if differs(delta, len(row.runs), fixed_delta, len(fixed.runs)) else ""
        return f"{delta.mean:+.2f}{ci}{mark}"

    @staticmethod
    def published(name: str) -> str:
        left_right = PUBLISHED.get(name)
        return "–" if left_right is None else f"{left_right[0]:.2f} / {left_right[1]:.2f}"

    def plot(self, folder: Path, dataset: str) -> dict[str, Path]:
        """The Δm% plot and, for two tasks, the Pareto scatter, as PNGs in `folder`."""
        tall = (7, max(3.0, 0.28 * len(self.rows) + 1))  # a row per strategy
        pictures = {f"{dataset}_delta_m.png": (self.plot_delta_m, tall)}
        if len(self.tasks) == 2:
            pictures[f"{dataset}_pareto.png"] = (self.plot_pareto, (7, 6))
        for name, (draw, size) in pictures.items():
            fig = Figure(figsize=size, layout="constrained")
            FigureCanvasAgg(fig)
            draw(fig.add_subplot())
            fig.savefig(folder / name, dpi=110)
        return {name: folder / name for name in pictures}

    def plot_delta_m(self, ax) -> None:
        rows = [(r, d) for r, d in self.rows if d is not None][::-1]
        labels = [row.pairs["weighting"] for row, _ in rows]
        means = [d.mean for _, d in rows]
        halves = [interval(d, len(r.runs)) or 0.0 for r, d in rows]
        ax.errorbar(means, range(len(labels)), xerr=halves, fmt="o", capsize=3)
        ax.set_yticks(range(len(labels)), labels)
        ax.axvline(0, color="grey", lw=1, label="single task")
        if self.fixed and self.fixed[1]:
            ax.axvline(self.fixed[1].mean, color="tab:red", lw=1, ls="--", label="fixed")
        ax.set_xlabel("Δm% vs single task (95% CI over seeds; higher is better)")
        ax.legend(loc="lower right")

    def plot_pareto(self, ax) -> None:
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


def overrides(args: argparse.Namespace) -> list[str]:
    # one objective selects a run's best epoch: on one task's metric it would favour that
    # task in the multi-task runs only, so both sweeps report their last epoch
    common = [f"dataset={args.dataset}", rc.seeds(args), "trainer.select=last", *args.override]
    dataset = compose_checked([f"dataset={args.dataset}"]).dataset
    if "download" in dataset:  # MNIST's: where it is, no download (QM9's root is its cache)
        common += [f"dataset.root={args.mnist_root}", "dataset.download=false"]
    if args.dataset == "qm9" and args.quick:
        epochs = args.epochs or QM9_QUICK_EPOCHS
        return [*common, *QM9_QUICK, f"trainer.epochs={epochs}", f"trainer.eval_every={epochs}"]
    if args.quick or args.epochs:
        common += [f"trainer.epochs={args.epochs or QUICK_EPOCHS}", "trainer.eval_every=1"]
    return common


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="multi_mnist", help="default: %(default)s")
    p.add_argument("--seeds", type=int, default=3, help="default: %(default)s")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs, not the paper's")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the trainer config's)")
    p.add_argument("--strategies", help="comma-separated weighting configs (default: all)")
    p.add_argument("--runs", type=Path, help="default: runs/compare_<dataset>")
    p.add_argument("--mnist-root", default=rc.MNIST_ROOT, help="default: %(default)s")
    p.add_argument("--threads", type=int, help="intra-op threads per run (default: torch's)")
    p.add_argument("--no-docs", action="store_true", help="write nothing into docs/results/")
    p.add_argument("--tables-only", action="store_true", help="reuse the sweeps in --runs")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweeps in --runs: finished jobs kept, failed ones (moved "
                   "to <runs>.failed_before_resume/) and missing ones run")  # fmt: skip
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="one more mtltrain override for every run (repeatable)")  # fmt: skip
    return p.parse_args(argv)


def sweep_all(args: argparse.Namespace, folder: Path, tasks: Sequence[str]) -> dict:
    """Both multiruns; what their sweep.json files record, summed (with --resume, added to
    what the first runs of the sweeps recorded)."""
    common = overrides(args)
    multi = ["weighting=" + ",".join(strategies(args.strategies)), *common]
    alone = ["weighting=fixed", "dataset.tasks=" + ",".join(f"[{t}]" for t in tasks), *common]
    before = json.loads((folder / rc.SWEEP_FILE).read_text()) if args.resume else None
    if args.resume:
        set_failed_aside(folder)
    again = ["resume_sweep=true"] if args.resume else []
    records = [
        rc.run_sweep([*multi, *again], folder / "multi_task", args.threads, check=False),
        rc.run_sweep([*alone, *again], folder / "single_task", args.threads, check=False),
    ]
    record = {**records[0], "wall_s": sum(r["wall_s"] for r in records)}
    if before is not None:
        resumed = {"command": record["command"], "wall_s": record["wall_s"]}
        record = {**before, "wall_s": before["wall_s"] + record["wall_s"], "resumed": resumed}
    (folder / rc.SWEEP_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def set_failed_aside(folder: Path) -> None:
    """Move the sweeps' failed job folders out of `folder`, into `set_aside(folder)`, so that
    resume_sweep runs those jobs again from the start and their errors are kept."""
    for job in rundir.jobs_in(folder):
        if rundir.status(job) == "failed":
            target = set_aside(folder) / job.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            job.rename(target)


def run_again(folder: Path) -> list[str]:
    """The jobs of the sweeps that failed and ran again (their first folders set aside)."""
    aside = set_aside(folder)
    return [str(job.relative_to(aside)) for job in rundir.jobs_in(aside)]


def set_aside(folder: Path) -> Path:
    """Where a resumed comparison keeps the folders of the jobs that failed before."""
    return folder.with_name(f"{folder.name}.failed_before_resume")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    folder: Path = args.runs or Path("runs") / f"compare_{args.dataset}"
    tasks = list(compose_checked([f"dataset={args.dataset}"]).dataset.tasks)
    if args.tables_only:
        record = json.loads((folder / rc.SWEEP_FILE).read_text())
    elif args.resume:
        record = sweep_all(args, folder, tasks)
    else:
        if folder.exists() and any(folder.iterdir()):
            sys.exit(f"{folder} is not empty: remove it, pass another --runs, or --tables-only")
        record = sweep_all(args, folder, tasks)
    comparison = Comparison(folder, tasks, run_again(folder))
    write_report(comparison.sweep, folder, SINGLE_TASK)  # what mtltrain-report writes
    name = f"{args.dataset}_strategies"
    pictures = comparison.plot(folder, args.dataset)
    text = document(comparison, args, record, pictures)
    (folder / f"{name}.md").write_text(text)
    if not args.no_docs:
        rc.DOCS.mkdir(parents=True, exist_ok=True)
        (rc.DOCS / f"{name}.md").write_text(text)
        for picture, path in pictures.items():
            (rc.DOCS / picture).write_bytes(path.read_bytes())
        update_readme.update()
    print(text)


def document(comparison: Comparison, args: argparse.Namespace, record: dict, pictures) -> str:
    """The Markdown of the comparison; the protocol as the sweeps ran it (`record`)."""
    settings = [o for o in record["overrides"] if not o.startswith(("seed=", "weighting="))]
    seeds = len(next(o for o in record["overrides"] if o.startswith("seed=")).split(","))
    cfg = compose_checked(settings)
    epochs = cfg.trainer.epochs
    subset = [o for o in settings if o.startswith(("dataset.n_", "model."))]
    protocol = (
        f"**Protocol: {epochs} epoch{'s' if epochs != 1 else ''}**"
        + (f" on {', '.join(f'`{o}`' for o in subset)}" if subset else "")
        + " (`--quick` or `--epochs`: a check that runs on two CPU cores, not the paper's "
        f"{PAPER_EPOCHS.get(args.dataset, 'full')} epochs; strategies that need longer to "
        "separate may not)"
        if any(o.startswith("trainer.epochs=") for o in settings)
        else f"**Protocol: {epochs} epochs**, the trainer config's"
    )
    held = (
        f", with {cfg.trainer.validation} of the training set held out for validation (its "
        "metrics are in each run's results.json)"
        if cfg.trainer.validation
        else ""
    )
    selection = (
        f"the {cfg.trainer.select} evaluation{held}. Selecting each run's best epoch by one "
        "validation objective would favour the objective's task in the multi-task runs "
        "only, so both sweeps report their last epoch"
    )
    published = args.dataset == "multi_mnist"
    parts = [
        f"# Every strategy on {args.dataset}, {seeds} seeds, against single-task learning",
        f"{protocol}; the reported model is {selection}; test metrics of that model. Rows are "
        "sorted by Δm%; † marks a Δm% that differs from `fixed`'s at 5% (Welch's t-test over "
        "seeds; one test per row, uncorrected for their number): without †, the data do not "
        "tell the strategy from equal weights.",
        comparison.table(published),
        "Δm% = (100/K)·Σ_k d_k·(M_k − M_single,k)/|M_single,k| over the tasks' main test "
        "metrics (d_k = +1 where higher is better, −1 where lower is), M_single,k the mean over "
        "seeds of task k trained alone with the same architecture; its interval is Student's t "
        "over the row's seeds (the single-task means taken as exact). Time per step: the "
        "training wall time (evaluations and checkpoints included) per step, against "
        "`fixed`'s in the same sweep"
        + (
            "; ‡: some of the row's jobs failed and ran again later, on a machine loaded "
            "otherwise, so its time is not comparable."
            if record.get("resumed")
            else "."
        ),
    ]
    if published:
        parts.append(
            "Sener & Koltun's numbers are one run each, 100 epochs on all 60,000 training images, "
            "on pairs drawn without a seed, MultiLeNet with their dropout (one channel mask per "
            "batch in the encoder, none rescaled); ours are seeded pairs, standard dropout, 10% "
            "held out and the epochs above: compare orderings, not digits. Nothing here was "
            "tuned to their numbers."
        )
    parts += [f"![{name}]({name})" for name in pictures]
    failed = [r for r in comparison.sweep.runs if not r.finished]
    if failed:
        parts.append(
            "Runs that did not finish: "
            + ", ".join(
                f"`{r.name}` ({unplaced(r.results.get('error', r.status))})" for r in failed
            )
        )
    resumed = record.get("resumed")
    again = (
        f" (jobs that failed were run again: `{resumed['command']}`, "
        f"{rc.duration(resumed['wall_s'])} of the wall time)"
        if resumed
        else ""
    )
    parts.append(
        f"Machine: {record['machine']}.  \nWall time: {rc.duration(record['wall_s'])} for "
        f"{len(comparison.sweep.finished)} runs; finished {record['finished']}.  \n"
        f"Reproduce: `{record['command']}`{again}"
    )
    return "\n\n".join(parts) + "\n"


def unplaced(text: str) -> str:
    """`text` with this machine's working directory left out of the paths in it."""
    return text.replace(f"{Path.cwd()}/", "")


if __name__ == "__main__":
    main()
