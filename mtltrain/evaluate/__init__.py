"""Evaluate a trained run and export its model: `mtltrain-eval` and `mtltrain-export` (their
--help says what they read and write), and the same from Python: a run folder rebuilt
(`open_trained`, whose `TrainedRun.evaluate(split)` gives results.json's metrics), its model
exported (`export_run`) and an export read back (`load_exported`).

What is exported here is public; the underscore modules are this package's own. Each name is
imported when first used: the commands check their arguments before they import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtltrain.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from mtltrain.evaluate._cli import export_main, main
    from mtltrain.evaluate._export import export_run, flat_outputs, load_exported
    from mtltrain.evaluate._splits import SPLITS
    from mtltrain.evaluate._trained import TrainedRun, open_trained

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
_HOME = {
    "SPLITS": "._splits",
    "TrainedRun": "._trained",
    "export_main": "._cli",
    "export_run": "._export",
    "flat_outputs": "._export",
    "load_exported": "._export",
    "main": "._cli",
    "open_trained": "._trained",
}

__getattr__ = lazy_exports(__name__, _HOME)
