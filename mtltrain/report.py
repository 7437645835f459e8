"""mtltrain-report: compare the runs under a run or multirun folder.

Reads what the runs wrote (results.json and the TensorBoard event files under tb/) and writes,
into the folder or into --out DIR: report.md (its table is also printed to stdout), report.csv,
learned_<quantity>.png and main_metrics.png. It writes no other file.

Runs
  Every folder under FOLDER (FOLDER itself included) that holds results.json or .hydra/ is a
  run; hidden folders and the folders inside a run are not searched. A run without
  results.json, or whose status is not "completed", is listed under "Runs that did not finish"
  (with its status and error) in report.md and on stderr, and is left out of the statistics.

Settings (rows)
  A run's setting is its overrides, spelled as given, minus seed=... and minus those that are
  the same in every finished run: "key=value, key=value", or "(all runs)" when that leaves
  nothing (with several rows, "(defaults)" names the row without any of the differing
  overrides). Rows are in run order (job number).

Table
  setting; seeds (the number of runs); every test metric; every learned quantity
  <quantity>/<term> but log_var (the same as sigma), each learned sigma/<term> followed by
  true_sigma/<term> where the data set knows the noise; all as mean ± sample standard deviation
  (n − 1) over seeds, the deviation to 2 significant digits and the mean to the same decimal
  place ("–" for one seed, then 4 significant digits); Δm%. report.csv has every metric (test
  and train) and every quantity as <name>_mean and <name>_std (empty for one seed) at full
  precision, with n, delta_m_pct and delta_m_pct_std.

Δm%
  Δm% = (100/K)·Σ_k d_k·(M_k − M_b,k)/|M_b,k| over the K tasks' main test metrics (a task's
  first test metric), d_k = +1 where higher is better and −1 where lower is better: positive
  Δm% is better than the baseline. M_b,k are the baseline's means over its seeds, M_k each seed's
  run of the row: the table shows their mean (the Δm% of the row's means) ± std over seeds.
  |M_b,k| is M_b,k for every positive metric and keeps that sign convention for a negative NLL.
  A row's baseline is the setting that has the --baseline overrides and agrees with the row on
  every other override, so each setting is compared with the baseline on the same other
  settings; the baseline row itself gets 0 ± its own spread. --baseline single_task takes
  M_b,k from the setting that trains task k alone (dataset.tasks=[k]) and agrees with the row
  on every override but weighting... and dataset.tasks, as the field measures Δm% against
  single-task learning. Blank: no such setting, different tasks, a main metric without a
  direction or a baseline of 0.

Plots
  learned_<quantity>.png for each of sigma, c, weight, kpi in the event files: one panel per loss
  term, the mean over seeds against step (at the steps all seeds logged), one line per setting,
  the min–max over seeds shaded. main_metrics.png: one panel per task main metric, the mean per
  setting with ±std error bars.

Errors
  A FOLDER that does not exist or holds no runs, a finished run whose results.json has a
  metric, learned quantity or true σ that is not a number (or null), an --out that is not a
  folder, a --baseline that is neither single_task nor key=value[,key=value] or, given, names
  no setting of the runs (the default, weighting=fixed, may be missing: Δm% is then blank), or
  a folder the report cannot be written into: one line on stderr and exit code 2. The report's
  files are written all or none (each into a temporary file first), after every check: a
  report that fails leaves the folder as it was.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.atomic import write_all_atomically
from mtltrain.errors import MtlError, OutputError
from mtltrain.results import RESULTS_FILE
from mtltrain.rundir import natural_key
from mtltrain.tasks import DIRECTION

PROG = "mtltrain-report"
COMPLETED = "completed"
PLOTTED = ("sigma", "c", "weight", "kpi")  # learned quantities with a plot, in this order
CSV_ONLY = ("log_var",)  # learned quantities left out of the Markdown table
REPORT_MD, REPORT_CSV, MAIN_PNG = "report.md", "report.csv", "main_metrics.png"
SYMBOL = {"sigma": "σ", "c": "c", "weight": "weight", "kpi": "κ̄"}
PANEL_COLUMNS = 3
SINGLE_TASK = "single_task"  # --baseline: each task's model trained alone
DEFAULT_BASELINE = "weighting=fixed"
NUMBERS = ("metrics", "weighting", "true_sigma")  # results.json's numbers the report reads

Scalars = dict[str, dict[int, float]]  # {tag: {step: value}}


class ReportError(MtlError):
    """A problem the user can fix: one line on stderr, exit code 2."""


@dataclass(frozen=True)
class Run:
    """One run folder: its name below the report's folder and what its results.json says."""

    path: Path
    name: str
    status: str
    results: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status == COMPLETED

    def pairs(self) -> dict[str, str | None]:
        """{key: value} of the run's overrides, seed left out; keys without Hydra's + prefix."""
        return {k: v for k, v in map(parse_override, self.overrides()) if k != "seed"}

    def overrides(self) -> list[str]:
        return list(self.results.get("overrides", []))

    def values(self) -> dict[str, float]:
        """Final metrics and learned quantities, as {"test/y1/rmse": …, "sigma/y1": …}."""
        learned: dict[str, Any] = {}
        for quantity, value in self.results.get("weighting", {}).items():
            if isinstance(value, dict):  # per term
                learned.update({f"{quantity}/{term}": v for term, v in value.items()})
            else:  # of the whole strategy
                learned[quantity] = value
        for term, sigma in self.results.get("true_sigma", {}).items():
            if f"sigma/{term}" in learned:  # beside a learned σ: what it should reach
                learned[f"true_sigma/{term}"] = sigma
        merged = {**self.results.get("metrics", {}), **learned}
        return {k: float(v) for k, v in merged.items() if v is not None}


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n − 1; None for one value) over seeds."""

    mean: float
    std: float | None


@dataclass(frozen=True)
class Setting:
    """One row: the runs that share a setting, and their statistics."""

    label: str
    pairs: dict[str, str | None]
    runs: tuple[Run, ...]
    stats: dict[str, Stat]
    main: dict[str, str]  # {task: its main test metric}


@dataclass(frozen=True)
class Sweep:
    """A report's reading of a folder: every run, and the finished ones grouped into settings
    with each setting's Δm% against the baseline."""

    folder: Path
    runs: list[Run]
    settings: list[Setting]
    baseline: Baseline
    deltas: list[Stat | None]

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.finished]

    @property
    def unfinished(self) -> list[Run]:
        return [run for run in self.runs if not run.finished]


@dataclass(frozen=True)
class Curve:
    """A learned quantity against step: mean, min and max over seeds."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


# --- finding and reading runs ---------------------------------------------------------------


def is_run(folder: Path) -> bool:
    return (folder / RESULTS_FILE).is_file() or (folder / ".hydra").is_dir()


def find_runs(root: Path) -> list[Path]:
    """Run folders under `root` (itself included) in natural order; runs are not searched."""
    found = []
    for folder, subdirs, _ in os.walk(root):
        if is_run(Path(folder)):
            found.append(Path(folder))
            subdirs.clear()
        else:
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    return sorted(found, key=lambda p: [natural_key(part) for part in p.relative_to(root).parts])


def load_run(path: Path, root: Path) -> Run:
    """A run and its status: results.json's, or why there is none to read."""
    name = path.relative_to(root).as_posix() if path != root else root.name
    try:
        results = json.loads((path / RESULTS_FILE).read_text())
    except FileNotFoundError:
        return Run(path, name, f"no {RESULTS_FILE}", {})
    except (OSError, ValueError) as e:
        return Run(path, name, f"unreadable {RESULTS_FILE} ({type(e).__name__})", {})
    if not isinstance(results, dict):
        return Run(path, name, f"unreadable {RESULTS_FILE} (not an object)", {})
    run = Run(path, name, str(results.get("status", "no status")), results)
    if run.finished:
        check_results(results, path / RESULTS_FILE)
    return run


def check_results(results: Mapping[str, Any], file: Path) -> None:
    """What the report reads of a finished run: its overrides, a list of strings; its metrics,
    true σ and learned quantities (NUMBERS), objects of {name: number or null}, a learned
    quantity's value also {term: number or null}."""
    overrides = results.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ReportError(f'{file}: "overrides" is {overrides!r}: it must be a list of strings')
    for section in NUMBERS:
        values = results.get(section, {})
        if not isinstance(values, dict):
            raise ReportError(
                f'{file}: "{section}" is {values!r}: it must be an object of {{name: number}}'
            )
        for name, value in values.items():
            per_term = section == "weighting" and isinstance(value, dict)
            for key, number in value.items() if per_term else [(name, value)]:
                if not is_number(number):
                    shown = f"{name}/{key}" if per_term else name
                    raise ReportError(
                        f'{file}: "{section}" has {shown} = {number!r}: it must be a number '
                        "(or null)"
                    )


def is_number(value: object) -> bool:
    """A JSON number or null (true and false are not numbers)."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def read_learned(run: Run) -> Scalars:
    """The learned quantities a run logged to TensorBoard: {"sigma/y1": {step: value}}."""
    tb = run.path / "tb"
    if not tb.is_dir():
        return {}
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: {event.step: event.value for event in acc.Scalars(tag)}
        for tag in acc.Tags()["scalars"]
        if tag.split("/", 1)[0] in PLOTTED
    }


# --- settings and statistics ----------------------------------------------------------------


def parse_override(text: str) -> tuple[str, str | None]:
    """`key=value` → (key, value), without Hydra's + / ++ prefix; `~key` → ("~key", None)."""
    key, sep, value = text.partition("=")
    return key.strip().lstrip("+"), value if sep else None


def split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets, braces and quotes: `a=[1,2],b=3` → 2 parts."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def summarize(values: Sequence[float]) -> Stat:
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std)


def ordered_union(groups: Iterable[Iterable[str]]) -> list[str]:
    """Every name of `groups`, once, in order of first appearance."""
    return list(dict.fromkeys(name for group in groups for name in group))


def main_metrics(names: Iterable[str]) -> dict[str, str]:
    """{task: "test/<task>/<metric>"}: the first test metric of each task is its main one."""
    main: dict[str, str] = {}
    for name in names:
        split, _, rest = name.partition("/")
        task = rest.rpartition("/")[0]
        if split == "test" and task:
            main.setdefault(task, name)
    return main


def differing_keys(runs: Sequence[Run]) -> set[str]:
    """Override keys (seed aside) whose value, or presence, is not the same in every run."""
    all_pairs = [run.pairs() for run in runs]
    keys = {key for pairs in all_pairs for key in pairs}
    return {key for key in keys if len({(key in p, p.get(key)) for p in all_pairs}) > 1}


def make_setting(label: str, runs: Sequence[Run]) -> Setting:
    values = [run.values() for run in runs]
    stats = {
        name: summarize([v[name] for v in values if name in v]) for name in ordered_union(values)
    }
    return Setting(label, runs[0].pairs(), tuple(runs), stats, main_metrics(values[0]))


def group_settings(runs: Sequence[Run]) -> list[Setting]:
    """Finished runs grouped by their overrides but seed, labelled by those that differ."""
    groups: dict[frozenset[tuple[str, str | None]], list[Run]] = {}
    for run in runs:
        groups.setdefault(frozenset(run.pairs().items()), []).append(run)
    differing = differing_keys(runs)
    empty = "(all runs)" if len(groups) == 1 else "(defaults)"
    settings = []
    for members in groups.values():
        shown = [o for o in members[0].overrides() if parse_override(o)[0] in differing]
        settings.append(make_setting(", ".join(shown) or empty, members))
    return settings


# --- Δm% ------------------------------------------------------------------------------------


Baseline = dict[str, str | None] | None  # None: single-task learning


def parse_baseline(text: str) -> Baseline:
    """--baseline `key=value[,key=value]` → {key: value}; `single_task` → None."""
    if text == SINGLE_TASK:
        return None
    pairs = dict(parse_override(part) for part in split_top_level(text))
    if any(not key or value is None for key, value in pairs.items()):
        raise ReportError(f"--baseline {text!r} is neither {SINGLE_TASK} nor key=value[,key=value]")
    return pairs


def find_baseline(
    row: Setting, settings: Sequence[Setting], baseline: Mapping[str, str | None]
) -> Setting | None:
    """The setting with the baseline's overrides that agrees with `row` on every other one."""
    for candidate in settings:
        if all(candidate.pairs.get(k) == v for k, v in baseline.items()) and agree(
            candidate, row, but=lambda k: k in baseline
        ):
            return candidate
    return None


def agree(a: Setting, b: Setting, but: Callable[[str], bool]) -> bool:
    """Whether two settings have the same overrides, the keys `but` names aside."""
    keys = a.pairs.keys() | b.pairs.keys()
    return all(a.pairs.get(k) == b.pairs.get(k) for k in keys if not but(k))


def weighting_or_tasks(key: str) -> bool:
    """What a single-task baseline may differ in from the multi-task row."""
    return key in ("weighting", "dataset.tasks") or key.startswith("weighting.")


def single_task_means(row: Setting, settings: Sequence[Setting]) -> dict[str, float] | None:
    """Each of the row's main metrics, averaged over the seeds of the setting that trains its
    task alone and agrees with the row on every override but the weighting and the tasks."""
    means = {}
    for task, name in row.main.items():
        alone = [
            s for s in settings if list(s.main) == [task] and agree(s, row, but=weighting_or_tasks)
        ]
        if len(alone) != 1 or name not in alone[0].stats:
            return None
        means[name] = alone[0].stats[name].mean
    return means


def baseline_means(
    row: Setting, settings: Sequence[Setting], baseline: Baseline
) -> dict[str, float] | None:
    """The means M_b,k the row's Δm% compares with; None where it has no baseline."""
    if baseline is None:
        return single_task_means(row, settings)
    base = find_baseline(row, settings, baseline)
    if base is None or base.main != row.main:
        return None
    return {name: base.stats[name].mean for name in base.main.values()}


def delta_m(row: Setting, means: Mapping[str, float]) -> Stat | None:
    """Δm% = (100/K)·Σ_k d_k·(M_k − M_b,k)/|M_b,k| over the main test metrics, of each of the
    row's runs against the baseline's `means`: its mean (the Δm% of the row's means) and spread
    over seeds. None: undefined."""
    if not row.main:
        return None
    terms = []
    for name in row.main.values():
        direction = DIRECTION.get(name.rpartition("/")[2])
        ref = means[name]
        if direction is None or ref == 0:
            return None
        terms.append((name, direction, ref))
    per_run = [
        100 * statistics.fmean(d * (run.values()[n] - ref) / abs(ref) for n, d, ref in terms)
        for run in row.runs
        if all(n in run.values() for n, _, _ in terms)
    ]
    return summarize(per_run) if per_run else None


def delta_ms(settings: Sequence[Setting], baseline: Baseline) -> list[Stat | None]:
    """Each row's Δm% against its own baseline."""
    result = []
    for row in settings:
        means = baseline_means(row, settings, baseline)
        result.append(None if means is None else delta_m(row, means))
    return result


# --- Markdown and CSV -----------------------------------------------------------------------


def table_columns(settings: Sequence[Setting]) -> list[str]:
    """Test metrics, then learned quantities but log_var, in order of first appearance, each
    learned σ followed by the true σ where the data set knows it."""
    names = ordered_union(s.stats for s in settings)
    skip = ("test", "validation", "train", "true_sigma", *CSV_ONLY)
    learned = [n for n in names if n.split("/", 1)[0] not in skip]
    columns = [n for n in names if n.startswith("test/")]
    for name in learned:
        columns.append(name)
        truth = f"true_{name}"
        if name.startswith("sigma/") and truth in names:
            columns.append(truth)
    return columns


def fmt_stat(stat: Stat | None) -> str:
    """mean ± std with the std to 2 significant digits and the mean rounded to the same place
    (2.94 ± 0.21, 1230 ± 160); one seed: the mean to 4 significant digits ± "–"; no spread at
    all: the mean alone, to 4 significant digits."""
    if stat is None:
        return ""
    if stat.std is None:
        return f"{significant(stat.mean)} ± –"
    if stat.std == 0 or not math.isfinite(stat.std):
        return significant(stat.mean)
    place = math.floor(math.log10(stat.std)) - 1  # of the std's second significant digit
    mean, std = (round(v, -place) + 0.0 for v in (stat.mean, stat.std))  # + 0.0: no "-0"
    decimals = max(0, -place)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def significant(value: float) -> str:
    """4 significant digits, trailing zeros kept (3.000, 0.5000, 1234)."""
    return f"{value:#.4g}".rstrip(".")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def results_table(settings: Sequence[Setting], deltas: Sequence[Stat | None]) -> str:
    columns = table_columns(settings)
    rows = [
        [s.label, str(len(s.runs)), *(fmt_stat(s.stats.get(c)) for c in columns), fmt_stat(d)]
        for s, d in zip(settings, deltas, strict=True)
    ]
    return markdown_table(["setting", "seeds", *columns, "Δm%"], rows)


def table_notes(
    settings: Sequence[Setting], deltas: Sequence[Stat | None], baseline: str, matched: bool
) -> str:
    """What the numbers are, and the Δm% formula with its sign convention."""
    used = ", ".join(ordered_union(s.main.values() for s in settings))
    notes = [
        "Mean ± sample standard deviation (n − 1) over seeds, the mean to the decimal place of "
        'the deviation\'s second significant digit; "–": one seed. true_sigma: the noise σ the '
        "data set drew its labels with (what a learned σ should reach).",
        f"Δm% = (100/K)·Σ_k d_k·(M_k − M_b,k)/|M_b,k| over the K tasks' main test metrics "
        f"({used}), with d_k = +1 where higher is better and −1 where lower is better: positive "
        f"Δm% is better than the baseline. M_b are the means {_baseline_words(baseline)}, M_k "
        "each seed's run of the row: Δm% is their mean ± std over seeds. Blank: no such row, or "
        "different tasks.",
    ]
    if not matched and baseline == SINGLE_TASK:
        notes.append("No row has runs of its tasks alone (dataset.tasks=[<task>]): Δm% is blank.")
    elif not matched:
        notes.append(f"No setting has {baseline}: Δm% is blank (choose one with --baseline).")
    elif all(d is None for d in deltas):
        notes.append("No row could be compared with its baseline row: Δm% is blank.")
    return "\n\n".join(notes)


def _baseline_words(baseline: str) -> str:
    if baseline == SINGLE_TASK:
        return (
            "of each task trained alone (the row with dataset.tasks=[<task>] and the same other "
            "settings, its weighting aside)"
        )
    return f"of the row with {baseline} and the same other settings"


def unfinished_section(runs: Sequence[Run]) -> str:
    rows = ([f"`{run.name}`", run.status, str(run.results.get("error", ""))] for run in runs)
    return "## Runs that did not finish\n\n" + markdown_table(["run", "status", "error"], rows)


def count(n: int, noun: str) -> str:
    """ "1 run", "2 runs"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def csv_pair(stat: Stat | None) -> tuple[float | None, float | None]:
    return (None, None) if stat is None else (stat.mean, stat.std)


def csv_cell(value: float | None) -> str:
    """Full precision (repr); empty for no value."""
    return "" if value is None else repr(value)


def csv_text(settings: Sequence[Setting], deltas: Sequence[Stat | None]) -> str:
    """Every metric and quantity as <name>_mean, <name>_std at full precision, n, Δm%."""
    names = ordered_union(s.stats for s in settings)
    header = ["setting", "n", *(f"{n}_{part}" for n in names for part in ("mean", "std"))]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([*header, "delta_m_pct", "delta_m_pct_std"])
    for setting, delta in zip(settings, deltas, strict=True):
        cells = [csv_cell(part) for n in names for part in csv_pair(setting.stats.get(n))]
        spread = map(csv_cell, csv_pair(delta))
        writer.writerow([setting.label, len(setting.runs), *cells, *spread])
    return text.getvalue()


# --- plots ----------------------------------------------------------------------------------


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
            DIRECTION.get(name.rpartition("/")[2], 0), "no direction"
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


# --- the command ----------------------------------------------------------------------------


def read_sweep(folder: Path, baseline: str, chosen: bool = False) -> Sweep:
    """The runs under `folder`, their settings and Δm% against `baseline` (key=value[,…]);
    a `chosen` baseline must name a setting of the runs."""
    pairs = parse_baseline(baseline)
    if not folder.is_dir():
        raise ReportError(f"no such folder: {folder}")
    runs = [load_run(path, folder) for path in find_runs(folder)]
    if not runs:
        raise ReportError(f"no runs in {folder}: no folder with {RESULTS_FILE} or .hydra/")
    finished = [run for run in runs if run.finished]
    settings = group_settings(finished) if finished else []
    if chosen and settings:
        check_baseline(baseline, pairs, settings, folder)
    return Sweep(folder, runs, settings, pairs, delta_ms(settings, pairs))


def check_baseline(
    text: str, baseline: Baseline, settings: Sequence[Setting], folder: Path
) -> None:
    """--baseline names a setting: one with every key=value it gives, or for single_task one
    that trains a single task."""
    if baseline is None:
        if not any(len(s.main) == 1 for s in settings):
            raise ReportError(
                f"--baseline {SINGLE_TASK}: no setting in {folder} trains one task alone (sweep "
                "dataset.tasks=[<task>] beside the strategies, see --help)"
            )
    elif not any(all(s.pairs.get(k) == v for k, v in baseline.items()) for s in settings):
        keys = differing_keys([run for s in settings for run in s.runs]) or {
            key for s in settings for key in s.pairs
        }
        options = sorted({f"{k}={v}" for s in settings for k, v in s.pairs.items() if k in keys})
        raise ReportError(
            f"--baseline {text} names no setting of the runs in {folder}: choose from "
            f"{', '.join(options) or '(no overrides but seed)'}, or {SINGLE_TASK}"
        )


def report(folder: Path, out: Path, baseline: str, chosen: bool = False) -> None:
    """Read the runs under `folder`, write the report files into `out`, print the table."""
    write_report(read_sweep(folder, baseline, chosen), out, baseline)


def write_report(sweep: Sweep, out: Path, baseline: str) -> None:
    """report.md, report.csv and the plots of `sweep` into `out`, all or none; then the table
    printed, and on stderr the runs that did not finish."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot write into --out {out}: {e.strerror}") from None
    finished, unfinished = sweep.finished, sweep.unfinished
    notices = [f"run did not finish: {run.name} ({run.status})" for run in unfinished]

    settings, deltas = sweep.settings, sweep.deltas
    matched = any(baseline_means(s, settings, sweep.baseline) is not None for s in settings)
    notes = table_notes(settings, deltas, baseline, matched)
    table = results_table(settings, deltas) + "\n\n" + notes
    pictures, unplotted = plots(settings, finished)

    counts = f"{count(len(finished), 'finished run')} in {count(len(settings), 'setting')}"
    title = f"{TITLE} {sweep.folder.name}"
    parts = [title, f"{counts}, {len(unfinished)} did not finish.", table]
    if unfinished:
        parts.append(unfinished_section(unfinished))
    if pictures:
        parts.append("## Plots\n\n" + "\n\n".join(f"![{p}]({p})" for p in pictures))
    files = {
        REPORT_MD: ("\n\n".join(parts) + "\n").encode(),
        REPORT_CSV: csv_text(settings, deltas).encode(),
        **pictures,
    }
    check_own_files(out, files)
    try:
        write_all_atomically({out / name: data for name, data in files.items()})
    except OutputError as e:
        raise ReportError(f"{e}: write the report elsewhere with --out DIR") from None
    for notice in [*notices, *unplotted]:
        print(f"{PROG}: {notice}", file=sys.stderr)
    print(table)


TITLE = "# mtltrain report:"


def check_own_files(out: Path, names: Iterable[str]) -> None:
    """Files the report would replace must be an earlier report's: a folder's report.md that
    does not begin with the report's title is a user's own, and so are its other files."""
    there = [name for name in names if (out / name).exists()]
    md = out / REPORT_MD
    ours = md.is_file() and md.read_text(errors="replace").startswith(TITLE)
    if there and not ours:
        raise ReportError(
            f"{out} holds {', '.join(there)}, which mtltrain-report did not write: they are left "
            "as they are; write the report elsewhere with --out DIR"
        )


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors in one line, without its usage block."""

    def error(self, message: str) -> NoReturn:
        print(
            f"{self.prog}: error: {message}: {self.prog} --help says what it takes", file=sys.stderr
        )
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("folder", type=Path, help="a run folder or a multirun (sweep) folder")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write the report files (default: FOLDER)"
    )
    p.add_argument(
        "--baseline",
        help=(
            "the setting Δm%% compares with, key=value[,key=value], or single_task: each task "
            f"trained alone (default: {DEFAULT_BASELINE}, where the runs have it)"
        ),
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.baseline == "":
            raise ReportError("--baseline='' names no setting: give key=value or single_task")
        baseline = args.baseline or DEFAULT_BASELINE
        report(args.folder, args.out or args.folder, baseline, chosen=args.baseline is not None)
    except ReportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
