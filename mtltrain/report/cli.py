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
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from mtltrain.atomic import write_all_atomically
from mtltrain.errors import OneLineParser, OutputError
from mtltrain.report.plots import (
    plots,
)
from mtltrain.report.runs import (
    ReportError,
)
from mtltrain.report.statistics import (
    baseline_means,
)
from mtltrain.report.sweep import Sweep, read_sweep
from mtltrain.report.tables import (
    count,
    csv_text,
    results_table,
    table_notes,
    unfinished_section,
)

PROG = "mtltrain-report"


DEFAULT_BASELINE = "weighting=fixed"


REPORT_MD, REPORT_CSV = "report.md", "report.csv"


TITLE = "# mtltrain report:"


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
