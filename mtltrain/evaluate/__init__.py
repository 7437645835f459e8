"""Evaluate a trained run and export its model: `mtltrain-eval` and `mtltrain-export` (their
--help says what they read and write), and the same from Python: a run folder rebuilt
(`open_trained`, whose `TrainedRun.evaluate(split)` gives results.json's metrics), its model
exported (`export_run`) and an export read back (`load_exported`).

What is exported here is public; the underscore modules are this package's own."""

from mtltrain.evaluate._cli import export_main, main
from mtltrain.evaluate._export import export_run, flat_outputs, load_exported
from mtltrain.evaluate._trained import SPLITS, TrainedRun, open_trained

__all__ = [
    "SPLITS",
    "TrainedRun",
    "export_main",
    "export_run",
    "flat_outputs",
    "load_exported",
    "main",
    "open_trained",
]
