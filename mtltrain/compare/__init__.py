"""mtltrain-compare: every chosen weighting strategy × seeds and each task trained alone on a
data set (a built-in one or the user's own), within a time budget, resumable; then the table
(Δm% against single-task learning with its interval, the difference from `fixed`/`equal` and
whether it is significant, rank, time per step) and the plots (`mtltrain.compare._cli` says
all of it)."""

from mtltrain.compare._cli import main
from mtltrain.compare._sweeps import command_line, machine
from mtltrain.compare._table import Comparison, duration, fmt, pictures

__all__ = ["Comparison", "command_line", "duration", "fmt", "machine", "main", "pictures"]
