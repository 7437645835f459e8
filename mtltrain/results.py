"""What a run leaves behind: `results.json` and the summary printed at its end."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from mtltrain.atomic import write_atomically

RESULTS_FILE = "results.json"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RESULTS_FILE).read_text())


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
