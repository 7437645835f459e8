"""What the reproduction scripts (scripts/reproduce_*.py) share.

Each script runs one Hydra sweep with `mtltrain -m` into runs/<name>/ (the sweep's wall time
goes to runs/<name>/sweep.json), then `mtltrain-report` on that folder, then writes a Markdown
file, <name>.md, into the folder and into docs/results/: the script's own tables, built from
the report's report.csv and the runs' results.json, under the machine, the wall time and the
command that made it. Run the scripts from the repository root with the Python of the
environment mtltrain is installed in: `mtltrain` and `mtltrain-report` are taken from next to
that Python, else from PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
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

from mtltrain import runtime
from mtltrain.report import Stat, markdown_table, summarize

__all__ = ["Stat", "markdown_table", "summarize"]  # shared with the reproduce_* scripts

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "results"
SWEEP_FILE = "sweep.json"
MNIST_ROOT = "../shared/data/mnist"


@dataclass(frozen=True)
class Row:
    """One setting of report.csv: its overrides, run count, statistics and Δm%."""

    label: str
    pairs: dict[str, str]
    n: int
    stats: dict[str, Stat]
    delta_m: float | None

    def get(self, name: str) -> Stat | None:
        return self.stats.get(name)


@dataclass(frozen=True)
class Experiment:
    """One reproduction: its name, the sweep, the report's baseline and its tables."""

    name: str
    title: str
    overrides: Callable[[argparse.Namespace], list[str]]
    body: Callable[[Path], str]  # the Markdown below the title, from the runs folder
    baseline: str = "weighting=fixed"
    seeds: int = 3
    mnist: bool = False  # whether the sweep reads MNIST (adds --mnist-root)
    # {name: picture} to publish beside the tables (name also links them in the body)
    pictures: Callable[[Path], dict[str, Path]] = lambda folder: {}


# --- running ---------------------------------------------------------------------------------


def tool(name: str) -> str:
    """An installed command: next to the running Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found next to {sys.executable} or on PATH: install mtltrain")
    return found


def machine(threads: int | None) -> str:
    """CPU model, cores, threads per run, GPU, torch and Python versions, in one line."""
    m = runtime.machine(runtime.select_device("auto"))
    per_run = f"{threads} thread{'s' if threads != 1 else ''}" if threads else "torch's threads"
    gpu = m["gpu"] or "no GPU"
    return (
        f"{m['cpu']}, {m['cores']} CPU cores ({per_run} per run), {gpu}, "
        f"torch {m['torch']}, Python {m['python']}"
    )


def command_line() -> str:
    """How this script was called, its path relative to the repository when inside it."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def run_sweep(overrides: Sequence[str], folder: Path, threads: int | None) -> dict[str, Any]:
    """`mtltrain -m <overrides>` into `folder`, with `threads` intra-op threads per run (None:
    torch's default); writes and returns what sweep.json records."""
    argv = [tool("mtltrain"), "-m", *overrides, f"hydra.sweep.dir={folder}"]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", shlex.join(argv), flush=True)
    started = time.perf_counter()
    subprocess.run(argv, check=True, env=env)
    sweep = {
        "wall_s": round(time.perf_counter() - started, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        "overrides": list(overrides),
        "command": command_line(),
        "machine": machine(threads),
    }
    (folder / SWEEP_FILE).write_text(json.dumps(sweep, indent=2) + "\n")
    return sweep


def run_report(folder: Path, baseline: str) -> None:
    """`mtltrain-report <folder> --baseline <baseline>`: report.md, report.csv and plots."""
    argv = [tool("mtltrain-report"), str(folder), "--baseline", baseline]
    print("+", shlex.join(argv), flush=True)
    subprocess.run(argv, check=True)


# --- reading ---------------------------------------------------------------------------------


def label_pairs(label: str) -> dict[str, str]:
    """A report setting label `k=v, k=v` as {k: v} (values here hold no ", ")."""
    return dict(part.split("=", 1) for part in label.split(", ") if "=" in part)


def read_report(folder: Path) -> list[Row]:
    """The rows of the report's report.csv, in run order. A label names only the overrides
    that differ between runs; a row's pairs also hold those every run shares."""
    common = common_overrides(read_runs(folder))
    rows = []
    with (folder / "report.csv").open(newline="") as f:
        for record in csv.DictReader(f):
            names = [k[: -len("_mean")] for k in record if k.endswith("_mean")]
            stats = {
                name: Stat(float(record[f"{name}_mean"]), _number(record[f"{name}_std"]))
                for name in names
                if record[f"{name}_mean"]
            }
            label = record["setting"]
            delta = _number(record["delta_m_pct"])
            pairs = {**common, **label_pairs(label)}
            rows.append(Row(label, pairs, int(record["n"]), stats, delta))
    return rows


def common_overrides(runs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{key: value} of the overrides that every run gives the same value."""
    pairs = [overrides_of(run) for run in runs]
    if not pairs:
        return {}
    return {k: v for k, v in pairs[0].items() if all(p.get(k) == v for p in pairs[1:])}


def _number(cell: str) -> float | None:
    return float(cell) if cell else None


def read_runs(folder: Path) -> list[dict[str, Any]]:
    """Every finished run's results.json under `folder`, with its folder as "path"."""
    runs = []
    for path in sorted(folder.glob("*/results.json")):
        results = json.loads(path.read_text())
        if results.get("status") == "completed":
            runs.append({**results, "path": path.parent})
    return runs


def overrides_of(run: dict[str, Any]) -> dict[str, str]:
    """A run's overrides as {key: value}, keys without Hydra's + prefix."""
    return dict(item.lstrip("+").partition("=")[::2] for item in run["overrides"])


def override(run: dict[str, Any], key: str) -> str | None:
    """The value a run's overrides give `key`, or None."""
    return overrides_of(run).get(key)


# --- writing ---------------------------------------------------------------------------------


def fmt(stat: Stat | float | None, digits: int = 4) -> str:
    """`mean ± std` with `digits` decimals; a bare number; "–" for nothing."""
    if stat is None:
        return "–"
    if isinstance(stat, Stat):
        std = "–" if stat.std is None else f"{stat.std:.{digits}f}"
        return f"{stat.mean:.{digits}f} ± {std}"
    return "–" if math.isnan(stat) else f"{stat:.{digits}f}"


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def footer(folder: Path, sweep: dict[str, Any]) -> str:
    """Machine, wall time (the sweep's, and the runs' summed) and the command."""
    runs = read_runs(folder)
    summed = sum(r["wall_time_s"] for r in runs)
    devices = ", ".join(sorted({r["device"] for r in runs}))
    return (
        f"Machine: {sweep['machine']}; training device: {devices}.  \n"
        f"Wall time: {duration(sweep['wall_s'])} for the sweep of {len(runs)} runs, one after "
        f"another (the runs' own wall times sum to {duration(summed)}); finished "
        f"{sweep['finished']}.  \n"
        f"Reproduce: `{sweep['command']}`"
    )


def write_tables(experiment: Experiment, folder: Path, sweep: dict[str, Any], docs: bool) -> str:
    """<name>.md into the runs folder and, with `docs`, into docs/results/; returns it."""
    text = f"# {experiment.title}\n\n{experiment.body(folder).strip()}\n\n{footer(folder, sweep)}\n"
    (folder / f"{experiment.name}.md").write_text(text)
    if docs:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / f"{experiment.name}.md").write_text(text)
    return text


def publish(experiment: Experiment, folder: Path, docs: bool) -> None:
    """Copy the experiment's pictures beside its tables: into the runs folder and docs/."""
    for name, source in experiment.pictures(folder).items():
        for target in (folder, DOCS) if docs else (folder,):
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
    p.add_argument(
        "--no-docs", action="store_true", help="write nothing into docs/results/ or README.md"
    )
    p.add_argument("--tables-only", action="store_true", help="reuse the sweep in --runs")
    return p.parse_args(argv)


def seeds(args: argparse.Namespace) -> str:
    """The seed sweep override: seed=0,1,…,n−1."""
    return "seed=" + ",".join(str(s) for s in range(args.seeds))


def mnist_overrides(args: argparse.Namespace) -> list[str]:
    """MNIST, where it is, and no download. dataset=mnist_mtl although the experiment configs
    choose it too: a multirun composes its base config without the swept experiment=, and
    dataset.root must already exist there."""
    return ["dataset=mnist_mtl", f"dataset.root={args.mnist_root}", "dataset.download=false"]


def main(experiment: Experiment, argv: Sequence[str] | None = None) -> None:
    """Sweep (unless --tables-only), report, tables."""
    args = parse_args(experiment, argv)
    folder: Path = args.runs
    if args.tables_only:
        if not (folder / SWEEP_FILE).is_file():
            sys.exit(f"no finished sweep in {folder}: no {SWEEP_FILE}")
        sweep = json.loads((folder / SWEEP_FILE).read_text())
    else:
        if folder.exists() and any(folder.iterdir()):
            sys.exit(f"{folder} is not empty: remove it, pass another --runs, or --tables-only")
        sweep = run_sweep(experiment.overrides(args), folder, args.threads)
    run_report(folder, experiment.baseline)
    publish(experiment, folder, docs=not args.no_docs)
    print(write_tables(experiment, folder, sweep, docs=not args.no_docs))
    if not args.no_docs:
        update_readme.update()
