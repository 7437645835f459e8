"""`logger=csv`: a run's scalars as one CSV table and its HParams, tags and final values as
YAML, in the run's csv/ folder.

csv/metrics.csv has a `step` column and one column per tag, one row per logged step (a cell is
empty where that tag was not logged at that step); a row is written when the next step starts
(the whole file again where a new tag adds a column). csv/hparams.yaml has `hparams` and `tags`
(a fresh run's) and, once the run finished, `step` and `final` (its final values). A run resumed
after step s drops the rows past s, at its first logged step, and goes on from there (one that
fails before it logs leaves the file as it was).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mtltrain.atomic import write_atomically
from mtltrain.outputs._run_folder import CSV

METRICS, HPARAMS = "metrics.csv", "hparams.yaml"


class CsvLog:
    """A `mtltrain.outputs.Logger` that writes folder/csv/metrics.csv and hparams.yaml (see the
    module's note)."""

    def __init__(self, folder: Path, resume_step: int | None = None) -> None:
        self.folder = folder / CSV
        self.rows: dict[int, dict[str, float]] = {}  # in step order
        self.columns: list[str] = []
        self.header: list[str] = []  # the columns of the file's header
        self.written = 0  # rows in the file
        self.logged = False  # whether this run logged: before, the file is left as it is
        if resume_step is not None:
            self.rows = {s: r for s, r in read_metrics(self.folder).items() if s <= resume_step}
            self.columns = list(dict.fromkeys(k for r in self.rows.values() for k in r))

    def start(self, hparams: Mapping[str, str], tags: Sequence[str]) -> None:
        self.write_hparams({"hparams": dict(hparams), "tags": list(tags)})

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self.logged = True
        if self.rows and step > next(reversed(self.rows)):  # the last step, rows in order
            self.flush()  # the rows before `step` are complete
        self.rows.setdefault(step, {}).update(values)
        self.columns += [k for k in values if k not in self.columns]

    def finish(self, values: Mapping[str, float], step: int) -> None:
        self.flush()
        path = self.folder / HPARAMS
        known = yaml.safe_load(path.read_text()) if path.is_file() else {}
        self.write_hparams({**known, "step": step, "final": dict(values)})

    def close(self) -> None:
        if self.logged:
            self.flush()

    def flush(self) -> None:
        """The rows not yet in the file into it; all of them again (a resumed run's kept
        ones too) where a tag was added or none was written yet."""
        steps = list(self.rows)
        if not steps:
            return
        self.folder.mkdir(exist_ok=True)
        if self.columns != self.header or not self.written:
            text = io.StringIO(newline="")
            self.write_rows(text, steps, header=True)
            write_atomically(self.folder / METRICS, text.getvalue().encode())
            self.header = list(self.columns)
        elif len(steps) > self.written:
            with (self.folder / METRICS).open("a", newline="") as f:
                self.write_rows(f, steps[self.written :], header=False)
        self.written = len(steps)

    def write_rows(self, f: Any, steps: Sequence[int], header: bool) -> None:
        table = csv.DictWriter(f, ["step", *self.columns])
        if header:
            table.writeheader()
        for step in steps:
            table.writerow({"step": step, **self.rows[step]})

    def write_hparams(self, content: Mapping[str, Any]) -> None:
        self.folder.mkdir(exist_ok=True)
        text = yaml.safe_dump(dict(content), sort_keys=False)
        write_atomically(self.folder / HPARAMS, text.encode())


def read_metrics(folder: Path) -> dict[int, dict[str, float]]:
    """{step: {tag: value}} of a csv/ folder's metrics.csv ({} where there is none)."""
    path = folder / METRICS
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {
            int(row.pop("step")): {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(f)
        }
