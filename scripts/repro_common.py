"""What the reproduction scripts (scripts/reproduce_*.py) share.

Each script runs one Hydra sweep with `mtltrain -m` into runs/<name>/ (the sweep's wall time
goes to runs/<name>/sweep.json), reads it as `mtltrain-report` does (mtltrain.report.read_sweep)
and writes that report into the folder, then writes <name>.md, its own tables built from the
report's settings and runs, into the folder and docs/results/, under the machine, the wall time
and the command that made it. Run the scripts from the repository root with the Python of the
environment mtltrain is installed in (`mtltrain` is taken from next to that Python, else from
PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import update_readme

from mtltrain import compare
from mtltrain.compare import duration, fmt
from mtltrain.report import ReportError, Run, Stat, Sweep, markdown_table, read_sweep, write_report

__all__ = ["Run", "Sweep", "duration", "fmt", "markdown_table"]  # for the reproduce_* scripts

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "results"
SWEEP_FILE = "sweep.json"
MNIST_ROOT = "../shared/data/mnist"


@dataclass(frozen=True)
class Experiment:
    """One reproduction: its name, the sweep, the report's baseline and its tables."""

    name: str
    title: str
    overrides: Callable[[argparse.Namespace], list[str]]
    body: Callable[[Sweep], str]  # the Markdown below the title
    baseline: str = "weighting=fixed"
    seeds: int = 3
    mnist: bool = False  # whether the sweep reads MNIST (adds --mnist-root)
    # {name: picture} to publish beside the tables (name also links them in the body)
    pictures: Callable[[Sweep], dict[str, Path]] = lambda _: {}


# --- running ---------------------------------------------------------------------------------


def tool(name: str) -> str:
    """An installed command: next to the running Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found next to {sys.executable} or on PATH: install mtltrain")
    return found


def threads_label(n: int) -> str:
    """ "1 thread", "2 threads"."""
    return f"{n} thread{'s' if n != 1 else ''}"


def machine(threads: int | None) -> str:
    """CPU model, cores, threads per run, GPU, torch and Python versions, in one line."""
    return compare.machine(threads)


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this script was called (`argv`: sys.argv), its path relative to the repository when
    inside it, without the options that name this machine's folders (--runs, --mnist-root and
    overrides of dataset.root), which a published command must not show."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return compare.command_line(["python", str(script)], argv[1:])


def run_sweep(
    overrides: Sequence[str], folder: Path, threads: int | None, check: bool = True
) -> dict[str, Any]:
    """`mtltrain -m <overrides>` into `folder`, with `threads` intra-op threads per run (None:
    torch's default); writes and returns what sweep.json records. `check`: a failed job stops
    the script (else its results.json says why, and the tables list it)."""
    argv = [tool("mtltrain"), "-m", *overrides, f"hydra.sweep.dir={folder}"]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", shlex.join(argv), flush=True)
    started = time.perf_counter()
    subprocess.run(argv, check=check, env=env)
    record = {
        "wall_s": round(time.perf_counter() - started, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        "overrides": list(overrides),
        "command": command_line(),
        "machine": machine(threads),
    }
    (folder / SWEEP_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def seed(run: Run) -> int:
    return run.results["seed"]


def metric(run: Run, name: str) -> float:
    """A final metric of a run: `metric(run, "test/seg/iou")`."""
    return run.results["metrics"][name]


def seed_table(
    runs: Sequence[Run], columns: dict[str, str], key: str, cell: Callable[[Run], str]
) -> str:
    """A row per seed and a column per value of override `key` (`columns`: value → header),
    each cell `cell(run)`; "–" where no run has that seed and value."""
    table: dict[int, dict[str | None, str]] = {}
    for run in runs:
        table.setdefault(seed(run), {})[run.pairs().get(key)] = cell(run)
    return markdown_table(
        ["seed", *columns.values()],
        [[str(s), *(table[s].get(value, "–") for value in columns)] for s in sorted(table)],
    )


# --- writing ---------------------------------------------------------------------------------


def delta_cell(delta: Stat | None) -> str:
    """Δm% (of the setting's means) with its sign, or "–" where there is no baseline."""
    return "–" if delta is None else f"{delta.mean:+.2f}"


def footer(sweep: Sweep, record: dict[str, Any]) -> str:
    """Machine, wall time (the sweep's, and the runs' summed) and the command."""
    runs = sweep.finished
    summed = sum(run.results["wall_time_s"] for run in runs)
    devices = ", ".join(sorted({run.results["device"] for run in runs}))
    return (
        f"Machine: {record['machine']}; training device: {devices}.  \n"
        f"Wall time: {duration(record['wall_s'])} for the sweep of {len(runs)} runs, one after "
        f"another (the runs' own wall times sum to {duration(summed)}); finished "
        f"{record['finished']}.  \n"
        f"Reproduce: `{record['command']}`"
    )


def write_tables(experiment: Experiment, sweep: Sweep, record: dict[str, Any], docs: bool) -> str:
    """<name>.md into the runs folder and, with `docs`, into docs/results/; returns it."""
    body = experiment.body(sweep).strip()
    text = f"# {experiment.title}\n\n{body}\n\n{footer(sweep, record)}\n"
    (sweep.folder / f"{experiment.name}.md").write_text(text)
    if docs:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / f"{experiment.name}.md").write_text(text)
    return text


def publish(experiment: Experiment, sweep: Sweep, docs: bool) -> None:
    """Copy the experiment's pictures beside its tables: into the runs folder and docs/."""
    for name, source in experiment.pictures(sweep).items():
        for target in (sweep.folder, DOCS) if docs else (sweep.folder,):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / name)


# --- the command -----------------------------------------------------------------------------


def parse_args(experiment: Experiment, argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=sys.modules["__main__"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default_runs = Path("runs") / experiment.name
    p.add_argument("--runs", type=Path, default=default_runs, help=f"default: {default_runs}")
    p.add_argument("--seeds", type=int, default=experiment.seeds, help="default: %(default)s")
    if experiment.mnist:
        p.add_argument("--mnist-root", default=MNIST_ROOT, help="default: %(default)s")
    p.add_argument("--threads", type=int, help="intra-op threads per run (default: torch's)")
    p.add_argument("--no-docs", action="store_true", help="write nothing into docs/ or README.md")
    p.add_argument("--tables-only", action="store_true", help="reuse the sweep in --runs")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more mtltrain override for every run of the sweep (repeatable)",
    )
    return p.parse_args(argv)


def seeds(args: argparse.Namespace) -> str:
    """The seed sweep override: seed=0,1,…,n−1."""
    return "seed=" + ",".join(str(s) for s in range(args.seeds))


def mnist_overrides(root: str) -> list[str]:
    """MNIST, where it is, and no download. dataset=mnist_mtl although the experiment configs
    choose it too: a multirun composes its base config without the swept experiment=, and
    dataset.root must already exist there."""
    return ["dataset=mnist_mtl", f"dataset.root={root}", "dataset.download=false"]


def main(experiment: Experiment, argv: Sequence[str] | None = None) -> None:
    """Sweep (unless --tables-only), report, tables."""
    args = parse_args(experiment, argv)
    folder: Path = args.runs
    if args.tables_only:
        if not (folder / SWEEP_FILE).is_file():
            sys.exit(f"no finished sweep in {folder}: no {SWEEP_FILE}")
        record = json.loads((folder / SWEEP_FILE).read_text())
    else:
        if folder.exists() and any(folder.iterdir()):
            sys.exit(f"{folder} is not empty: remove it, pass another --runs, or --tables-only")
        record = run_sweep([*experiment.overrides(args), *args.override], folder, args.threads)
    try:
        sweep = read_sweep(folder, experiment.baseline)
        write_report(sweep, folder, experiment.baseline)  # what mtltrain-report writes
    except ReportError as e:
        sys.exit(f"mtltrain-report: {e}")
    publish(experiment, sweep, docs=not args.no_docs)
    print(write_tables(experiment, sweep, record, docs=not args.no_docs))
    if not args.no_docs:
        update_readme.update()
