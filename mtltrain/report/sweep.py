"""A folder read as a report reads it: its runs, their settings and each setting's Δm%."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtltrain.outputs._results import RESULTS_FILE
from mtltrain.report.runs import (
    ReportError,
    Run,
    find_runs,
    load_run,
)
from mtltrain.report.statistics import (
    SINGLE_TASK,
    Baseline,
    Setting,
    Stat,
    delta_ms,
    differing_keys,
    group_settings,
    parse_baseline,
)


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
