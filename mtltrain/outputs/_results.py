"""What a run leaves behind: `results.json` and the summary printed at its end."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtltrain.atomic import write_atomically

RESULTS_FILE = "results.json"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one.
    Numbers that are not finite (a σ that overflowed) are written as null, so the file is
    always valid JSON."""
    text = json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"
    write_atomically(path, text.encode())


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RESULTS_FILE).read_text())


@dataclass(frozen=True)
class Results:
    """A run's `results.json` (docs/run-folder.md): its `status` (completed, interrupted or
    failed), `metrics` ({"<split>/<task>/<metric>": value}), `weighting` ({quantity: {term:
    value}}: weight, sigma, ...), `objective` (the value of the metric the config's
    `objective` names, which sweepers get) and `data`, the whole file. Numbers that were not
    finite are None."""

    run_dir: Path
    status: str
    metrics: dict[str, float | None]
    weighting: dict[str, dict[str, float | None]]
    objective: float | None
    data: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> Results:
        """The results of the run in `run_dir`."""
        data = read_results(run_dir)
        return cls(
            run_dir=run_dir,
            status=data["status"],
            metrics=data.get("metrics", {}),
            weighting=data.get("weighting", {}),
            objective=(data.get("objective") or {}).get("value"),
            data=data,
        )


def task_means(
    metrics: Mapping[str, float | None], tasks: Collection[str]
) -> dict[str, float | None]:
    """{"<split>/<metric>": the unweighted mean over `tasks` of "<split>/<task>/<metric>"} for
    each split and metric that every task reports (CelebA: the mean accuracy over its
    attributes); None where a task's value is None."""
    found: dict[str, dict[str, float | None]] = {}
    for key, value in metrics.items():
        split, _, rest = key.partition("/")
        task, _, metric = rest.rpartition("/")
        if task in tasks:
            found.setdefault(f"{split}/{metric}", {})[task] = value
    means: dict[str, float | None] = {}
    for name, values in found.items():
        numbers = [v for v in values.values() if v is not None]
        if len(values) == len(tasks):
            means[name] = sum(numbers) / len(numbers) if len(numbers) == len(values) else None
    return means


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def summary_table(
    results: Mapping[str, Any], main_metrics: Mapping[str, str], learned: Collection[str]
) -> str:
    """Per loss term: learned σ, true noise σ, and its task's main metric on train and test.

    `main_metrics` maps each term to "<task>/<metric>"; `learned` names the terms whose σ the
    strategy learns (others show "-").
    """
    sigma = {k: v for k, v in results["weighting"].get("sigma", {}).items() if k in learned}
    metrics = results["metrics"]
    header = ("term", "learned σ", "true σ", "metric", "train", "test")
    body = [
        (
            term,
            _fmt(sigma.get(term)),
            _fmt(results["true_sigma"].get(term)),
            metric,
            _fmt(metrics.get(f"train/{metric}")),
            _fmt(metrics.get(f"test/{metric}")),
        )
        for term, metric in main_metrics.items()
    ]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *body)
    )
