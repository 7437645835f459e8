"""Finding and reading runs: the run folders under a folder, their results.json (checked),
and the learned quantities in their TensorBoard event files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.errors import MtlError
from mtltrain.outputs._results import RESULTS_FILE
from mtltrain.outputs._run_folder import natural_key

COMPLETED = "completed"


PLOTTED = ("sigma", "c", "weight", "kpi")  # learned quantities with a plot, in this order


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

    def directions(self) -> dict[str, int]:
        """{"<task>/<metric>": +1 or −1} as results.json records them (none in older runs)."""
        return dict(self.results.get("directions", {}))

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
    directions = results.get("directions", {})
    if not isinstance(directions, dict) or any(d not in (1, -1) for d in directions.values()):
        raise ReportError(f'{file}: "directions" is {directions!r}: it must be {{name: 1 or -1}}')
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


def parse_override(text: str) -> tuple[str, str | None]:
    """`key=value` → (key, value), without Hydra's + / ++ prefix; `~key` → ("~key", None)."""
    key, sep, value = text.partition("=")
    return key.strip().lstrip("+"), value if sep else None
