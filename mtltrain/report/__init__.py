"""mtltrain-report: compare the runs under a run or multirun folder (`mtltrain.report.cli` says
what it writes). What scripts may use: read a folder (`read_sweep`), write its report
(`write_report`), and the pieces a report is made of."""

from mtltrain.report.cli import main, report, write_report
from mtltrain.report.runs import ReportError, Run
from mtltrain.report.statistics import SINGLE_TASK, Setting, Stat
from mtltrain.report.sweep import Sweep, read_sweep
from mtltrain.report.tables import markdown_table

__all__ = [
    "SINGLE_TASK",
    "ReportError",
    "Run",
    "Setting",
    "Stat",
    "Sweep",
    "main",
    "markdown_table",
    "read_sweep",
    "report",
    "write_report",
]
