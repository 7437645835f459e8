"""The report's Markdown table (mean ± std over seeds) and its CSV at full precision."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence

from mtltrain.report.runs import (
    Run,
)
from mtltrain.report.statistics import (
    SINGLE_TASK,
    Setting,
    Stat,
    ordered_union,
)

CSV_ONLY = ("log_var",)  # learned quantities left out of the Markdown table


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
