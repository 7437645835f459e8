"""Settings (the rows of a report), their statistics over seeds, and Δm% against a baseline:
Δm% = (100/K)·Σ_k d_k·(M_k − M_b,k)/|M_b,k|."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from mtltrain.report.runs import (
    ReportError,
    Run,
    parse_override,
)
from mtltrain.tasks import DIRECTION

SINGLE_TASK = "single_task"  # --baseline: each task's model trained alone


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

    def direction(self, name: str) -> int | None:
        """Which way the metric "<split>/<task>/<metric>" improves: as its runs' results.json
        records it, else by the built-in metric's name; None: no direction."""
        recorded = self.runs[0].directions() if self.runs else {}
        metric = name.partition("/")[2]
        return recorded.get(metric, DIRECTION.get(metric.rpartition("/")[2]))


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
        direction = row.direction(name)
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
